// Agent console: a state bar, the screen pop of the ringing or current call, call control and today's
// calls, over one CtiClient (cti-client.js). Text only goes through textContent, never innerHTML:
// caller names, customer records and CRM links are untrusted.
"use strict";
const agent = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const $ = (sel, root = document) => root.querySelector(sel);
$("#agent").textContent = agent;

const STATE_LABELS = {logged_out: "Logged out", ready: "Ready", not_ready: "Not ready", offered: "Ringing",
  on_call: "On call", wrap_up: "Wrap-up", unavailable: "Unavailable"};
const COMMAND_LABELS = {ready: "Ready", not_ready: "Not ready", login: "Log in", logout: "Log out",
  end_wrap_up: "End wrap-up", extend_wrap_up: "Extend wrap-up", hangup: "Hang up", transfer: "Transfer",
  dial: "Dial", disposition: "Disposition"};
// commands.dispositions' defaults, for a server whose /api/client-config does not list them.
const DEFAULT_DISPOSITIONS = ["resolved", "follow_up", "escalated", "wrong_number", "sales_lead"];
const RESULT_SHOWN_MS = 8000;

let cti = null;
const view = {
  state: null,         // {state, reason, since, wrapUpEndsAt, mode, detail, legacy}
  offers: new Map(),   // linkedid -> call.offered payload, ringing this agent
  calls: new Map(),    // linkedid -> {type, payload}, calls the agent is on
  last: null,          // {type, payload}: the call that just ended, shown dimmed until the next offer
  dispositionFor: null,  // {linkedid, caller}: the call a disposition is saved for
};

function setText(root, sel, value) { $(sel, root).textContent = value ?? "—"; }
const label = (state) => STATE_LABELS[state] || String(state).replace(/_/g, " ");

function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, ss = String(s % 60).padStart(2, "0");
  return h ? h + ":" + String(m).padStart(2, "0") + ":" + ss : m + ":" + ss;
}

// ---- the agent's state ------------------------------------------------------------------------

// An agent.state payload as the state bar shows it. Servers that send `state` (both routing modes)
// say everything; older observe-mode servers send app_queue's device `status` and `paused`, from which
// the nearest state is derived, timed from when this page first saw it.
function normState(p, previous) {
  if (!p) return previous;
  if (typeof p.state === "string") {
    return {state: p.state, reason: p.reason ?? null, since: typeof p.since === "number" ? p.since : null,
      wrapUpEndsAt: typeof p.wrap_up_ends_at === "number" ? p.wrap_up_ends_at : null,
      mode: p.mode ?? null, detail: "", legacy: false};
  }
  const status = p.status || "unknown";
  let state = {not_in_use: "ready", in_use: "on_call", busy: "on_call", onhold: "on_call", ringinuse: "on_call",
    ringing: "offered", unavailable: "unavailable", invalid: "unavailable"}[status] || status;
  const detail = [];
  if (p.paused && state !== "on_call" && state !== "offered") state = "not_ready";
  else if (p.paused) detail.push("paused");
  else if (p.paused_in && p.paused_in.length) detail.push("paused in " + p.paused_in.join(", "));
  const since = previous && previous.legacy && previous.state === state ? previous.since : cti.serverNow();
  return {state, reason: state === "not_ready" ? (p.paused_reason || null) : null, since, wrapUpEndsAt: null,
    mode: null, detail: detail.join(" · "), legacy: true};
}

function renderState() {
  const s = view.state;
  const badge = $("#state");
  badge.textContent = s ? label(s.state) : "—";
  badge.dataset.state = s ? s.state : "unknown";
  $("#state-reason").textContent = s ? [s.reason, s.detail].filter(Boolean).join(" · ") : "";
  $("#state-timer").title = s && s.legacy ? "time since this page saw the change" : "time in this state";
  $("#mode").textContent = s && s.mode ? s.mode + " mode" : "";
  $("#wrapup").hidden = !(s && s.state === "wrap_up");
  // Logging in and out are the router's (CTI mode); in observe mode app_queue's members are always in.
  const cti_mode = !!(s && s.mode === "cti");
  $("#login").hidden = $("#logout").hidden = !cti_mode;
  $("#login").disabled = !(s && s.state === "logged_out");
  $("#logout").disabled = !!(s && s.state === "logged_out");
  $("#ready").disabled = !!(s && s.state === "ready");
  tick();
}

// ---- the screen pop ---------------------------------------------------------------------------

