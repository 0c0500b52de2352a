"""Push envelopes to agents' browsers over ``GET /ws/agents/{agent}``.

The same envelope as MQTT, one text frame each. ``publish`` never waits on a
client: each connection has its own bounded queue and writer task (inside the
connection's handler), so a client that stops reading only ever delays itself.
One that cannot take a frame within ``send_timeout``, or falls ``max_queue``
frames behind, is closed with 1013 (try again later); it reconnects and notices
the gap in ``seq``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Container, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from cti.push.envelope import VERSION, Envelope

__all__ = ["WS_PATH", "WebSocketHub"]

log = structlog.get_logger(__name__)

WS_PATH: Final = "/ws/agents/{agent}"
#: What an agent missed after a sequence number: the envelopes (seq, UTF-8 JSON) and whether that is all.
Missed = Callable[[str, int], Awaitable[tuple[list[tuple[int, bytes]], bool]]]
#: aiohttp's WebSocket writer waits only while the transport is paused (past its 64 KiB high-water
#: mark); a frame that leaves the buffer well below that is written at once and needs no timer.
_NO_WAIT_BELOW: Final = 32 * 1024


def _since(request: web.Request) -> int | None:
    """``?since=N``: the last ``seq`` the client saw; a bad value is the client's error (400)."""
    raw = request.query.get("since")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise web.HTTPBadRequest(text='{"error_id":"bad-since","message":"since must be a sequence number",'
                                 '"details":{}}', content_type="application/json")
    return int(raw)


def text_frame(body: bytes) -> bytes:
    """A final, unmasked text frame (RFC 6455 5.2) as a server sends it; no extension is negotiated
    (``compress=False``), so the frame is the header and the UTF-8 body."""
    n = len(body)
    if n < 126:
        return bytes((0x81, n)) + body
    if n < 1 << 16:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + body
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + body


@dataclass(eq=False, slots=True)
class _Conn:
    """One open socket: what is still to be sent to it, and the writer's wake-up."""

    agent: str
    ws: web.WebSocketResponse
    request: web.BaseRequest
    queue: deque[tuple[bytes, int]] = field(default_factory=deque)  # (UTF-8 JSON, seq)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False
    replaying: bool = False  # sending what it missed: live frames wait in the queue meanwhile


