"""The HTTP edge: pages, JSON state, health, metrics — and no HTML injection from caller data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient

from cti.agents import AgentRegistry
from cti.ami.codec import Decoder
from cti.model.reducer import CallModel
from cti.web import build_web_app
from cti.web.routes import STATIC, WebState
from tests.test_model_traces import AGENTS
from tests.traces import trace_bytes


def _model_mid_call() -> CallModel:
    model = CallModel(agents=AGENTS)
    for msg in Decoder().feed(trace_bytes("basic")):
        model.apply(msg)
        if msg.event == "AgentConnect":
            break
    return model


async def _client(aiohttp_client: Callable[..., Any], health: dict[str, Any]) -> TestClient:
    state = WebState(model=_model_mid_call(), agents=AgentRegistry(AGENTS), health=lambda: health)
    return await aiohttp_client(build_web_app(state))


async def test_pages_and_api(aiohttp_client: Callable[..., Any]) -> None:
    client = await _client(aiohttp_client, {"ok": True, "ami_connected": True})
    assert (await client.get("/")).status == 200
    page = await client.get("/agents/bob")
    assert page.status == 200 and "agent.js" in await page.text()
    calls = await (await client.get("/api/calls")).json()
    [call] = calls["calls"]
    assert (call["caller"], call["agent"], call["agent_id"], call["queue"]) == ("13800000001", "Bob", "bob", "support")
    agents = await (await client.get("/api/agents")).json()
    assert [a["id"] for a in agents] == ["alice", "bob", "chen"]
    assert (await client.get("/healthz")).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert "cti_ami_events_total" in metrics and "cti_pop_latency_seconds_bucket" in metrics


async def test_unknown_agent_is_a_clear_404(aiohttp_client: Callable[..., Any]) -> None:
    client = await _client(aiohttp_client, {"ok": True})
    response = await client.get("/agents/mallory")
    assert response.status == 404
    assert response.content_type == "text/html" and "mallory" in await response.text()  # tests/test_web_edges.py


async def test_health_is_503_until_the_model_is_synced(aiohttp_client: Callable[..., Any]) -> None:
    client = await _client(aiohttp_client, {"ok": False, "ami_connected": True, "model_synced": False})
    response = await client.get("/healthz")
    assert response.status == 503 and (await response.json())["model_synced"] is False


def test_console_scripts_never_inject_html() -> None:
    for name in ("agent.js", "index.js"):
        source = "\n".join(line for line in (STATIC / name).read_text().splitlines()
                           if not line.lstrip().startswith("//"))
        assert "innerHTML" not in source and "outerHTML" not in source and "insertAdjacentHTML" not in source
        assert "textContent" in source
