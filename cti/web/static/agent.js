// Agent console: one WebSocket, one envelope per event. Text only goes through
// textContent, never innerHTML: caller names and CRM notes are untrusted.
"use strict";
const agent = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const $ = (sel, root = document) => root.querySelector(sel);
$("#agent").textContent = agent;

function setText(root, sel, value) { $(sel, root).textContent = value ?? "—"; }

function showPop(env) {
  const p = env.payload, c = p.customer || {};
  const card = $("#current");
  card.replaceChildren($("#pop").content.cloneNode(true));
  card.className = "card " + env.type.replace(".", "-");
  setText(card, ".type", {"call.offered": "Ringing", "call.answered": "On call",
    "call.ended": "Ended", "call.offer_withdrawn": "Missed"}[env.type] || env.type);
  setText(card, ".vip", c.vip_tier ? "VIP " + c.vip_tier : "");
  setText(card, ".who", c.name || p.caller_name || p.caller || "Unknown caller");
  setText(card, ".number", p.caller);
  setText(card, ".company", c.company ? c.company + (c.company_tier ? " (" + c.company_tier + ")" : "") : null);
  setText(card, ".role", c.role);
  setText(card, ".manager", c.account_manager);
  // The queue this agent was offered the call from (a second queue after a timeout, or none for a
  // transfer straight to them), not the first queue the call ever joined.
  const queue = p.offered_queue ?? p.answered_queue ?? p.current_queue ?? (p.transferred_from ? null : p.queue);
  setText(card, ".queue", queue ? queue + (p.position ? " · position " + p.position : "") : null);
  setText(card, ".from", p.transferred_from ? "transferred by " + p.transferred_from : null);
  // What the caller chose in the IVR: language, entry point, the nodes they went through, the keys pressed.
  const ivr = p.ivr;
  const route = ivr ? (ivr.truncated ? "… › " : "") + (ivr.path || []).join(" › ") : "";
  setText(card, ".ivr", ivr ? [ivr.language, ivr.entry_point, route].filter(Boolean).join(" · ") : null);
  const keys = ivr && ivr.inputs ? ivr.inputs.map(i => i.node + ": " + i.value).join(", ") : "";
  setText(card, ".keys", keys || null);
  const wait = p.wait_so_far_s ?? p.wait_s;
  setText(card, ".wait", wait == null ? null : Math.round(wait) + " s");
  setText(card, ".notes", c.notes);
}

function logLine(env) {
  const li = document.createElement("li");
  const p = env.payload;
  li.textContent = `#${env.seq} ${env.ts.slice(11, 19)} ${env.type} ${p.caller ?? ""} ${p.reason ?? ""}`;
  $("#log").prepend(li);
  while ($("#log").children.length > 50) $("#log").lastChild.remove();
}

// Opened mid-call (a reload, a second screen): show the call this agent is on from the live model.
async function currentCall(cti) {
  try {
    const state = await cti.api("/api/calls");
    const call = state.calls.find(c => c.current_agent_id === agent);
    if (call && cti.lastSeq === 0) showPop({type: "call.answered", payload: call});
  } catch (e) { /* the WebSocket brings the next event anyway */ }
}

function onEvent(env) {
  logLine(env);
  if (env.type === "command.result") {
    const r = env.payload;
    $("#result").textContent = r.ok ? (r.command + ": done") : (r.command || "command") + ": " + r.message;
    return;
  }
  if (env.type === "agent.state") {
    const st = env.payload;
    $("#state").textContent = st.paused ? "paused" + (st.paused_reason ? " (" + st.paused_reason + ")" : "")
      : st.status.replace(/_/g, " ") + (st.paused_in && st.paused_in.length ? " · paused in " + st.paused_in.join(", ") : "");
    return;
  }
  showPop(env);
}

// Signed in with a token: the agent's own, or a supervisor's (who may open any agent's console).
async function start(token) {
  const cti = new CtiClient({token, agent, onEvent,
    onStatus: (s) => {
      $("#conn").textContent = s.live ? (s.error || "live") : "reconnecting…";
      $("#conn").className = "badge " + (s.live && !s.error ? "on" : "off");
    },
    onGap: (from, to) => { console.warn("missed events", from, "to", to); currentCall(cti); }});
  try {
    const me = await cti.api("/api/me");
    if (me.role === "agent" && me.subject !== agent) throw new Error("this token is " + me.subject + "'s, not " + agent + "'s");
    $("#who").textContent = "signed in as " + me.subject + (me.role === "agent" ? "" : " (" + me.role + ")");
  } catch (e) {
    CtiClient.forgetToken();
    signIn(e.status === 401 ? "That token was not accepted." : e.message);
    return;
  }
  $("#signin").hidden = true;
  controls(cti);
  cti.connect();
  currentCall(cti);
}

// Call control: each button is one command; its answer (or error) shows beside the buttons, and
// every other screen of the agent learns it from the command.result envelope.
function controls(cti) {
  $("#controls").hidden = false;
  const send = async (body) => {
    $("#result").textContent = body.command + "…";
    try { await cti.command(body); } catch (e) { $("#result").textContent = body.command + ": " + e.message; }
  };
  $("#ready").onclick = () => send({command: "ready"});
  $("#not-ready").onclick = () => send({command: "not_ready", reason: $("#reason").value});
  $("#hangup").onclick = () => send({command: "hangup"});
  $("#dial").onclick = () => send({command: "dial", number: $("#number").value.trim()});
  $("#transfer").onclick = () => send({command: "transfer", to_number: $("#number").value.trim()});
}

function signIn(problem) {
  $("#signin").hidden = false;
  $("#signin-error").textContent = problem || "";
  $("#signin").onsubmit = (ev) => {
    ev.preventDefault();
    const token = $("#token").value.trim();
    if (!token) return;
    CtiClient.rememberToken(token);
    start(token);
  };
}

const token = CtiClient.tokenFromPage();
if (token) start(token); else signIn();