class WebSocketHub:
    """A :class:`~cti.push.notifier.Sink` holding every agent's open sockets.

    The ``Origin`` check guards against cross-site WebSocket hijacking: a browser
    page on another site cannot open an agent's socket. A request carrying an
    ``Origin`` must be same-origin (its host equals ``Host``) or listed in
    ``allowed_origins`` (a CRM page that embeds the client); non-browser clients
    send no ``Origin`` and are let through. ``authorize`` (the token check, which
    raises an HTTP error) runs before the upgrade; None lets everyone in.
    """

    def __init__(
        self,
        *,
        agents: Container[str],
        send_timeout: float = 5.0,
        max_queue: int = 1000,
        heartbeat: float = 20.0,
        allowed_origins: Collection[str] = (),
        authorize: Callable[[web.Request, str], Awaitable[object]] | None = None,
        missed: Missed | None = None,
        commands: Callable[[str, str], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._agents = agents  # the server's AgentRegistry: one list of agents for every part
        self._send_timeout = send_timeout
        self._max_queue = max_queue
        self._heartbeat = heartbeat
        self._origins = frozenset(o.rstrip("/") for o in allowed_origins)
        self._authorize = authorize
        self._missed = missed
        self._commands = commands
        self._conns: dict[str, set[_Conn]] = {}
        self.slow_closed = 0

    def routes(self) -> list[web.RouteDef]:
        return [web.get(WS_PATH, self.handle)]

    def add_routes(self, app: web.Application) -> None:
        """Mount the endpoint and close the sockets on shutdown (or the runner waits for them)."""
        app.add_routes(self.routes())
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, _app: web.Application) -> None:
        await self.close_all()

    def connections(self, agent: str | None = None) -> int:
        if agent is not None:
            return len(self._conns.get(agent, ()))
        return sum(len(s) for s in self._conns.values())

    def _origin_ok(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        return origin.rstrip("/") in self._origins or urlsplit(origin).netloc.lower() == request.host.lower()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        agent = request.match_info["agent"]
        if agent not in self._agents:
            return web.json_response({"error_id": "no-such-agent", "message": "unknown agent",
                                      "details": {"agent": agent}}, status=404)
        if not self._origin_ok(request):
            log.warning("ws.origin_refused", agent=agent, origin=request.headers.get("Origin"))
            return web.json_response({"error_id": "origin-not-allowed", "message": "origin not allowed",
                                      "details": {"origin": request.headers.get("Origin")}}, status=403)
        if self._authorize is not None:
            await self._authorize(request, agent)
        since = _since(request)
        # No permessage-deflate: a pop is a couple of KiB on a LAN, and zlib per frame per socket would be
        # the biggest cost of a push (browsers always offer it; aiohttp accepts it by default).
        ws = web.WebSocketResponse(heartbeat=self._heartbeat, compress=False)
        await ws.prepare(request)
        # Registered before the missed events are read, so nothing published meanwhile is lost; live
        # frames wait in its queue until the hello and the replay are out.
        conn = _Conn(agent, ws, request, replaying=True)
        self._conns.setdefault(agent, set()).add(conn)
        try:
            await self._hello(conn, since)
        except BaseException:
            self._forget(conn)
            raise
        log.info("ws.connected", agent=agent, peer=request.remote, sockets=self.connections(agent), since=since)
        try:
            async with asyncio.TaskGroup() as group:
                writer = group.create_task(self._writer(conn), name=f"cti.ws.writer.{agent}")
                async for msg in ws:
                    if msg.type is WSMsgType.ERROR:
                        log.warning("ws.error", agent=agent, error=repr(ws.exception()))
                    elif msg.type is WSMsgType.TEXT and self._commands is not None:
                        # A command waits on Asterisk's reply: in its own task, so this socket's pings and
                        # next commands are read meanwhile. Its answer is a command.result envelope.
                        group.create_task(self._commands(agent, msg.data), name=f"cti.ws.command.{agent}")
                writer.cancel()
        finally:
            self._forget(conn)
            log.info("ws.disconnected", agent=agent, peer=request.remote, code=ws.close_code)
        return ws

    async def _hello(self, conn: _Conn, since: int | None) -> None:
        """The hello first, then (``?since=N``) every stored event after N, then the live ones not yet sent."""
        hello: dict[str, object] = {"type": "hello", "agent": conn.agent, "v": VERSION}
        frames: list[tuple[int, bytes]] = []
        if since is not None:
            complete = False
            if self._missed is not None:
                try:
                    frames, complete = await self._missed(conn.agent, since)
                except Exception as exc:  # Redis away: the client is told to re-read its snapshot
                    log.warning("ws.resume_failed", agent=conn.agent, since=since, error=repr(exc))
            hello["resume"] = {"since": since, "replayed": len(frames), "complete": complete}
        await conn.ws.send_json(hello)
        last = since or 0
        for seq, body in frames:
            await conn.ws.send_frame(body, WSMsgType.TEXT)
            last = max(last, seq)
        conn.queue = deque(item for item in conn.queue if item[1] > last)
        conn.replaying = False
        conn.ready.set()

    def _forget(self, conn: _Conn) -> None:
        conns = self._conns.get(conn.agent)
        if conns is None:
            return
        conns.discard(conn)
        if not conns:
            del self._conns[conn.agent]

    def publish(self, envelope: Envelope) -> None:
        """Queue the frame for each of the agent's sockets; never waits on a client."""
        conns = self._conns.get(envelope.agent)
        if not conns:
            return
        text = envelope.body
        for conn in list(conns):
            if conn.closing:
                continue
            if len(conn.queue) >= self._max_queue:
                log.warning("ws.slow_client_closed", agent=conn.agent, seq=envelope.seq, queued=len(conn.queue),
                            why="queue_full")
                self._close_slow(conn)
                continue
            if not conn.queue and not conn.replaying and self._write_now(conn, text):
                continue
            conn.queue.append((text, envelope.seq))
            conn.ready.set()

    @staticmethod
    def _write_now(conn: _Conn, body: bytes) -> bool:
        """With nothing queued before it and room in the socket's buffer, write the frame here: no
        writer wake-up and no trip through aiohttp's async frame writer, the bulk of a push's cost.
        Otherwise (a backlog, a slow client) the writer task sends it, with its timeout."""
        transport = conn.request.transport
        if (transport is None or transport.is_closing() or conn.ws.closed
                or transport.get_write_buffer_size() + len(body) >= _NO_WAIT_BELOW):
            return False
        transport.write(text_frame(body))
        return True

    async def _writer(self, conn: _Conn) -> None:
        """Send the connection's frames in order; a frame not taken in time closes it."""
        while True:
            if conn.closing:
                await self._close(conn, WSCloseCode.TRY_AGAIN_LATER, b"too slow")
                return
            if not conn.queue:
                conn.ready.clear()
                await conn.ready.wait()
                continue
            text, seq = conn.queue[0]
            try:
                transport = conn.request.transport
                if transport is not None and transport.get_write_buffer_size() + len(text) < _NO_WAIT_BELOW:
                    await conn.ws.send_frame(text, WSMsgType.TEXT)  # below aiohttp's drain limit: cannot block
                else:
                    async with asyncio.timeout(self._send_timeout):
                        await conn.ws.send_frame(text, WSMsgType.TEXT)  # already UTF-8: no decode and re-encode
            except TimeoutError:
                log.warning("ws.slow_client_closed", agent=conn.agent, seq=seq, queued=len(conn.queue),
                            why="send_timeout")
                self._close_slow(conn)
                continue
            except (ConnectionError, RuntimeError) as exc:  # closed under us / closing
                log.info("ws.send_failed", agent=conn.agent, seq=seq, error=repr(exc))
                return
            conn.queue.popleft()

    def _close_slow(self, conn: _Conn) -> None:
        """Close with 1013 a client that does not keep up; its writer does the closing."""
        conn.closing = True
        conn.queue.clear()
        self.slow_closed += 1
        self._forget(conn)
        conn.ready.set()

    async def close_all(self) -> None:
        """App shutdown: tell every client we are going away (they reconnect to another server)."""
        conns = [conn for group in self._conns.values() for conn in group]
        await asyncio.gather(*(self._close(conn, WSCloseCode.GOING_AWAY, b"server shutdown") for conn in conns))

    async def _close(self, conn: _Conn, code: int, message: bytes) -> None:
        """A close frame, if the client takes it within a second; else the connection is cut."""
        conn.closing = True
        self._forget(conn)
        try:
            async with asyncio.timeout(1.0):
                await conn.ws.close(code=code, message=message)
        except (TimeoutError, ConnectionError, RuntimeError):
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
