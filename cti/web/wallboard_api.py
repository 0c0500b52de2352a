"""The supervisors' view: ``GET /api/kpis`` (the board as JSON), ``/ws/wallboard`` (the board pushed on
every change) and the ``/wallboard`` page. Agents' tokens are refused: the board names every agent."""

from __future__ import annotations

from aiohttp import web

from cti.auth.web import require
from cti.kpi.live import KpiService
from cti.web.routes import STATIC

__all__ = ["kpi_routes"]


def kpi_routes(kpis: KpiService) -> list[web.RouteDef]:
    async def api_kpis(request: web.Request) -> web.Response:
        await require(request, "supervisor", "admin")
        return web.json_response(kpis.board())

    async def board_socket(request: web.Request) -> web.WebSocketResponse:
        await require(request, "supervisor", "admin")
        return await kpis.serve_board(request)

    async def wallboard_page(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "wallboard.html")  # the page asks for a token before any data

    return [web.get("/api/kpis", api_kpis), web.get("/ws/wallboard", board_socket),
            web.get("/wallboard", wallboard_page)]
