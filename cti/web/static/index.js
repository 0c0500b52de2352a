"use strict";
const $ = (s) => document.querySelector(s);
function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) { const td = document.createElement("td"); td.textContent = c ?? "—"; tr.append(td); }
  return tr;
}
// The overview shows every call: it needs a supervisor's (or admin's) token, from #token=... or typed in.
const cti = new CtiClient({token: CtiClient.tokenFromPage()});
async function refresh() {
  if (!cti.token) { $("#ami").textContent = "sign in to see calls"; return; }
  try {
    const [state, health, people] = await Promise.all([cti.api("/api/calls"), fetch("/healthz").then(r => r.json()),
      cti.api("/api/agents/states")]);
    $("#ami").textContent = health.ami_connected ? "AMI connected" : "AMI down";
    $("#ami").className = "badge " + (health.ami_connected ? "on" : "off");
    const now = Date.now() / 1000;
    // Every agent's state as their own screen shows it (the same envelopes, folded by the server).
    $("#agent-states").replaceChildren(...people.agents.map(a => {
      const s = a.state || {};
      const since = typeof s.since === "number" ? Math.max(0, Math.round(now - s.since)) + " s" : null;
      return row([a.name, (s.state || s.status || "unknown").replace("_", " "), s.reason, since, a.ringing, a.on_calls]);
    }));
    $("#queues").replaceChildren(...state.queues.map(q => row([q.name, q.waiting, q.answered, q.abandoned, q.unanswered])));
    $("#calls").replaceChildren(...state.calls.map(c => row([c.caller, c.queue, c.position, c.agent,
      c.arrived_at ? Math.round(now - c.arrived_at) + " s" : null])));
  } catch (e) {
    $("#ami").textContent = e.status === 401 ? "token not accepted" : "server unreachable";
    $("#ami").className = "badge off";
    if (e.status === 401) { CtiClient.forgetToken(); cti.token = null; showSignIn(); }
  }
}
function showSignIn() { CtiClient.showSignIn(cti, () => { agents(); refresh(); }); }
async function agents() {
  if (!cti.token) { showSignIn(); return; }
  const list = await cti.api("/api/agents").catch(() => []);
  $("#agents").replaceChildren(...list.map(a => { const x = document.createElement("a"); x.href = "/agents/" + encodeURIComponent(a.id); x.textContent = a.name + " "; return x; }));
}
agents(); refresh(); setInterval(refresh, 1000);