// The call the card shows: the one the agent is on, else the newest ringing offer, else the call
// that just ended. Offers whose expires_at has passed are taken down first.
function shown() {
  const calls = [...view.calls.values()], offers = [...view.offers.values()];
  const others = calls.length + offers.length - 1;
  if (calls.length) return {type: calls[calls.length - 1].type, payload: calls[calls.length - 1].payload, others};
  if (offers.length) return {type: "call.offered", payload: offers[offers.length - 1], others};
  return view.last ? {...view.last, others: 0} : null;
}

function crmLinks(list, links) {
  list.replaceChildren();
  for (const link of Array.isArray(links) ? links : []) {
    let url;
    try { url = new URL(String(link && link.url), location.href); } catch (e) { continue; }
    if (url.protocol !== "https:" && url.protocol !== "http:") continue;  // never javascript: or data:
    const a = document.createElement("a");
    a.href = url.href; a.target = "_blank"; a.rel = "noopener";
    a.textContent = (link.name ? String(link.name) : url.hostname);
    const li = document.createElement("li");
    li.append(a);
    list.append(li);
  }
  list.hidden = !list.children.length;
}

function renderPop() {
  const card = $("#current");
  const what = shown();
  if (!what) {
    card.className = "card empty";
    delete card.dataset.linkedid;
    const h = document.createElement("h2"), p = document.createElement("p");
    h.textContent = "No call offered";
    p.className = "muted"; p.textContent = "Screen pops appear here the moment a call rings your phone.";
    card.replaceChildren(h, p);
    renderDisposition();
    return;
  }
  const {type, payload: p, others} = what, c = p.customer || {};
  card.replaceChildren($("#pop").content.cloneNode(true));
  card.className = "card " + type.replace(".", "-");
  card.dataset.linkedid = p.linkedid;
  setText(card, ".type", {"call.offered": "Ringing", "call.answered": "On call", "call.updated": "On call",
    "call.ended": "Ended"}[type] || type);
  $(".vip", card).textContent = c.vip_tier > 0 ? "VIP " + c.vip_tier : "";
  setText(card, ".who", c.name || p.caller_name || p.caller || "Unknown caller");
  setText(card, ".number", p.caller);
  setText(card, ".caller-name", p.caller_name && p.caller_name !== "<unknown>" ? p.caller_name : null);
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
  const keys = ivr && Array.isArray(ivr.inputs) ? ivr.inputs.map(i => i.node + ": " + i.value).join(", ") : "";
  setText(card, ".keys", keys || null);
  const wait = p.wait_so_far_s ?? p.wait_s;
  setText(card, ".wait", wait == null ? null : Math.round(wait) + " s");
  setText(card, ".notes", c.notes);
  crmLinks($(".crm-links", card), p.crm_links);
  $(".more", card).textContent = others > 0 ? "+" + others + " more call" + (others > 1 ? "s" : "") : "";
  renderDisposition();
  tick();
}

// ---- events -----------------------------------------------------------------------------------

function logLine(env, note) {
  const li = document.createElement("li");
  const p = env.payload || {};
  const what = env.type === "command.result" ? (p.command ?? "") + " " + (p.ok ? "ok" : p.error_id ?? "failed")
    : (p.caller ?? "") + " " + (p.reason ?? p.state ?? p.status ?? "");
  li.textContent = `#${env.seq} ${(env.ts || "").slice(11, 19)} ${env.type} ${what}` + (note ? " (" + note + ")" : "");
  $("#log").prepend(li);
  while ($("#log").children.length > 50) $("#log").lastChild.remove();
}

