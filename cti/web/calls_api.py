"""``GET /api/agents/{agent}/calls/today``: the calls an agent took or missed today (``?day=`` one of
the days kept), newest first, each with the agent's disposition (:mod:`cti.push.calllog`)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiohttp import web
from redis.exceptions import RedisError

from cti.agents import AgentRegistry
from cti.auth.web import require_agent
from cti.web.routes import error_response

__all__ = ["CallHistory", "calls_routes"]

READ_TIMEOUT_S = 2.0


class CallHistory(Protocol):
    """:class:`cti.push.calllog.CallLog` is one."""

    timezone: str

    def kept_days(self) -> list[str]: ...
    async def calls(self, agent: str, day: str) -> list[dict[str, Any]]: ...


def calls_routes(*, agents: AgentRegistry, history: CallHistory) -> list[web.RouteDef]:
    async def today(request: web.Request) -> web.Response:
        agent_id = request.match_info["agent"]
        await require_agent(request, agent_id)
        if agent_id not in agents:
            return error_response(404, "no-such-agent", "unknown agent", agent=agent_id)
        kept = history.kept_days()
        day = request.query.get("day", kept[0])
        if day not in kept:
            return error_response(400, "bad-day", f"day must be YYYY-MM-DD, one of the {len(kept)} days kept "
                                  f"({history.timezone})", day=day[:32], kept=kept)
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                calls = await history.calls(agent_id, day)
        except (RedisError, OSError, TimeoutError) as exc:
            return error_response(503, "store-unavailable", f"Redis did not answer: {exc!r}")
        return web.json_response({"agent": agent_id, "day": day, "timezone": history.timezone, "calls": calls})

    return [web.get("/api/agents/{agent}/calls/today", today)]
