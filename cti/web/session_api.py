"""Who am I, how do I connect, and (admins) tokens: the endpoints a client needs before its first event.

``GET /api/me`` and ``GET /api/client-config`` let a softphone or CRM page learn everything from its
token and the server's address alone; ``/api/tokens`` lets an admin issue and revoke tokens without a
shell on the server (``cti token`` does the same against Redis directly).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from redis.exceptions import RedisError

from cti.agents import AgentRegistry
from cti.auth.store import TokenStore
from cti.auth.tokens import ROLES, TokenRecord
from cti.auth.web import principal, require, require_agent
from cti.config import MqttConfig
from cti.push.history import AgentView
from cti.push.ws import WS_PATH
from cti.web.routes import error_response

__all__ = ["session_routes"]



def token_view(record: TokenRecord) -> dict[str, Any]:
    """A token as listed: everything but its hash."""
    return {"id": record.id, "subject": record.subject, "role": record.role, "created_at": record.created_at,
            "label": record.label}


def session_routes(*, agents: AgentRegistry, mqtt: MqttConfig | None, tokens: TokenStore | None,
                   snapshot: Callable[[str], Awaitable[dict[str, Any]]] | None = None,
                   ws_base: Callable[[web.Request], str] | None = None,
                   choices: Callable[[], dict[str, Any]] | None = None,
                   view: Callable[[str], AgentView] | None = None) -> list[web.RouteDef]:
    """``choices``: what the agent's console offers (routing mode, not-ready reasons, dispositions),
    read at each request: the routing config can change under a running server."""
    def websocket_base(request: web.Request) -> str:
        if ws_base is not None:
            return ws_base(request)
        scheme = "wss" if request.secure else "ws"
        return f"{scheme}://{request.host}"

    async def me(request: web.Request) -> web.Response:
        who = await principal(request)
        agent = agents.get(who.subject) if who.role == "agent" else None
        return web.json_response({"subject": who.subject, "role": who.role, "token_id": who.token_id,
                                  "agent": None if agent is None else {"id": agent.id, "name": agent.name}})

    async def client_config(request: web.Request) -> web.Response:
        """Where the caller's events come from, on each transport, for the agent they may see."""
        who = await principal(request)
        agent_id = request.query.get("agent") or (who.subject if who.role == "agent" else None)
        if agent_id is not None and (agent_id not in agents or not who.may_see(agent_id)):
            return error_response(404 if agent_id not in agents else 403, "no-such-agent" if agent_id not in agents
                          else "forbidden", "unknown agent, or not yours", agent=agent_id)
        one = agent_id or "{agent}"
        body: dict[str, Any] = {
            "agent": agent_id,
            "websocket": {"url": websocket_base(request) + WS_PATH.replace("{agent}", one),
                          "auth": "Authorization: Bearer <token>, or ?token=<token> from a browser",
                          "resume": "?since=<last seq seen>"},
            "http": {"snapshot": f"/api/agents/{one}/snapshot", "calls": "/api/calls", "me": "/api/me",
                     "calls_today": f"/api/agents/{one}/calls/today"},
            "mqtt": None,
            "commands": choices() if choices is not None else None,
        }
        if mqtt is not None and mqtt.enabled:
            prefix = f"{mqtt.topic_prefix}/agents/{one}"
            body["mqtt"] = {
                "host": mqtt.public_host or urlsplit(f"//{request.host}").hostname or mqtt.host,
                "port": mqtt.public_port or mqtt.port,
                "username": agent_id or who.subject, "password": "<your token>",
                "topics": {"events": f"{prefix}/events", "state": f"{prefix}/state",
                           "commands": f"{prefix}/commands"},
                "qos": 1,
            }
        return web.json_response(body)

    async def agent_states(request: web.Request) -> web.Response:
        """Every agent the token may see, with the state their screens show and how many calls ring or
        are up: a supervisor's overview (an agent's token lists only themselves)."""
        who = await principal(request)
        rows = []
        for agent in agents:
            if who.may_see(agent.id):
                shown = view(agent.id) if view is not None else AgentView()
                rows.append({"id": agent.id, "name": agent.name, "seq": shown.seq, "state": shown.state,
                             "ringing": sum(c["type"] == "call.offered" for c in shown.calls.values()),
                             "on_calls": sum(c["type"] == "call.answered" for c in shown.calls.values())})
        return web.json_response({"agents": rows})

    async def agent_snapshot(request: web.Request) -> web.Response:
        """The agent's state, ringing offers and calls up, consistent with ``seq``: show it, then resume
        the WebSocket with ``?since=<seq>``."""
        agent_id = request.match_info["agent"]
        await require_agent(request, agent_id)
        if agent_id not in agents:
            return error_response(404, "no-such-agent", "unknown agent", agent=agent_id)
        if snapshot is None:
            return error_response(404, "not-found", "no snapshots on this server")
        return web.json_response(await snapshot(agent_id))

    async def list_tokens(request: web.Request) -> web.Response:
        await require(request, "admin")
        if tokens is None:
            return error_response(404, "auth-disabled", "auth is off (auth.enabled: false): there are no tokens")
        return web.json_response([token_view(r) for r in await tokens.records()])

    async def issue_token(request: web.Request) -> web.Response:
        await require(request, "admin")
        if tokens is None:
            return error_response(404, "auth-disabled", "auth is off (auth.enabled: false): there are no tokens")
        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "bad-json", "the body must be a JSON object")
        if not isinstance(body, dict):
            return error_response(400, "bad-json", "the body must be a JSON object")
        role, subject = body.get("role", "agent"), body.get("subject")
        if role not in ROLES:
            return error_response(400, "bad-role", f"role must be one of {', '.join(ROLES)}", role=role)
        if not isinstance(subject, str) or (role == "agent" and subject not in agents):
            return error_response(400, "bad-subject", "subject must be a configured agent id for role agent, "
                          "a login name otherwise", subject=subject)
        if role != "agent" and subject in agents:
            return error_response(400, "bad-subject", "a supervisor or admin login must not be an agent id (both are "
                          "MQTT usernames)", subject=subject)
        try:
            token, record = await tokens.issue(subject, role, label=str(body.get("label", "")))
        except ValueError as exc:
            return error_response(400, "bad-subject", str(exc), subject=subject)
        except RedisError as exc:
            return error_response(503, "store-unavailable", f"Redis did not answer: {exc}")
        return web.json_response({**token_view(record), "token": token}, status=201)

    async def revoke_token(request: web.Request) -> web.Response:
        await require(request, "admin")
        if tokens is None:
            return error_response(404, "auth-disabled", "auth is off (auth.enabled: false): there are no tokens")
        token_id = request.match_info["id"]
        if not await tokens.revoke(token_id):
            return error_response(404, "no-such-token", "no token with this id", id=token_id)
        return web.json_response({"revoked": token_id})

    return [web.get("/api/me", me), web.get("/api/client-config", client_config),
            web.get("/api/agents/{agent}/snapshot", agent_snapshot),
            web.get("/api/agents/states", agent_states),
            web.get("/api/tokens", list_tokens), web.post("/api/tokens", issue_token),
            web.delete("/api/tokens/{id}", revoke_token)]
