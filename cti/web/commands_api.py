"""``POST /api/agents/{agent}/commands``: one command, answered in the reply and as a ``command.result``
envelope to the agent (so every screen of theirs learns what happened)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cti.auth.tokens import Principal
from cti.auth.web import require_agent
from cti.web.routes import error_response

__all__ = ["command_routes"]

#: Runs one command for an agent from decoded JSON; returns (HTTP status, body).
RunCommand = Callable[[str, Any], Awaitable[tuple[int, dict[str, Any]]]]


#: Told of a command a supervisor or admin sent for an agent (the audit log).
Forced = Callable[[Principal, str, dict[str, Any]], Awaitable[None]]


def command_routes(run: RunCommand, forced: Forced | None = None) -> list[web.RouteDef]:
    async def post(request: web.Request) -> web.Response:
        agent = request.match_info["agent"]
        who = await require_agent(request, agent)
        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "bad-json", "the body must be a JSON object")
        status, reply = await run(agent, body)
        if forced is not None and who.role != "agent":
            await forced(who, agent, {"command": body.get("command") if isinstance(body, dict) else None,
                                      "ok": status == 200})
        return web.json_response(reply, status=status)

    return [web.post("/api/agents/{agent}/commands", post)]
