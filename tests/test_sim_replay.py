"""ReplayServer streams a recording byte-exact, in small chunks, after answering Login."""

from __future__ import annotations

import asyncio

from cti.ami.codec import Decoder, encode_action
from cti.sim.replay import ReplayServer, split_capture
from tests.traces import trace_path

CAPTURE = trace_path("basic")
RAW = CAPTURE.read_bytes()


async def test_replay_byte_exact_in_chunks() -> None:
    greeting, recorded = split_capture(RAW)
    async with ReplayServer(path=CAPTURE, chunk_size=7, close_after=True) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(encode_action("Login", "x-1", {"Username": "cti", "Secret": "s"}))
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
    assert data.startswith(greeting)
    msgs = Decoder().feed(data)
    login = next(m for m in msgs if m.response)
    assert login.action_id == "x-1" and login["Message"] == "Authentication accepted"
    assert b"".join(recorded) in data
    assert not any(b.startswith(b"Response:") for b in recorded)
