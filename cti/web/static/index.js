"use strict";
const $ = (s) => document.querySelector(s);
function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) { const td = document.createElement("td"); td.textContent = c ?? "—"; tr.append(td); }
  return tr;
}
async function refresh() {
  try {
    const [state, health] = await Promise.all([fetch("/api/calls").then(r => r.json()), fetch("/healthz").then(r => r.json())]);
    $("#ami").textContent = health.ami_connected ? "AMI connected" : "AMI down";
    $("#ami").className = "badge " + (health.ami_connected ? "on" : "off");
    const now = Date.now() / 1000;
    $("#queues").replaceChildren(...state.queues.map(q => row([q.name, q.waiting, q.answered, q.abandoned, q.unanswered])));
    $("#calls").replaceChildren(...state.calls.map(c => row([c.caller, c.queue, c.position, c.agent,
      c.arrived_at ? Math.round(now - c.arrived_at) + " s" : null])));
  } catch (e) { $("#ami").textContent = "server unreachable"; $("#ami").className = "badge off"; }
}
async function agents() {
  const list = await fetch("/api/agents").then(r => r.json());
  $("#agents").replaceChildren(...list.map(a => { const x = document.createElement("a"); x.href = "/agents/" + encodeURIComponent(a.id); x.textContent = a.name + " "; return x; }));
}
agents(); refresh(); setInterval(refresh, 1000);