function onEvent(env) {
  const p = env.payload || {};
  let note = "";
  switch (env.type) {
    case "command.result":
      if (!shownResults.has(p.id)) { shownResults.add(p.id); showResult(describe(p), p.ok ? "ok" : "error"); }
      if (p.ok && p.command === "disposition") refreshToday();
      wrapUpMoved(p);
      break;
    case "agent.state":
      view.state = normState(p, view.state);
      renderState();
      if (p.resync) loadSnapshot();  // the server could not see Asterisk for a while
      break;
    case "call.offered":
      if (cti.offerExpired(p)) { view.offers.delete(p.linkedid); note = "expired, not shown"; break; }
      view.offers.set(p.linkedid, p);
      view.last = null;
      renderPop();
      break;
    case "call.offer_withdrawn":
      view.offers.delete(p.linkedid);
      renderPop();
      break;
    case "call.answered":
      view.offers.delete(p.linkedid);
      view.calls.delete(p.linkedid);  // to the end: the newest call is the one shown
      view.calls.set(p.linkedid, {type: env.type, payload: p});
      view.last = null;
      view.dispositionFor = {linkedid: p.linkedid, caller: p.caller};
      renderPop();
      break;
    case "call.updated": {  // the customer record came late: keep the event's own fields, take the rest
      if (view.offers.has(p.linkedid)) view.offers.set(p.linkedid, {...view.offers.get(p.linkedid), ...p});
      const up = view.calls.get(p.linkedid);
      if (up) up.payload = {...up.payload, ...p};
      renderPop();
      break;
    }
    case "call.ended":
      view.offers.delete(p.linkedid);
      view.calls.delete(p.linkedid);
      view.last = {type: env.type, payload: p};
      view.dispositionFor = {linkedid: p.linkedid, caller: p.caller};
      renderPop();
      refreshToday();
      break;
    default:
      break;  // a type this page does not know
  }
  logLine(env, note);
}

// Every second: the time in state, the wrap-up countdown, and offers that expired on the client
// (their expires_at passed with no call.offer_withdrawn, e.g. a server that went away).
function tick() {
  if (!cti) return;
  const now = cti.serverNow(), s = view.state;
  $("#state-timer").textContent = s && s.since != null ? duration(now - s.since) : "";
  if (s && s.state === "wrap_up") {
    $("#wrapup-left").textContent = s.wrapUpEndsAt != null ? duration(s.wrapUpEndsAt - now) : "when you end it";
  }
  let expired = false;
  for (const [linkedid, p] of view.offers) {
    if (cti.offerExpired(p, now)) { view.offers.delete(linkedid); expired = true; }
  }
  if (expired) { renderPop(); return; }
  const card = $("#current"), expires = $(".expires", card);
  if (expires) {
    const offer = view.offers.get(card.dataset.linkedid);
    expires.textContent = card.classList.contains("call-offered") && offer && typeof offer.expires_at === "number"
      ? "rings for " + Math.max(0, Math.ceil(offer.expires_at - now)) + " s" : "";
  }
}

// ---- the snapshot: what the screen shows on opening, and again after a gap ---------------------

function applySnapshot(snap) {
  view.offers.clear(); view.calls.clear();
  for (const o of snap.offers || []) {
    if (o.payload && !cti.offerExpired(o.payload)) view.offers.set(o.payload.linkedid, o.payload);
  }
  for (const c of snap.calls || []) {
    if (c.payload) view.calls.set(c.payload.linkedid, {type: "call.answered", payload: c.payload});
  }
  if (snap.state) view.state = normState(snap.state, view.state);
  renderState();
  renderPop();
}

let snapshotting = null;
function loadSnapshot() {
  snapshotting = snapshotting || (async () => {
    try {
      applySnapshot(await cti.snapshot());
    } catch (e) {
      // No snapshot (an older server, or Redis away): at least the call this agent is on, from the live model.
      try {
        const state = await cti.api("/api/calls");
        const call = state.calls.find(c => c.current_agent_id === agent);
        if (call && !view.calls.size) { view.calls.set(call.linkedid, {type: "call.answered", payload: call}); renderPop(); }
      } catch (e2) { /* the WebSocket brings the next event anyway */ }
    } finally { snapshotting = null; }
  })();
  return snapshotting;
}

// ---- commands ---------------------------------------------------------------------------------

// Each command carries an id; its answer is shown once, from whichever comes first of the HTTP reply
// and the command.result envelope. Results of commands sent from the agent's other screens show too.
const shownResults = new Set();
let commandCount = 0, resultTimer = null;

function describe(r) {
  const what = COMMAND_LABELS[r.command] || r.command || "command";
  if (!r.ok) return what + ": " + (r.message || r.error_id || "failed");
  const state = r.state ? label(r.state) : null;
  const extra = [state !== what ? state : null, r.reason, r.number, r.code].filter(Boolean);
  return what + ": done" + (extra.length ? " (" + extra.join(", ") + ")" : "");
}

function showResult(text, kind) {
  const el = $("#result");
  el.textContent = text;
  el.className = "result " + (kind || "");
  clearTimeout(resultTimer);
  if (kind !== "pending") resultTimer = setTimeout(() => { el.textContent = ""; el.className = "result"; }, RESULT_SHOWN_MS);
}

