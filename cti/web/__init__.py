"""HTTP edge: agent console pages, the live overview, JSON state, health and metrics."""

from cti.web.routes import build_web_app

__all__ = ["build_web_app"]
