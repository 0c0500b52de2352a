"""Issue 10 item 7: a person who mistypes an agent's page gets a page, programs keep their JSON 404s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient

from cti.agents import AgentRegistry
from cti.model.reducer import CallModel
from cti.push.ws import WebSocketHub
from cti.web import build_web_app
from cti.web.routes import WebState
from tests.test_model_traces import AGENTS


async def _client(aiohttp_client: Callable[..., Any]) -> TestClient:
    state = WebState(model=CallModel(agents=AGENTS), agents=AgentRegistry(AGENTS), health=lambda: {"ok": True})
    hub = WebSocketHub(agents={a.id for a in AGENTS})
    return await aiohttp_client(build_web_app(state, extra_routes=hub.routes()))


async def test_unknown_agent_page_is_html_with_a_way_back(aiohttp_client: Callable[..., Any]) -> None:
    client = await _client(aiohttp_client)
    response = await client.get("/agents/nobody")
    assert response.status == 404
    assert response.content_type == "text/html"
    page = await response.text()
    assert page.lstrip().startswith("<!doctype html>")
    assert "no agent called" in page and "nobody" in page
    assert 'href="/"' in page, "a link back to the overview"
    assert 'href="/agents/bob"' in page, "the agents that do exist"
    assert "error_id" not in page


async def test_agent_id_in_the_404_page_is_escaped(aiohttp_client: Callable[..., Any]) -> None:
    client = await _client(aiohttp_client)
    response = await client.get("/agents/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert response.status == 404
    page = await response.text()
    assert "<script>" not in page and "&lt;script&gt;" in page


async def test_unknown_paths_are_pages_but_api_and_ws_stay_json(aiohttp_client: Callable[..., Any]) -> None:
    client = await _client(aiohttp_client)
    page = await client.get("/no/such/page")
    assert page.status == 404 and page.content_type == "text/html" and 'href="/"' in await page.text()

    api = await client.get("/api/nothing")
    assert api.status == 404 and api.content_type == "application/json"
    assert (await api.json())["error_id"] == "not-found"

    ws = await client.get("/ws/agents/nobody")
    assert ws.status == 404 and ws.content_type == "application/json"
    assert (await ws.json())["error_id"] == "no-such-agent"

    known = await client.get("/agents/bob")
    assert known.status == 200 and "agent.js" in await known.text()