// An extended wrap-up's new end, from the answer (the agent.state that follows says it too).
function wrapUpMoved(r) {
  if (r && r.ok && typeof r.wrap_up_ends_at === "number" && view.state && view.state.state === "wrap_up") {
    view.state.wrapUpEndsAt = r.wrap_up_ends_at;
    tick();
  }
}

async function send(body) {
  const id = "ui-" + Date.now().toString(36) + "-" + (++commandCount);
  showResult((COMMAND_LABELS[body.command] || body.command) + "…", "pending");
  try {
    const reply = await cti.command({...body, id});
    if (!shownResults.has(id)) { shownResults.add(id); showResult(describe(reply), "ok"); }
    wrapUpMoved(reply);
    return reply;
  } catch (e) {
    if (!shownResults.has(id)) {
      shownResults.add(id);
      showResult(describe({ok: false, command: body.command, message: e.message}), "error");
    }
    return null;
  }
}

function reasonControl(reasons) {
  const box = $("#reason-box");
  let control;
  if (reasons && reasons.length) {
    control = document.createElement("select");
    for (const r of reasons) {
      const o = document.createElement("option");
      o.value = typeof r === "string" ? r : (r.id ?? r.code ?? r.name);
      o.textContent = typeof r === "string" ? r.replace(/_/g, " ") : (r.label ?? r.name ?? o.value);
      control.append(o);
    }
  } else {  // the server names no reasons: type one (the suggestions are common ones)
    control = document.createElement("input");
    control.type = "text"; control.size = 12; control.value = "break";
    control.setAttribute("list", "reason-suggestions");
    control.pattern = "[A-Za-z0-9_.\\-]{1,64}";
  }
  control.id = "reason";
  control.setAttribute("aria-label", "not ready reason");
  box.replaceChildren(control);
}

function dispositionOptions(codes) {
  const sel = $("#disposition");
  sel.replaceChildren(...codes.map(code => {
    const o = document.createElement("option");
    o.value = code; o.textContent = code.replace(/_/g, " ");
    return o;
  }));
}

// The disposition is saved for the call on screen, else the one that ended last, else one picked
// from today's calls.
function renderDisposition() {
  const what = shown(), target = what && what.type !== "call.offered" ? what.payload : null;
  if (target) view.dispositionFor = {linkedid: target.linkedid, caller: target.caller};
  const d = view.dispositionFor;
  $("#set-disposition").disabled = !d;
  $("#disposition-for").textContent = d ? "for the call from " + (d.caller || d.linkedid) : "";
}

function listOf(cfg, key) {
  const found = cfg && (cfg[key] ?? (cfg.commands && cfg.commands[key]) ?? (cfg.routing && cfg.routing[key]));
  return Array.isArray(found) && found.length ? found : null;
}

async function loadConfig() {
  let cfg = null;
  try { cfg = await cti.clientConfig(); } catch (e) { /* the fallbacks below */ }
  reasonControl(listOf(cfg, "not_ready_reasons"));
  dispositionOptions((listOf(cfg, "dispositions") || DEFAULT_DISPOSITIONS).map(String));
}

async function loadAgents() {  // colleagues to transfer to: typed in the number box by id
  try {
    const list = await cti.api("/api/agents");
    const dl = document.createElement("datalist");
    dl.id = "transfer-targets";
    for (const a of list) {
      if (a.id === agent) continue;
      const o = document.createElement("option");
      o.value = a.id; o.textContent = a.name;
      dl.append(o);
    }
    $("#controls").append(dl);
    $("#number").setAttribute("list", "transfer-targets");
  } catch (e) { /* numbers only */ }
}

