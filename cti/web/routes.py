"""aiohttp routes. State comes in through typed app keys, never globals."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

import cti.metrics  # noqa: F401 - registers the cti_* metrics that /metrics serves
from cti.agents import AgentRegistry
from cti.auth.tokens import Principal
from cti.auth.web import principal as who_asks
from cti.config import AgentConfig
from cti.model.reducer import CallModel

STATIC = Path(str(files("cti.web") / "static"))


@dataclass(frozen=True, slots=True)
class WebState:
    model: CallModel
    agents: AgentRegistry
    health: Callable[[], dict[str, Any]]
    customer_of: Callable[[str], dict[str, Any] | None] = lambda _linkedid: None


STATE = web.AppKey("state", WebState)


#: Paths whose clients are programs: their 404s stay JSON (``error_id``), every other 404 is a page.
JSON_PREFIXES = ("/api/", "/ws/")


def error_response(status: int, error_id: str, message: str, **details: Any) -> web.Response:
    """The API's one error shape: ``error_id`` for programs, ``message`` for people."""
    return web.json_response({"error_id": error_id, "message": message, "details": details}, status=status)


def _wants_json(request: web.Request) -> bool:
    return request.path.startswith(JSON_PREFIXES)


def _page(title: str, message: str, links: Sequence[tuple[str, str]] = ()) -> str:
    """A small HTML page; every piece of text is escaped (the agent id comes from the URL)."""
    items = "".join(f'<li><a href="{html.escape(href)}">{html.escape(text)}</a></li>' for href, text in links)
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)} · CTI server</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="stylesheet" href="/static/cti.css">\n</head>\n<body>\n'
        f"<header><h1>{html.escape(title)}</h1></header>\n<main>\n"
        f'<p class="notfound">{html.escape(message)}</p>\n'
        + (f"<ul>{items}</ul>\n" if items else "")
        + '<p><a href="/">Back to the overview</a></p>\n</main>\n</body>\n</html>\n'
    )


def _html_404(title: str, message: str, links: Sequence[tuple[str, str]] = ()) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=_page(title, message, links), content_type="text/html")


def _agent_or_404(request: web.Request) -> AgentConfig:
    agent_id = request.match_info["agent"]
    agents = request.app[STATE].agents
    agent = agents.get(agent_id)
    if agent is not None:
        return agent
    raise _html_404(
        "No such agent",
        f"There is no agent called \u201c{agent_id[:64]}\u201d on this server."
        + (" The agents are:" if agents else " No agents are configured (agents[] in the config)."),
        [(f"/agents/{a.id}", f"{a.name} ({a.id})") for a in agents],
    )


@web.middleware
async def not_found_pages(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """An unknown path is a readable page for people, and JSON under :data:`JSON_PREFIXES` for programs."""
    try:
        return await handler(request)
    except web.HTTPNotFound as exc:
        if exc.content_type in ("text/html", "application/json"):
            raise  # a handler's own 404 page or JSON
        if _wants_json(request):
            return web.json_response({"error_id": "not-found", "message": "no such path",
                                      "details": {"path": request.path[:200]}}, status=404)
        raise _html_404("Page not found", f"Nothing lives at {request.path[:200]} on this server.") from None


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def agent_page(request: web.Request) -> web.FileResponse:
    _agent_or_404(request)
    return web.FileResponse(STATIC / "agent.html")


async def api_calls(request: web.Request) -> web.Response:
    """Every live call (supervisors), or only the caller's own (an agent's token): customer records
    are personal data, so an agent never reads another agent's callers."""
    who: Principal = await who_asks(request)
    state = request.app[STATE]
    snapshot = state.model.snapshot()
    if not who.sees_all:
        agent_id = who.subject
        snapshot["calls"] = [c.snapshot() for c in state.model.calls.values() if c.involves(agent_id)]
        snapshot["members"] = [m for m in snapshot["members"] if m.get("agent_id") == agent_id]
    for call in snapshot["calls"]:
        call["customer"] = state.customer_of(call["linkedid"])
    return web.json_response(snapshot)


async def api_agents(request: web.Request) -> web.Response:
    """Names and ids of every agent: any signed-in client may list colleagues (transfer targets)."""
    await who_asks(request)
    agents = request.app[STATE].agents
    return web.json_response([{"id": a.id, "name": a.name, "interface": a.interface} for a in agents])


async def healthz(request: web.Request) -> web.Response:
    health = request.app[STATE].health()
    return web.json_response(health, status=200 if health.get("ok") else 503)


#: Registries of the server's own (its KPIs), served on /metrics after the process-wide one: two
#: servers in one process (the tests) must not share one collector.
REGISTRIES = web.AppKey("registries", list[CollectorRegistry])


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest() + b"".join(generate_latest(r) for r in request.app.get(REGISTRIES, ()))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_web_app(state: WebState, *, extra_routes: Sequence[web.RouteDef] = (),
                  middlewares: Sequence[Any] = ()) -> web.Application:
    app = web.Application(middlewares=[*middlewares, not_found_pages])
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
