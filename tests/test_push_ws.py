"""WebSocketHub through aiohttp's test client."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from cti.push.envelope import Envelope
from cti.push.ws import WebSocketHub, text_frame


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
        hub.publish(env)
        hub.publish(Envelope(type="call.offered", agent="bob", seq=1))  # not alice's
        for sock in (ws, ws2):
            msg = await sock.receive(timeout=5)
            assert msg.type is WSMsgType.TEXT
            assert Envelope.from_json(msg.data) == env


@pytest.mark.parametrize(("size", "header"), [
    (0, b"\x81\x00"), (125, b"\x81\x7d"), (126, b"\x81\x7e\x00\x7e"), (65_535, b"\x81\x7e\xff\xff"),
    (65_536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
])
def test_text_frame_header_follows_rfc_6455(size: int, header: bytes) -> None:
    body = b"y" * size
    assert text_frame(body) == header + body


def _sized(seq: int, size: int) -> Envelope:
    """An envelope whose JSON is exactly ``size`` bytes."""
    bare = Envelope(type="call.updated", agent="alice", seq=seq, payload={"pad": ""})
    return Envelope(type=bare.type, agent=bare.agent, seq=seq, id=bare.id, ts=bare.ts,
                    payload={"pad": "x" * (size - len(bare.body))})


async def test_frames_written_directly_arrive_whole_at_every_length_encoding(aiohttp_client: Any) -> None:
    """The hub writes a frame itself when nothing is queued: 7-bit, 16-bit and 64-bit lengths, and a
    burst that spills into the writer task, all reach a real client intact and in order."""
    hub = WebSocketHub(agents={"alice"})
    client = await _client(aiohttp_client, hub)
    async with client.ws_connect("/ws/agents/alice", max_msg_size=0) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        await _wait_registered(hub, "alice")
        sizes = [146, 200, 300, 65_535, 65_536, 100_000, *[3_000] * 40]  # frame body bytes
        sent = [_sized(i, n) for i, n in enumerate(sizes, start=1)]
        assert [len(e.body) for e in sent] == sizes
        for env in sent:
            hub.publish(env)
        got = [Envelope.from_json((await ws.receive(timeout=5)).data) for _ in sent]
    assert got == sent


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
    hub.publish(Envelope(type="call.ended", agent="alice", seq=2))  # nobody listening: no error

    ws = await client.ws_connect("/ws/agents/alice")
    await ws.receive_json(timeout=5)
    await _wait_registered(hub, "alice")
    await hub.close_all()
    msg = await ws.receive(timeout=5)
    assert msg.type is WSMsgType.CLOSE
    await ws.close()
    assert hub.connections() == 0


async def _stalled_client(port: int, agent: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that completes the handshake and then never reads (a frozen browser tab)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /ws/agents/{agent} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    return reader, writer


async def test_a_client_that_stops_reading_only_delays_itself() -> None:
    """Frames for a stalled agent pile up in that socket's own queue: publish never waits on it,
    every other agent gets every frame in order, and the stalled socket is closed (1013)."""
    hub = WebSocketHub(agents={"busy", "ok"}, send_timeout=0.2, max_queue=100_000)
    app = web.Application()
    hub.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        _, stalled = await _stalled_client(port, "busy")
        url = f"http://127.0.0.1:{port}/ws/agents/ok"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ok:
            assert (await ok.receive_json(timeout=5))["type"] == "hello"
            await _wait_registered(hub, "busy")
            await _wait_registered(hub, "ok")
            big = {"notes": "x" * 16_000}
            got: list[int] = []

            async def read_ok() -> None:
                while len(got) < 400:
                    got.append(Envelope.from_json((await ok.receive(timeout=10)).data).seq)

            reader = asyncio.create_task(read_ok(), name="test.read_ok")
            for seq in range(1, 401):
                hub.publish(Envelope(type="call.offered", agent="busy", seq=seq, payload=big))  # never waits
                hub.publish(Envelope(type="call.offered", agent="ok", seq=seq, payload=big))
                await asyncio.sleep(0)
            await asyncio.wait_for(reader, 30)
            assert got == list(range(1, 401)), "the reading agent got everything, in order"
            async with asyncio.timeout(30):
                while hub.connections("busy"):  # noqa: ASYNC110 - bounded poll of a count, test only
                    await asyncio.sleep(0.05)
            assert hub.slow_closed == 1 and hub.connections("ok") == 1
        stalled.close()
    finally:
        await runner.cleanup()


async def test_resume_sends_what_was_missed_once_then_the_live_events(aiohttp_client: Any) -> None:
    """Events published while the missed ones are read wait behind them; one that is both stored and
    queued (it was published between the socket's registration and the read) is sent once."""
    old = [Envelope(type="call.offered", agent="alice", seq=s) for s in (11, 12)]
    live = [Envelope(type="call.updated", agent="alice", seq=s) for s in (13, 14)]
    hub: WebSocketHub

    async def missed(agent: str, since: int) -> tuple[list[tuple[int, bytes]], bool]:
        assert (agent, since) == ("alice", 10)
        hub.publish(live[0])  # published meanwhile, and already stored
        stored = [*old, live[0]]
        hub.publish(live[1])  # published meanwhile, stored too late for this read
        return [(e.seq, e.body) for e in stored], True

    hub = WebSocketHub(agents={"alice"}, missed=missed)
    client = await _client(aiohttp_client, hub)
    async with client.ws_connect("/ws/agents/alice?since=10") as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello["resume"] == {"since": 10, "replayed": 3, "complete": True}
        got = [Envelope.from_json((await ws.receive(timeout=5)).data).seq for _ in range(4)]
        assert got == [11, 12, 13, 14]
        hub.publish(Envelope(type="call.ended", agent="alice", seq=15))
        assert Envelope.from_json((await ws.receive(timeout=5)).data).seq == 15


async def test_resume_without_history_says_incomplete_and_bad_since_is_refused(aiohttp_client: Any) -> None:
    async def broken(agent: str, since: int) -> tuple[list[tuple[int, bytes]], bool]:
        raise ConnectionError("redis away")

    hub = WebSocketHub(agents={"alice"}, missed=broken)
    client = await _client(aiohttp_client, hub)
    async with client.ws_connect("/ws/agents/alice?since=3") as ws:
        assert (await ws.receive_json(timeout=5))["resume"] == {"since": 3, "replayed": 0, "complete": False}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws/agents/alice?since=-1")
    assert refused.value.status == 400