function controls() {
  $("#statebar").hidden = $("#controls").hidden = $("#today").hidden = false;
  reasonControl(null);
  dispositionOptions(DEFAULT_DISPOSITIONS);
  $("#ready").onclick = () => send({command: "ready"});
  $("#not-ready").onclick = () => {
    const reason = $("#reason").value.trim();
    if (!reason) { showResult("Not ready: choose a reason", "error"); $("#reason").focus(); return; }
    send({command: "not_ready", reason});
  };
  $("#login").onclick = () => send({command: "login"});
  $("#logout").onclick = () => send({command: "logout"});
  $("#end-wrap-up").onclick = () => send({command: "end_wrap_up"});
  $("#extend-wrap-up").onclick = () => send({command: "extend_wrap_up", seconds: 30});
  const onScreen = () => { const w = shown(); return w && w.type !== "call.ended" ? w.payload.linkedid : undefined; };
  $("#hangup").onclick = () => send({command: "hangup", linkedid: onScreen()});
  $("#dial").onclick = () => send({command: "dial", number: $("#number").value.trim()});
  $("#transfer").onclick = () => {
    const to = $("#number").value.trim();
    send(/^\+?[0-9*#]+$/.test(to) ? {command: "transfer", to_number: to, linkedid: onScreen()}
      : {command: "transfer", to_agent: to, linkedid: onScreen()});
  };
  $("#set-disposition").onclick = async () => {
    const d = view.dispositionFor;
    if (!d) return;
    const reply = await send({command: "disposition", linkedid: d.linkedid, code: $("#disposition").value});
    if (reply) refreshToday();
  };
}

// ---- today's calls ----------------------------------------------------------------------------

let todayTimer = null;
function refreshToday() {  // several triggers at once (call.ended, then its disposition) make one request
  clearTimeout(todayTimer);
  todayTimer = setTimeout(loadToday, 300);
}

function cell(text) { const td = document.createElement("td"); td.textContent = text ?? "—"; return td; }

function clock(epoch) {
  return typeof epoch === "number" ? new Date(epoch * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"}) : null;
}

async function loadToday() {
  let answer;
  try {
    answer = await cti.callsToday();
  } catch (e) {
    $("#today-status").textContent = e.status === 404 ? "history unavailable" : "could not load today's calls: " + e.message;
    $("#today-calls").replaceChildren();
    return;
  }
  const calls = Array.isArray(answer && answer.calls) ? answer.calls : [];
  $("#today-day").textContent = answer && answer.day ? answer.day : "";
  $("#today-status").textContent = calls.length ? calls.length + " call" + (calls.length > 1 ? "s" : "") : "No calls yet today.";
  $("#today-calls").replaceChildren(...calls.map(c => {
    const tr = document.createElement("tr");
    const who = c.caller_name && c.caller_name !== "<unknown>" ? c.caller_name + " (" + (c.caller ?? "?") + ")" : c.caller;
    tr.append(cell(clock(c.answered_at ?? c.ended_at)), cell(who), cell(c.customer_name), cell(c.queue),
      cell(typeof c.talk_s === "number" ? duration(c.talk_s) : null), cell(c.outcome));
    const td = cell(c.disposition ? String(c.disposition).replace(/_/g, " ") + " " : "");
    if (c.linkedid) {
      const b = document.createElement("button");
      b.type = "button"; b.className = "small";
      b.textContent = c.disposition ? "Change" : "Set";
      b.setAttribute("aria-label", "disposition for the call from " + (c.caller ?? c.linkedid));
      b.onclick = () => {
        view.dispositionFor = {linkedid: c.linkedid, caller: c.caller};
        $("#set-disposition").disabled = false;
        $("#disposition-for").textContent = "for the call from " + (c.caller || c.linkedid);
        $("#disposition").focus();
      };
      td.append(b);
    }
    tr.append(td);
    return tr;
  }));
}

// ---- signing in -------------------------------------------------------------------------------

// Signed in with a token: the agent's own, or a supervisor's (who may open any agent's console).
async function start(token) {
  if (cti) cti.close();
  cti = new CtiClient({token, agent, onEvent,
    onStatus: (s) => {
      $("#conn").textContent = s.live ? (s.error || "live") : "reconnecting…";
      $("#conn").className = "badge " + (s.live && !s.error ? "on" : "off");
    },
    onGap: (from, to) => { console.warn("missed events", from, "to", to); loadSnapshot(); }});
  try {
    const me = await cti.api("/api/me");
    if (me.role === "agent" && me.subject !== agent) throw new Error("this token is " + me.subject + "'s, not " + agent + "'s");
    $("#who").textContent = "signed in as " + me.subject + (me.role === "agent" ? "" : " (" + me.role + ")");
  } catch (e) {
    CtiClient.forgetToken();
    cti = null;
    signIn(e.status === 401 ? "That token was not accepted." : e.message);
    return;
  }
  $("#signin").hidden = true;
  controls();
  loadConfig();
  loadAgents();
  await loadSnapshot();
  cti.connect();
  loadToday();
  if (!ticking) ticking = setInterval(tick, 1000);
}
let ticking = null;

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
