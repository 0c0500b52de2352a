"""The admin API: routing config versions (read, add, dry-run, activate, roll back), IVR flow versions
(read, add, activate, roll back), the audit log, the OpenAPI document, and the ``/admin`` page.
Supervisors read; only admins change."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from cti.admin.flows import FLOW_NAME, FlowAdmin
from cti.admin.routing import FOLLOW_S, ActivationRefused, ConfigInvalid, RoutingAdmin, as_yaml, load_yaml
from cti.admin.versions import AuditLog, ConfigVersions, Version, diff_text
from cti.auth.tokens import Principal, Role
from cti.auth.web import http_error, require
from cti.web.routes import STATIC, error_response
from routing.config import RoutingConfig

__all__ = ["admin_routes", "flow_routes", "openapi", "record_forced"]

log = structlog.get_logger(__name__)

READ: tuple[Role, ...] = ("supervisor", "admin")
DEFS = "#/components/schemas/RoutingConfig/$defs/"  # the model's own definitions stay inside its schema


def _number(request: web.Request) -> int:
    try:
        return int(request.match_info["version"])
    except ValueError:
        raise http_error(web.HTTPNotFound, "no-such-version", "a version is a number") from None


async def _stored(versions: ConfigVersions, number: int) -> Version:
    version = await versions.get(number)
    if version is None:
        raise http_error(web.HTTPNotFound, "no-such-version", "no such version")
    return version


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise http_error(web.HTTPBadRequest, "bad-json", "the body must be a JSON object")
    return body


def admin_routes(admin: RoutingAdmin | None, audit: AuditLog) -> list[web.RouteDef]:
    """``admin`` is None in observe mode: app_queue routes, there is no routing config to edit."""

    def routing() -> RoutingAdmin:
        if admin is None:
            raise http_error(web.HTTPNotFound, "observe-mode",
                             "routing.mode is observe: app_queue routes, there is no routing config to edit")
        return admin

    async def version_or_404(number: int) -> Version:
        return await _stored(routing().versions, number)

    async def current(request: web.Request) -> web.Response:
        await require(request, *READ)
        a = routing()
        config = a.config.model_dump(mode="json")
        return web.json_response({"version": a.in_force, "config": config, "yaml": as_yaml(config)})

    async def versions(request: web.Request) -> web.Response:
        await require(request, *READ)
        a = routing()
        return web.json_response([{**v.summary(), "active": v.version == a.in_force}
                                  for v in reversed(await a.versions.all())])

    async def one(request: web.Request) -> web.Response:
        await require(request, *READ)
        version = await version_or_404(_number(request))
        against = request.query.get("against")
        base = int(against) if against and against.isdigit() else version.parent
        return web.json_response({**version.summary(), "active": version.version == routing().in_force,
                                  "config": version.config, "yaml": as_yaml(version.config),
                                  "diff_against": base, "diff": await routing().diff(version, base)})

    async def add(request: web.Request) -> web.Response:
        who = await require(request, "admin")
        body = await _body(request)
        data = body.get("config")
        try:
            if data is None and isinstance(body.get("yaml"), str):
                data = load_yaml(body["yaml"])
            version = await routing().propose(data, who=who.subject, role=who.role,
                                              comment=str(body.get("comment", ""))[:500])
        except ConfigInvalid as exc:
            return _invalid(exc)
        return web.json_response(version.summary(), status=201)

    async def dry_run(request: web.Request) -> web.Response:
        await require(request, *READ)
        version = await version_or_404(_number(request))
        return web.json_response({"version": version.version, **await routing().dry_run(version)})

    async def activate(request: web.Request) -> web.Response:
        who = await require(request, "admin")
        version = await version_or_404(_number(request))
        force = bool((await _body(request)).get("force")) if request.can_read_body else False
        try:
            return web.json_response(await routing().activate(version, who=who.subject, role=who.role, force=force))
        except ActivationRefused as exc:
            return error_response(409, "would-strand-calls", str(exc), stranded=exc.stranded)

    async def rollback(request: web.Request) -> web.Response:
        who = await require(request, "admin")
        force = bool((await _body(request)).get("force")) if request.can_read_body else False
        try:
            return web.json_response(await routing().rollback(who=who.subject, role=who.role, force=force))
        except LookupError as exc:
            return error_response(409, "nothing-to-roll-back", str(exc))
        except ActivationRefused as exc:
            return error_response(409, "would-strand-calls", str(exc), stranded=exc.stranded)

    async def audit_log(request: web.Request) -> web.Response:
        await require(request, *READ)
        try:
            return web.json_response(await audit.recent(min(1000, int(request.query.get("count", "200")))))
        except ValueError:
            return error_response(400, "bad-count", "count is a number")

    async def spec(_request: web.Request) -> web.Response:
        return web.json_response(openapi())

    async def page(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "admin.html")

    return [web.get("/api/admin/routing", current), web.get("/api/admin/routing/versions", versions),
            web.get("/api/admin/routing/versions/{version}", one), web.post("/api/admin/routing/versions", add),
            web.post("/api/admin/routing/versions/{version}/dry-run", dry_run),
            web.post("/api/admin/routing/versions/{version}/activate", activate),
            web.post("/api/admin/routing/rollback", rollback), web.get("/api/admin/audit", audit_log),
            web.get("/api/openapi.json", spec), web.get("/admin", page)]


def _invalid(exc: ConfigInvalid) -> web.Response:
    return error_response(422, "invalid-config", f"{len(exc.errors)} invalid setting(s); nothing was "
                          "stored and the version in force is unchanged", errors=exc.errors)


def _unwritten(name: str, exc: OSError) -> web.Response:
    return error_response(503, "flow-not-written", f"the version is in force in Redis, but this server could not "
                          f"write {name}.yaml ({exc.strerror or exc}); it tries again every {FOLLOW_S:g} s")


def flow_routes(flows: FlowAdmin | None) -> list[web.RouteDef]:
    """``flows`` is None when the server runs no FastAGI (``agi.enabled: false``)."""

    def admin() -> FlowAdmin:
        if flows is None:
            raise http_error(web.HTTPNotFound, "no-ivr", "agi.enabled is false: this server runs no IVR flows")
        return flows

    def name_of(request: web.Request) -> str:
        name = request.match_info["name"]
        if not FLOW_NAME.match(name):
            raise http_error(web.HTTPNotFound, "no-such-flow", "a flow's name is its file's, without .yaml")
        return name

    async def version_or_404(name: str, number: int) -> Version:
        return await _stored(admin().versions(name), number)

    async def listing(request: web.Request) -> web.Response:
        await require(request, *READ)
        a = admin()
        return web.json_response([{"name": n, "version": a.in_force.get(n)} for n in a.names()])

    async def current(request: web.Request) -> web.Response:
        await require(request, *READ)
        name = name_of(request)
        text = admin().text(name)
        if text is None:
            raise http_error(web.HTTPNotFound, "no-such-flow", f"no flow file {name}.yaml")
        return web.json_response({"name": name, "version": admin().in_force.get(name), "yaml": text})

    async def versions(request: web.Request) -> web.Response:
        await require(request, *READ)
        name = name_of(request)
        in_force = admin().in_force.get(name)
        return web.json_response([{**v.summary(), "active": v.version == in_force}
                                  for v in reversed(await admin().versions(name).all())])

    async def one(request: web.Request) -> web.Response:
        await require(request, *READ)
        name = name_of(request)
        version = await version_or_404(name, _number(request))
        base = await admin().versions(name).get(version.parent) if version.parent is not None else None
        return web.json_response({**version.summary(), "active": version.version == admin().in_force.get(name),
                                  "yaml": version.config["yaml"], "diff_against": version.parent,
                                  "diff": diff_text(base.config["yaml"] if base else "", version.config["yaml"],
                                                    f"version {version.parent}" if base else "(none)",
                                                    f"version {version.version}")})

    async def add(request: web.Request) -> web.Response:
        who = await require(request, "admin")
        name = name_of(request)
        body = await _body(request)
        if not isinstance(body.get("yaml"), str):
            raise http_error(web.HTTPBadRequest, "bad-json", "send the flow as {yaml: '...', comment: '...'}")
        try:
            version = await admin().propose(name, body["yaml"], who=who.subject, role=who.role,
                                            comment=str(body.get("comment", ""))[:500])
        except ConfigInvalid as exc:
            return _invalid(exc)
        return web.json_response(version.summary(), status=201)

    async def activate(request: web.Request) -> web.Response:
        who = await require(request, "admin")
        name = name_of(request)
        version = await version_or_404(name, _number(request))
        try:
            return web.json_response(await admin().activate(name, version, who=who.subject, role=who.role))
        except ConfigInvalid as exc:
            return _invalid(exc)
        except OSError as exc:
            return _unwritten(name, exc)

    async def rollback(request: web.Request) -> web.Response:
        who = await require(request, "admin")
        try:
            return web.json_response(await admin().rollback(name_of(request), who=who.subject, role=who.role))
        except LookupError as exc:
            return error_response(409, "nothing-to-roll-back", str(exc))
        except OSError as exc:
            return _unwritten(request.match_info["name"], exc)

    base = "/api/admin/ivr/{name}"
    return [web.get("/api/admin/ivr", listing), web.get(base, current), web.get(f"{base}/versions", versions),
            web.post(f"{base}/versions", add), web.get(f"{base}/versions/{{version}}", one),
            web.post(f"{base}/versions/{{version}}/activate", activate), web.post(f"{base}/rollback", rollback)]


def _op(summary: str, role: str, *, body: dict[str, Any] | None = None, ok: str = "200",
        errors: tuple[str, ...] = ()) -> dict[str, Any]:
    responses: dict[str, Any] = {ok: {"description": "done"}, "401": {"description": "no token, or a bad one"},
                                 "403": {"description": f"needs the {role} role"}}
    for code in errors:
        responses[code] = {"description": {"404": "no such version", "409": "refused: would strand waiting calls, "
                                           "or nothing to roll back", "422": "invalid: `errors` lists each field "
                                           "path and why", "503": "in force in Redis; this server's flow file not "
                                           "written yet (it tries again)"}[code],
                           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    op: dict[str, Any] = {"summary": summary, "security": [{"bearer": []}], "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def openapi() -> dict[str, Any]:
    """The admin API as OpenAPI 3.1; the routing config's schema is the pydantic model's own."""
    version_path = {"name": "version", "in": "path", "required": True, "schema": {"type": "integer"}}
    name_path = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "the flow file's name without .yaml (agi://host/NAME)"}
    force = {"type": "object", "properties": {"force": {"type": "boolean", "default": False}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "CTI server admin API", "version": "1",
                 "description": "Routing config and IVR flow versions, dry runs, activation, rollback and the audit "
                 "log. "
                 "docs/kpis.md documents /api/kpis; docs/events.md the agents' API."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "cti_<id>_<secret>"}},
            "schemas": {
                "RoutingConfig": RoutingConfig.model_json_schema(ref_template=DEFS + "{model}"),
                "Error": {"type": "object", "properties": {
                    "error_id": {"type": "string"}, "message": {"type": "string"}, "details": {
                        "type": "object", "properties": {"errors": {"type": "array", "items": {
                            "type": "object", "properties": {"path": {"type": "string"},
                                                             "message": {"type": "string"}}}}}}}},
            },
        },
        "paths": {
            "/api/admin/routing": {"get": _op("the routing config in force, as JSON and YAML", "supervisor")},
            "/api/admin/routing/versions": {
                "get": _op("every version, newest first (who, when, why, which it was edited from)", "supervisor"),
                "post": _op("add a version (not yet in force): {config: {...}} or {yaml: '...'}, comment", "admin",
                            body={"type": "object", "properties": {
                                "config": {"$ref": "#/components/schemas/RoutingConfig"}, "yaml": {"type": "string"},
                                "comment": {"type": "string"}}}, ok="201", errors=("422",)),
            },
            "/api/admin/routing/versions/{version}": {"get": {**_op("a version, its YAML and its diff against "
                                                                    "?against= (default: its parent)", "supervisor",
                                                                    errors=("404",)), "parameters": [version_path]}},
            "/api/admin/routing/versions/{version}/dry-run": {"post": {**_op(
                "what the version would do to each call waiting now: rank, score, step, the agent it would go to",
                "supervisor", errors=("404",)), "parameters": [version_path]}},
            "/api/admin/routing/versions/{version}/activate": {"post": {**_op(
                "put the version in force on every server; waiting calls keep their places", "admin", body=force,
                errors=("404", "409")), "parameters": [version_path]}},
            "/api/admin/routing/rollback": {"post": _op("put the version in force before this one back", "admin",
                                                        body=force, errors=("409",))},
            "/api/admin/ivr": {"get": _op("the IVR flow files and the version of each in force", "supervisor")},
            "/api/admin/ivr/{name}": {"get": {**_op("a flow's YAML in force", "supervisor", errors=("404",)),
                                              "parameters": [name_path]}},
            "/api/admin/ivr/{name}/versions": {
                "parameters": [name_path],
                "get": _op("every version of the flow, newest first", "supervisor"),
                "post": _op("add a version (not yet in force), checked as the FastAGI server reads flows: "
                            "{yaml: '...', comment}", "admin", ok="201", errors=("422",),
                            body={"type": "object", "required": ["yaml"], "properties": {
                                "yaml": {"type": "string"}, "comment": {"type": "string"}}}),
            },
            "/api/admin/ivr/{name}/versions/{version}": {"get": {**_op(
                "a version of the flow, its YAML and its diff against its parent", "supervisor", errors=("404",)),
                "parameters": [name_path, version_path]}},
            "/api/admin/ivr/{name}/versions/{version}/activate": {"post": {**_op(
                "put the version in force on every server: the next caller runs it, callers in the flow finish "
                "on theirs", "admin", errors=("404", "422", "503")), "parameters": [name_path, version_path]}},
            "/api/admin/ivr/{name}/rollback": {"post": {**_op("put the flow's version in force before this one "
                                                              "back", "admin", errors=("409", "503")),
                                                        "parameters": [name_path]}},
            "/api/admin/audit": {"get": _op("every change and forced agent state, newest first", "supervisor")},
        },
    }


async def record_forced(audit: AuditLog, who: Principal, agent: str, what: dict[str, Any]) -> None:
    """A supervisor or admin acting on an agent's state: in the audit log (a failure to write it is logged)."""
    if who.role == "agent":
        return
    try:
        await audit.record(who=who.subject, role=who.role, action="agent.forced", agent=agent, **what)
    except (RedisError, OSError) as exc:
        log.warning("audit.write_failed", agent=agent, who=who.subject, error=repr(exc))
