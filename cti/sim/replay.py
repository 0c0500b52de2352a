"""Serve a recorded AMI capture to a client, byte-exact, for tests of the real client and model.

The capture's own ``Response:`` messages belonged to the recording client and are
dropped; the client's Login/Events/other actions get fresh Success replies, which
are only ever written between recorded messages so the framing stays intact even
while the recording is streamed in small chunks (to exercise split reads).
"""

from __future__ import annotations

import asyncio
import bisect
from pathlib import Path

import structlog

from cti.ami.codec import Decoder, Message, ProtocolError
from cti.sim.listener import TcpListener

__all__ = ["ReplayServer", "split_capture"]

log = structlog.get_logger(__name__)


def split_capture(raw: bytes) -> tuple[bytes, list[bytes]]:
    """(greeting line with its line end, raw bytes of each recorded non-Response message with its separator)."""
    nl = raw.find(b"\n")
    if nl < 0:
        raise ValueError("capture has no greeting line")
    greeting, rest = raw[: nl + 1], raw[nl + 1 :]
    sep = b"\r\n\r\n" if greeting.endswith(b"\r\n") else b"\n\n"
    messages: list[bytes] = []
    pos = 0
    while pos < len(rest):
        end = rest.find(sep, pos)
        end = len(rest) if end < 0 else end + len(sep)
        block = rest[pos:end]
        pos = end
        if not block.strip(b"\r\n"):
            continue
        if not block.lstrip(b"\r\n").startswith(b"Response:"):
            messages.append(block)
    return greeting, messages


class ReplayServer(TcpListener):
    """``async with ReplayServer(path=...) as srv:`` then connect to ``srv.port``; one replay per connection."""

    def __init__(
        self,
        *,
        path: Path | str,
        host: str = "127.0.0.1",
        port: int = 0,
        chunk_size: int = 4096,
        interval: float = 0.0,
        close_after: bool = False,
    ) -> None:
        super().__init__(host=host, port=port)
        self.greeting, self.messages = split_capture(Path(path).read_bytes())
        self.chunk_size = max(1, chunk_size)
        self.interval = interval
        self.close_after = close_after
        self.finished = asyncio.Event()  # set when a connection has streamed the whole capture

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _ReplaySession(self, reader, writer).run()


class _ReplaySession:
    def __init__(self, server: ReplayServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.logged_in = asyncio.Event()
        self.streaming = False
        self.pending: list[bytes] = []

    async def run(self) -> None:
        self.writer.write(self.server.greeting)
        async with asyncio.TaskGroup() as tg:
            reading = tg.create_task(self._read_actions(), name="replay-read")
            await self._stream()
            if self.server.close_after:
                reading.cancel()
                return

    def _reply(self, data: bytes) -> None:
        if self.streaming:
            self.pending.append(data)  # written at the next message boundary
        else:
            self.writer.write(data)

    async def _read_actions(self) -> None:
        decoder = Decoder(expect_greeting=False)
        while True:
            data = await self.reader.read(65536)
            if not data:
                self.writer.transport.abort()
                return
            try:
                messages = decoder.feed(data)
            except ProtocolError:
                self.writer.transport.abort()
                return
            for msg in messages:
                fields = {k.lower(): v for k, v in msg.fields.items()}
                action = fields.get("action", "").lower()
                reply = {"Response": "Success"}
                if "actionid" in fields:
                    reply["ActionID"] = fields["actionid"]
                if action == "login":
                    reply["Message"] = "Authentication accepted"
                elif action == "events":
                    reply["Events"] = "Off" if fields.get("eventmask", "on").lower() == "off" else "On"
                elif action == "ping":
                    reply.update(Ping="Pong", Timestamp="0.000000")
                elif action == "logoff":
                    reply = {"Response": "Goodbye", **{k: v for k, v in reply.items() if k == "ActionID"}}
                    reply["Message"] = "Thanks for all the fish."
                self._reply(Message(fields=reply).encode())
                if action == "login":
                    self.logged_in.set()

    async def _stream(self) -> None:
        await self.logged_in.wait()
        data = b"".join(self.server.messages)
        bounds: list[int] = []
        pos = 0
        for m in self.server.messages:
            pos += len(m)
            bounds.append(pos)
        self.streaming = True
        pos, size = 0, self.server.chunk_size
        while pos < len(data):
            end = pos + size
            if self.pending:
                nxt = bounds[bisect.bisect_left(bounds, pos)] if pos < len(data) else pos
                if pos == 0 or pos in _boundary_set(bounds, pos):
                    self.writer.write(b"".join(self.pending))
                    self.pending.clear()
                else:
                    end = min(end, nxt)
            self.writer.write(data[pos:end])
            pos = min(end, len(data))
            await self.writer.drain()
            await asyncio.sleep(self.server.interval)
        self.streaming = False
        if self.pending:
            self.writer.write(b"".join(self.pending))
            self.pending.clear()
        await self.writer.drain()
        self.server.finished.set()


def _boundary_set(bounds: list[int], pos: int) -> tuple[int, ...]:
    i = bisect.bisect_left(bounds, pos)
    return (bounds[i],) if i < len(bounds) and bounds[i] == pos else ()
