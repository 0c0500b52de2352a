"use strict";
// The wallboard: one WebSocket (/ws/wallboard) pushes the whole board after every change; nothing is
// polled. Timers (longest wait, time in state) tick here between boards. Server data is only ever
// written as text.
const $ = (s) => document.querySelector(s);
const cti = new CtiClient({token: CtiClient.tokenFromPage()});
let board = null, skew = 0, delay = 500;

const pct = (x) => x == null ? "—" : Math.round(100 * x) + "%";
const secs = (x) => x == null ? "—" : (x < 100 ? x.toFixed(1) : Math.round(x)) + " s";
const clock = (s) => s == null ? "—" : (s >= 3600 ? Math.floor(s / 3600) + ":" : "") +
  String(Math.floor(s / 60) % 60).padStart(2, "0") + ":" + String(Math.floor(s % 60)).padStart(2, "0");
const now = () => Date.now() / 1000 + skew;

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) { const td = document.createElement("td"); td.textContent = c ?? "—"; tr.append(td); }
  return tr;
}
function tile(id, text, sub, cls) {
  $(id).textContent = text;
  if (sub !== undefined) $(id + "-today").textContent = sub;
  if (cls !== undefined) $(id).parentElement.className = "tile " + cls;
}
function left(u) {
  const parts = Object.entries(u || {}).map(([k, n]) => k + " " + n);
  return parts.length ? parts.join(", ") : "0";
}

function render() {
  if (!board) return;
  const t = now();
  const roll = board.rolling.all[""], today = board.today.all[""];
  const target = board.target_service_level;
  // waiting: app_queue's queues and, in CTI routing mode, the router's holds by entry point
  const queues = [...Object.entries(board.queues), ...Object.entries(board.entry_points || {})];
  const oldest = queues.map(([, q]) => q.oldest_joined_at).filter((x) => x != null);
  tile("#t-waiting", String(queues.reduce((n, [, q]) => n + q.waiting, 0)));
  tile("#t-longest", oldest.length ? clock(t - Math.min(...oldest)) : "—");
  tile("#t-sl", pct(roll.service_level), "today " + pct(today.service_level),
       roll.service_level == null ? "" : roll.service_level >= target ? "good" : "bad");
  tile("#t-answer", pct(roll.answer_rate), "today " + pct(today.answer_rate) + " of " + today.offered);
  tile("#t-abandon", pct(roll.abandon_rate), "today " + today.abandoned + " (+" + today.short_abandons + " short)");
  tile("#t-asa", secs(roll.asa_s), "today " + secs(today.asa_s));
  tile("#t-aht", secs(roll.aht_s), "today " + secs(today.aht_s) +
       (today.wrap_ups ? " · wrap-up " + secs(today.acw_s) : ""));
  tile("#t-repeat", pct(today.repeat_rate));
  $("#basis").textContent = "service level over " + board.basis + " calls · threshold " + board.thresholds.default_s + " s";
  places("#queues", "queue", board.queues, (n) => board.staffing[n], t);
  places("#entry-points", "entry", board.entry_points || {}, (n) => (board.entry_points[n] || {}).staffing, t);
  $("#entry-section").hidden = !$("#entry-points").children.length;
  for (const kind of ["tier", "skill"]) {
    const rows = Object.entries(board.today[kind] || {}).sort();
    $("#" + kind + "s").replaceChildren(...rows.map(([name, d]) => row([name.replace(/^vip(\d)/, "VIP $1"),
      d.offered, pct(d.service_level), d.answered, d.abandoned, secs(d.asa_s)])));
  }
  $("#skill-section").hidden = !$("#skills").children.length;
  $("#by-state").textContent = Object.entries(board.agents_by_state).filter(([, n]) => n)
    .map(([s, n]) => n + " " + s.replace("_", " ")).join(" · ");
  $("#agents").replaceChildren(...board.agents.map((a) => {
    const tr = row([a.name, a.state.replace("_", " "), a.reason, a.since != null ? clock(t - a.since) : "—"]);
    tr.children[1].dataset.state = a.state;
    return tr;
  }));
  chart(board.chart, target);
}

// One row per queue (or entry point): waiting now, then the 15 minutes' and the day's figures.
function places(body, kind, waiting, staffing, t) {
  const roll = board.rolling[kind] || {}, today = board.today[kind] || {};
  const names = [...new Set([...Object.keys(waiting), ...Object.keys(today)])].sort();
  $(body).replaceChildren(...names.map((n) => {
    const q = waiting[n] || {}, r = roll[n] || {}, d = today[n] || {}, s = staffing(n) || {};
    return row([n, q.waiting ?? 0, q.oldest_joined_at != null ? clock(t - q.oldest_joined_at) : "—",
      pct(r.service_level), pct(d.service_level), d.offered ?? 0, d.answered ?? 0, d.abandoned ?? 0,
      left(d.unanswered), secs(d.asa_s), secs(d.aht_s), s.agents_needed ?? "—"]);
  }));
}

function chart(points, target) {
  const svg = $("#chart"), ns = "http://www.w3.org/2000/svg";
  const W = 960, H = 160, pad = 20, day = 96;  // 96 quarter hours
  const midnight = points.length ? points[0].start - (points[0].start % 86400) : 0;
  const el = (name, attrs, text) => {
    const e = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  };
  const y = (v) => H - pad - v * (H - 2 * pad);
  const parts = [el("line", {x1: pad, x2: W - pad, y1: y(target), y2: y(target), class: "target"}),
    el("text", {x: 2, y: y(target) + 4}, pct(target)), el("text", {x: 2, y: y(1) + 4}, "100%"),
    el("text", {x: 2, y: y(0) + 4}, "0%")];
  const xy = points.filter((p) => p.service_level != null).map((p) => {
    const slot = Math.max(0, Math.min(day - 1, Math.round((p.start - midnight) / 900)));
    return [(pad + 20 + slot * (W - 2 * pad - 20) / day).toFixed(1), y(p.service_level).toFixed(1)];
  });
  if (xy.length) parts.push(el("polyline", {points: xy.map((p) => p.join(",")).join(" ")}));
  for (const [cx, cy] of xy) parts.push(el("circle", {cx, cy, r: 3}));
  svg.replaceChildren(...parts);
}

function connect() {
  // Without a token the server may not need one (auth off); if it does, the socket is refused and
  // the sign-in form shows.
  const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/ws/wallboard"
    + (cti.token ? "?token=" + encodeURIComponent(cti.token) : ""));
  ws.onopen = () => { delay = 500; $("#live").textContent = "live"; $("#live").className = "badge on"; };
  ws.onmessage = (m) => {
    const data = JSON.parse(m.data);
    if (data.type !== "kpi.board") return;
    skew = data.at - Date.now() / 1000;  // the board's "now" is the server's
    board = data;
    render();
  };
  ws.onclose = (ev) => {
    $("#live").textContent = ev.code === 1006 && !board ? "not signed in, or server unreachable" : "reconnecting…";
    $("#live").className = "badge off";
    if (ev.code === 1006 && !board) {
      if (cti.token) CtiClient.forgetToken();
      cti.token = null; showSignIn(); return;
    }
    setTimeout(connect, delay); delay = Math.min(2 * delay, 10000);
  };
}
function showSignIn() { CtiClient.showSignIn(cti, connect); }
connect();
setInterval(render, 1000);
