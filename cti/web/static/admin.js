"use strict";
// The routing admin page: edit tiers in a form or the whole config as YAML, and each IVR flow as YAML;
// every save is a new version the server validates (errors come back with the field path and are shown
// next to the field); a routing version is dry-run against the calls waiting now, then activated; any
// version can be activated again or rolled back. Text only, never HTML.
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

// A version history (routing config or one flow): activate any version not in force, diff against its parent.
function versionRows(versions, activate, diff) {
  return versions.map((v) => {
    const tr = row([String(v.version), v.author, when(v.at), v.comment, v.parent,
      v.active ? "" : button("Activate", () => activate(v.version))]);
    tr.children[0].append(" ", button("diff", () => diff(v.version)));
    if (v.active) tr.className = "active";
    return tr;
  });
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
    $("#versions").replaceChildren(...versionRows(versions, activate, diff));
    $("#audit").replaceChildren(...audit.map((e) => row([when(e.at), e.who + " (" + e.role + ")", e.action,
      Object.entries(e.detail).filter(([, v]) => v !== null && v !== "").map(([k, v]) => k + " " + v).join(", ")])));
    await loadFlows();
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

async function diff(version, base = "/api/admin/routing", at = "#diff") {
  const v = await cti.api(`${base}/versions/${version}`);
  $(at).hidden = false;
  $(at).textContent = v.diff || "(no changes against version " + v.diff_against + ")";
}

async function rollback(path, what) {
  try {
    const r = await cti.api(path, {method: "POST", body: {}});
    say(what + ": version " + r.version + " is back in force (was " + r.previous + ")");
    $("#yaml").dataset.edited = ""; $("#flow-yaml").dataset.edited = "";
    await load();
  } catch (e) { say(e.body?.message || "not rolled back (" + e.status + ")", "error"); }
}

// ----- IVR flows: the same cycle per flow file (save a version, activate, roll back) ---------------

const flowBase = () => "/api/admin/ivr/" + encodeURIComponent($("#flow-name").value);

async function loadFlows() {
  let flows;
  try { flows = await cti.api("/api/admin/ivr"); } catch (e) {
    if (e.status === 404) { $("#flows-card").hidden = true; return; }  // agi.enabled is false here
    throw e;
  }
  $("#flows-card").hidden = !flows.length;
  if (!flows.length) return;
  const chosen = $("#flow-name").value || flows[0].name;
  $("#flow-name").replaceChildren(...flows.map((f) => new Option(f.name, f.name, false, f.name === chosen)));
  await loadFlow();
}

async function loadFlow() {
  const [flow, versions] = await Promise.all([cti.api(flowBase()), cti.api(flowBase() + "/versions")]);
  $("#flow-in-force").textContent = "version " + flow.version + " in force";
  if (!$("#flow-yaml").dataset.edited) $("#flow-yaml").value = flow.yaml;
  $("#flow-versions").replaceChildren(...versionRows(versions, activateFlow,
    (v) => diff(v, flowBase(), "#flow-diff")));
}

async function saveFlow() {
  say("checking…", "pending");
  try {
    const v = await cti.api(flowBase() + "/versions", {method: "POST",
      body: {yaml: $("#flow-yaml").value, comment: $("#flow-comment").value}});
    showErrors("#flow-errors", []); $("#flow-yaml").classList.remove("invalid"); $("#flow-comment").value = "";
    say("flow " + $("#flow-name").value + " saved as version " + v.version + "; not in force until activated");
    await loadFlow();
  } catch (e) {
    if (e.status === 422) {
      showErrors("#flow-errors", e.body?.details?.errors || []); $("#flow-yaml").classList.add("invalid");
      say(e.body.message, "error");
    } else say(e.body?.message || "not saved (" + e.status + ")", "error");
  }
}

async function activateFlow(version) {
  const name = $("#flow-name").value;
  try {
    const r = await cti.api(`${flowBase()}/versions/${version}/activate`, {method: "POST", body: {}});
    say("flow " + name + " version " + r.version + " is in force (was " + r.previous + "): the next caller runs it");
    $("#flow-yaml").dataset.edited = "";
    await load();
  } catch (e) { say(e.body?.message || "not activated (" + e.status + ")", "error"); }
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
$("#rollback").onclick = () => rollback("/api/admin/routing/rollback", "routing");
$("#flow-form").onsubmit = (ev) => { ev.preventDefault(); saveFlow(); };
$("#flow-yaml").oninput = () => { $("#flow-yaml").dataset.edited = "1"; };
$("#flow-name").onchange = () => { $("#flow-yaml").dataset.edited = ""; $("#flow-diff").hidden = true; loadFlow(); };
$("#flow-rollback").onclick = () => rollback(flowBase() + "/rollback", "flow " + $("#flow-name").value);
load();
