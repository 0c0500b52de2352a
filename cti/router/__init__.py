"""Skills-based routing state in Redis: the pure core's decisions (:mod:`routing`), made and
reserved atomically by Lua scripts so that several servers sharing one Redis never double-assign."""

from cti.router.store import MAX_MS, RouterStore

__all__ = ["MAX_MS", "RouterStore"]
