"""HTTP for CTI routing mode: set an agent's state by hand, and ask why a call went where it went.

``cti agent ready|not-ready|logout ID`` and ``cti explain CALL_ID`` are thin clients of these.
The routes exist only when the server routes (``routing.mode: cti``); in observe mode app_queue
owns agent states (``QueuePause``) and there are no routing decisions to explain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web
from redis.exceptions import RedisError

from cti.auth.web import require, require_agent
from cti.router.agent_state import AgentStateError, UnknownAgentError
from cti.router.controller import Explanation
from cti.web.commands_api import Forced
from cti.web.routes import error_response
from routing.trace import Trace

__all__ = ["AgentControl", "routing_routes"]

STATES = ("ready", "not_ready", "logged_out")


class AgentControl(Protocol):
    """The part of :class:`cti.router.controller.RoutingController` these routes use."""

    async def set_ready(self, agent_id: str) -> None: ...
    async def set_not_ready(self, agent_id: str, reason: str) -> None: ...
    async def log_out(self, agent_id: str) -> None: ...
    def explain(self, call_id: str) -> Sequence[Explanation]: ...
    async def why_waiting(self, call_id: str) -> Trace | None: ...



def jsonable(value: Any) -> Any:
    """Traces hold frozensets and mappings: sets become sorted lists, dataclasses dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (set, frozenset)):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def routing_routes(control: AgentControl, forced: Forced | None = None) -> list[web.RouteDef]:
    """``forced``: told when a supervisor or admin sets an agent's state (the audit log)."""
    async def set_state(request: web.Request) -> web.Response:
        agent = request.match_info["agent"]
        who = await require_agent(request, agent)
        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "bad-json", "the body must be a JSON object")
        state = body.get("state") if isinstance(body, dict) else None
        if state not in STATES:
            return error_response(400, "bad-state", f"state must be one of {', '.join(STATES)}", state=state)
        reason = body.get("reason")
        try:
            if state == "ready":
                await control.set_ready(agent)
            elif state == "logged_out":
                await control.log_out(agent)
            else:
                if not isinstance(reason, str) or not reason:
                    return error_response(400, "reason-required", "not_ready needs a reason")
                await control.set_not_ready(agent, reason)
        except UnknownAgentError:
            return error_response(404, "no-such-agent", "unknown agent", agent=agent)
        except AgentStateError as exc:
            return error_response(409, "illegal-transition", str(exc), agent=agent, current=exc.current,
                                  wanted=exc.wanted)
        except ValueError as exc:  # an unknown not-ready reason
            return error_response(400, "bad-reason", str(exc), reason=reason)
        except RedisError as exc:
            return error_response(503, "store-unavailable", f"the routing store (Redis) did not answer: {exc}")
        if forced is not None and who.role != "agent":
            await forced(who, agent, {"state": state, "reason": reason if state == "not_ready" else None})
        return web.json_response({"agent": agent, "state": state, "reason": reason if state == "not_ready" else None})

    async def explain(request: web.Request) -> web.Response:
        call_id = request.match_info["call"]
        await require(request, "supervisor", "admin")  # other agents' calls, and why they were passed over
        decisions = [{"at_ms": e.at_ms, "agent": e.agent, "side": e.side, "trace": jsonable(e.trace)}
                     for e in control.explain(call_id)]
        waiting = await control.why_waiting(call_id)
        if not decisions and waiting is None:
            return error_response(404, "no-such-call", "no routing decision or waiting call with this id", call=call_id)
        return web.json_response({"call": call_id, "decisions": decisions,
                                  "waiting": jsonable(waiting) if waiting is not None else None})

    return [web.post("/api/agents/{agent}/state", set_state), web.get("/api/routing/calls/{call}", explain)]
