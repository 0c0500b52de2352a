"use strict";
// The routing admin page: edit tiers in a form or the whole config as YAML; every save is a new
// version the server validates (errors come back with the field path and are shown next to the
// field); a version is dry-run against the calls waiting now, then activated. Text only, never HTML.
const $ = (s) => document.querySelector(s);
const cti = new CtiClient({token: CtiClient.tokenFromPage()});
let current = null, proposed = null;

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.append(c); else td.textContent = c ?? "—";
    tr.append(td);
  }
  return tr;
}
function say(text, kind = "ok") { $("#status").textContent = text; $("#status").className = "result " + kind; }
function when(t) { return new Date(t * 1000).toLocaleString(); }
function button(text, onclick) {
  const b = document.createElement("button"); b.type = "button"; b.textContent = text; b.onclick = onclick; return b;
}
function number(value, path, attrs = {}) {
  const input = document.createElement("input");
  input.type = "number"; input.value = value ?? ""; input.dataset.path = path;
  input.setAttribute("aria-label", path);
  for (const [k, v] of Object.entries(attrs)) input.setAttribute(k, v);
  return input;
}

function showErrors(list, errors) {
  document.querySelectorAll("input.invalid").forEach((i) => i.classList.remove("invalid"));
  $(list).replaceChildren(...errors.map((e) => {
    const li = document.createElement("li");
    li.textContent = (e.path ? e.path + ": " : "") + e.message;
    const input = document.querySelector(`input[data-path="${CSS.escape(e.path)}"]`);
    if (input) input.classList.add("invalid");
    return li;
  }));
}

async function load() {
  if (!cti.token) { showSignIn(); return; }
  try {
    const [me, routing, versions, audit] = await Promise.all([cti.api("/api/me"), cti.api("/api/admin/routing"),
      cti.api("/api/admin/routing/versions"), cti.api("/api/admin/audit?count=50")]);
    current = routing;
    $("#who").textContent = me.subject + " (" + me.role + ")";
    $("#in-force").textContent = "version " + routing.version + " in force";
    $("#tiers").replaceChildren(...Object.entries(routing.config.tiers).map(([name, t]) => row([name,
      number(t.priority, `tiers.${name}.priority`, {step: 1}),
      number(t.service_level.percent, `tiers.${name}.service_level.percent`),
      number(t.service_level.within_s, `tiers.${name}.service_level.within_s`),
      number(t.customer_vip_tier, `tiers.${name}.customer_vip_tier`)])));
    if (!$("#yaml").dataset.edited) $("#yaml").value = routing.yaml;
    $("#versions").replaceChildren(...versions.map((v) => {
      const tr = row([String(v.version), v.author, when(v.at), v.comment, v.parent,
        v.active ? "" : button("Activate", () => activate(v.version))]);
      tr.children[0].append(" ", button("diff", () => diff(v.version)));
      if (v.active) tr.className = "active";
      return tr;
    }));
    $("#audit").replaceChildren(...audit.map((e) => row([when(e.at), e.who + " (" + e.role + ")", e.action,
      Object.entries(e.detail).filter(([, v]) => v !== null && v !== "").map(([k, v]) => k + " " + v).join(", ")])));
  } catch (e) {
    if (e.status === 401) { CtiClient.forgetToken(); cti.token = null; showSignIn(); return; }
    say(e.status === 404 ? "this server is in observe mode: app_queue routes, there is no routing config to edit"
      : e.status === 403 ? "this token may not read the routing config" : "server unreachable", "error");
  }
}

function tiersFromForm() {
  const config = structuredClone(current.config);
  for (const input of document.querySelectorAll("#tiers input")) {
    const parts = input.dataset.path.split(".");
    let obj = config;
    for (const p of parts.slice(0, -1)) obj = obj[p];
    const raw = input.value.trim();
    obj[parts.at(-1)] = raw === "" ? null : Number(raw);
  }
  return config;
}

async function save(body, errorsAt) {
  say("checking…", "pending");
  try {
    const version = await cti.api("/api/admin/routing/versions", {method: "POST", body});
    showErrors(errorsAt, []);
    proposed = version.version;
    $("#proposed").hidden = false; $("#proposed-version").textContent = String(version.version);
    $("#dry-run-table").hidden = true;
    say("saved as version " + version.version + "; not in force until activated");
    await load();
  } catch (e) {
    if (e.status === 422) { showErrors(errorsAt, e.body?.details?.errors || []); say(e.body.message, "error"); }
    else say(e.body?.message || "not saved (" + e.status + ")", "error");
  }
}

async function dryRun() {
  const report = await cti.api(`/api/admin/routing/versions/${proposed}/dry-run`, {method: "POST"});
  $("#dry-run-table").hidden = false;
  const arrow = (a, b) => (a ?? "—") + " → " + (b ?? "—");
  $("#dry-run-rows").replaceChildren(...report.calls.map((c) => row([c.call, c.entry_point, c.tier, c.waited_s + " s",
    arrow(c.before.rank, c.after.rank), arrow(c.before.score, c.after.score),
    c.after.routable ? arrow(c.before.agent_now, c.after.agent_now) : "stranded: " + c.after.why])));
  say(report.waiting + " call(s) waiting; " + report.changed.length + " would change; " + report.stranded.length + " stranded",
    report.stranded.length ? "error" : "ok");
}

async function activate(version) {
  try {
    const r = await cti.api(`/api/admin/routing/versions/${version}/activate`, {method: "POST", body: {}});
    say("version " + r.version + " is in force (was " + r.previous + "); " + r.dry_run.waiting + " waiting call(s) kept their places");
    $("#proposed").hidden = true; $("#yaml").dataset.edited = "";
    await load();
  } catch (e) { say(e.body?.message || "not activated (" + e.status + ")", "error"); }
}

async function diff(version) {
  const v = await cti.api(`/api/admin/routing/versions/${version}`);
  $("#diff").hidden = false;
  $("#diff").textContent = v.diff || "(no changes against version " + v.diff_against + ")";
}

function showSignIn() { CtiClient.showSignIn(cti, load); }
$("#tiers-form").onsubmit = (ev) => {
  ev.preventDefault();
  save({config: tiersFromForm(), comment: $("#tiers-comment").value}, "#tiers-errors");
};
$("#yaml-form").onsubmit = (ev) => { ev.preventDefault(); save({yaml: $("#yaml").value}, "#yaml-errors"); };
$("#yaml").oninput = () => { $("#yaml").dataset.edited = "1"; };
$("#dry-run").onclick = () => dryRun().catch((e) => say(e.body?.message || "dry run failed", "error"));
$("#activate").onclick = () => activate(proposed);
load();
