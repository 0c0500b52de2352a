"""Push envelopes to agents' browsers over ``GET /ws/agents/{agent}``.

The same envelope as MQTT, one text frame each.  A client that cannot keep up
is closed rather than allowed to hold up the pop to everyone else; it reconnects
and notices the gap in ``seq``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Container
from typing import Final
from urllib.parse import urlsplit

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from cti.push.envelope import VERSION, Envelope

__all__ = ["WS_PATH", "WebSocketHub"]

log = structlog.get_logger(__name__)

WS_PATH: Final = "/ws/agents/{agent}"


class WebSocketHub:
    """A :class:`~cti.push.notifier.Sink` holding every agent's open sockets.

    ``allowed_origins`` guards against cross-site WebSocket hijacking: a browser
    page on another site cannot open an agent's socket.  When it is None, a
    request carrying an ``Origin`` must be same-origin (its host equals ``Host``);
    non-browser clients send no ``Origin`` and are let through.
    """

    def __init__(
        self,
        *,
        agents: Container[str],
        send_timeout: float = 5.0,
        heartbeat: float = 20.0,
        allowed_origins: Collection[str] | None = None,
    ) -> None:
        self._agents = agents  # the server's AgentRegistry: one list of agents for every part
        self._send_timeout = send_timeout
        self._heartbeat = heartbeat
        self._origins = frozenset(o.rstrip("/") for o in allowed_origins) if allowed_origins is not None else None
        self._sockets: dict[str, dict[web.WebSocketResponse, web.BaseRequest]] = {}

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
            return len(self._sockets.get(agent, ()))
        return sum(len(s) for s in self._sockets.values())

    def _origin_ok(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        if self._origins is not None:
            return origin.rstrip("/") in self._origins
        return urlsplit(origin).netloc.lower() == request.host.lower()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        agent = request.match_info["agent"]
        if agent not in self._agents:
            return web.json_response({"error_id": "no-such-agent", "message": "unknown agent",
                                      "details": {"agent": agent}}, status=404)
        if not self._origin_ok(request):
            log.warning("ws.origin_refused", agent=agent, origin=request.headers.get("Origin"))
            return web.json_response({"error_id": "origin-not-allowed", "message": "origin not allowed",
                                      "details": {"origin": request.headers.get("Origin")}}, status=403)
        ws = web.WebSocketResponse(heartbeat=self._heartbeat)
        await ws.prepare(request)
        await ws.send_json({"type": "hello", "agent": agent, "v": VERSION})
        # Registered after the hello, so the hello is always the first frame.
        self._sockets.setdefault(agent, {})[ws] = request
        log.info("ws.connected", agent=agent, peer=request.remote, sockets=self.connections(agent))
        try:
            async for msg in ws:
                if msg.type is WSMsgType.ERROR:
                    log.warning("ws.error", agent=agent, error=repr(ws.exception()))
                # Clients have nothing to tell us yet; text frames are ignored.
        finally:
            self._forget(agent, ws)
            log.info("ws.disconnected", agent=agent, peer=request.remote, code=ws.close_code)
        return ws

    def _forget(self, agent: str, ws: web.WebSocketResponse) -> web.BaseRequest | None:
        sockets = self._sockets.get(agent)
        if sockets is None:
            return None
        request = sockets.pop(ws, None)
        if not sockets:
            del self._sockets[agent]
        return request

    async def publish(self, envelope: Envelope) -> None:
        """Send to each of the agent's sockets concurrently; each send is bounded by ``send_timeout``."""
        sockets = list(self._sockets.get(envelope.agent, ()))
        if not sockets:
            return
        text = envelope.to_json()
        await asyncio.gather(*(self._send(envelope, ws, text) for ws in sockets))

    async def _send(self, envelope: Envelope, ws: web.WebSocketResponse, text: str) -> None:
        try:
            async with asyncio.timeout(self._send_timeout):
                await ws.send_str(text)
        except TimeoutError:
            log.warning("ws.slow_client_closed", agent=envelope.agent, seq=envelope.seq)
            await self._drop(envelope.agent, ws, WSCloseCode.TRY_AGAIN_LATER, b"too slow")
        except (ConnectionError, RuntimeError) as exc:  # closed under us / closing
            log.info("ws.send_failed", agent=envelope.agent, seq=envelope.seq, error=repr(exc))
            await self._drop(envelope.agent, ws, WSCloseCode.GOING_AWAY, b"")

    async def _drop(self, agent: str, ws: web.WebSocketResponse, code: int, message: bytes) -> None:
        request = self._forget(agent, ws)
        try:
            async with asyncio.timeout(1.0):
                await ws.close(code=code, message=message)
        except (TimeoutError, ConnectionError, RuntimeError):
            # A client too slow to take a frame will not take a close frame either.
            transport = request.transport if request is not None else None
            if transport is not None:
                transport.abort()

    async def close_all(self) -> None:
        """App shutdown: tell every client we are going away (they reconnect to another server)."""
        pairs = [(agent, ws) for agent, sockets in self._sockets.items() for ws in sockets]
        await asyncio.gather(*(self._drop(agent, ws, WSCloseCode.GOING_AWAY, b"server shutdown")
                               for agent, ws in pairs))
