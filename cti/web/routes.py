"""aiohttp routes. State comes in through typed app keys, never globals."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import cti.metrics  # noqa: F401 - registers the cti_* metrics that /metrics serves
from cti.config import AgentConfig
from cti.model.reducer import CallModel

STATIC = Path(str(files("cti.web") / "static"))


@dataclass(frozen=True, slots=True)
class WebState:
    model: CallModel
    agents: Sequence[AgentConfig]
    health: Callable[[], dict[str, Any]]
    customer_of: Callable[[str], dict[str, Any] | None] = lambda _linkedid: None


STATE = web.AppKey("state", WebState)


def _agent_or_404(request: web.Request) -> AgentConfig:
    agent_id = request.match_info["agent"]
    for agent in request.app[STATE].agents:
        if agent.id == agent_id:
            return agent
    raise web.HTTPNotFound(
        text=json.dumps({"error_id": "no-such-agent", "details": {"agent": agent_id[:64]}}),
        content_type="application/json",
    )


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def agent_page(request: web.Request) -> web.FileResponse:
    _agent_or_404(request)
    return web.FileResponse(STATIC / "agent.html")


async def api_calls(request: web.Request) -> web.Response:
    state = request.app[STATE]
    snapshot = state.model.snapshot()
    for call in snapshot["calls"]:
        call["customer"] = state.customer_of(call["linkedid"])
    return web.json_response(snapshot)


async def api_agents(request: web.Request) -> web.Response:
    agents = request.app[STATE].agents
    return web.json_response([{"id": a.id, "name": a.name, "interface": a.interface} for a in agents])


async def healthz(request: web.Request) -> web.Response:
    health = request.app[STATE].health()
    return web.json_response(health, status=200 if health.get("ok") else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_web_app(state: WebState, *, extra_routes: Sequence[web.RouteDef] = ()) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.add_routes([
        web.get("/", index),
        web.get("/agents/{agent}", agent_page),
        web.get("/api/calls", api_calls),
        web.get("/api/agents", api_agents),
        web.get("/healthz", healthz),
        web.get("/metrics", metrics),
        web.static("/static", STATIC),
        *extra_routes,
    ])
    return app
