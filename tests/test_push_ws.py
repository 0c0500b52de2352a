"""WebSocketHub through aiohttp's test client."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSMsgType, web

from cti.push.envelope import Envelope
from cti.push.ws import WebSocketHub


async def _client(aiohttp_client: Any, hub: WebSocketHub) -> Any:
    app = web.Application()
    hub.add_routes(app)
    return await aiohttp_client(app)


async def _wait_registered(hub: WebSocketHub, agent: str, n: int = 1) -> None:
    async with asyncio.timeout(5):
        while hub.connections(agent) < n:  # noqa: ASYNC110 - bounded poll of a count, test only
            await asyncio.sleep(0.01)


async def test_hello_then_envelopes(aiohttp_client: Any) -> None:
    hub = WebSocketHub(agents={"alice", "bob"})
    client = await _client(aiohttp_client, hub)
    async with client.ws_connect("/ws/agents/alice") as ws, client.ws_connect("/ws/agents/alice") as ws2:
        assert await ws.receive_json(timeout=5) == {"type": "hello", "agent": "alice", "v": 1}
        assert (await ws2.receive_json(timeout=5))["type"] == "hello"
        await _wait_registered(hub, "alice", 2)
        env = Envelope(type="call.offered", agent="alice", seq=1, payload={"caller": "13800000001"})
        await hub.publish(env)
        await hub.publish(Envelope(type="call.offered", agent="bob", seq=1))  # not alice's
        for sock in (ws, ws2):
            msg = await sock.receive(timeout=5)
            assert msg.type is WSMsgType.TEXT
            assert Envelope.from_json(msg.data) == env


async def test_unknown_agent_is_404_json(aiohttp_client: Any) -> None:
    client = await _client(aiohttp_client, WebSocketHub(agents={"alice"}))
    resp = await client.get("/ws/agents/mallory")
    assert resp.status == 404
    assert (await resp.json())["error_id"] == "no-such-agent"


async def test_cross_site_origin_is_refused(aiohttp_client: Any) -> None:
    client = await _client(aiohttp_client, WebSocketHub(agents={"alice"}))
    resp = await client.get("/ws/agents/alice", headers={"Origin": "https://evil.example"})
    assert resp.status == 403


async def test_closed_socket_is_forgotten_and_close_all(aiohttp_client: Any) -> None:
    hub = WebSocketHub(agents={"alice"})
    client = await _client(aiohttp_client, hub)
    ws = await client.ws_connect("/ws/agents/alice")
    await ws.receive_json(timeout=5)
    await _wait_registered(hub, "alice")
    await ws.close()
    async with asyncio.timeout(5):
        while hub.connections("alice"):  # noqa: ASYNC110 - bounded poll, test only
            await asyncio.sleep(0.01)
    await hub.publish(Envelope(type="call.ended", agent="alice", seq=2))  # nobody listening: no error

    ws = await client.ws_connect("/ws/agents/alice")
    await ws.receive_json(timeout=5)
    await _wait_registered(hub, "alice")
    await hub.close_all()
    msg = await ws.receive(timeout=5)
    assert msg.type is WSMsgType.CLOSE
    await ws.close()
    assert hub.connections() == 0
