"""Config versions (the routing config's, each IVR flow's) and the audit log, in Redis: shared by
every server of the call centre.

``{prefix}admin:routing:versions`` (``{prefix}admin:ivr:{flow}:versions`` for a flow) maps a version
number to its record (the config as JSON data, who made it, when, why, which version it was edited
from); ``…:seq`` numbers them; ``…:active`` names the one in force. Versions are never changed or
deleted: a rollback activates an older one again. ``{prefix}admin:audit`` is a stream of every change
and every forced agent state (about the last 10,000 kept).
"""

from __future__ import annotations

import difflib
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

__all__ = ["AuditLog", "ConfigVersions", "Version", "diff_text"]

AUDIT_MAXLEN = 10_000


@dataclass(frozen=True, slots=True)
class Version:
    version: int
    config: dict[str, Any]
    author: str
    at: float
    comment: str = ""
    parent: int | None = None

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        del data["config"]
        return data


class ConfigVersions:
    def __init__(self, redis: aioredis.Redis, *, key_prefix: str, kind: str = "routing") -> None:
        self._redis = redis
        self._key = f"{key_prefix}admin:{kind}:"

    async def add(self, config: dict[str, Any], *, author: str, comment: str = "", parent: int | None = None,
                  at: float | None = None) -> Version:
        number = int(await self._redis.incr(self._key + "seq"))
        version = Version(number, config, author, time.time() if at is None else at, comment, parent)
        await self._redis.hset(self._key + "versions", str(number), orjson.dumps(asdict(version)))
        return version

    async def get(self, number: int) -> Version | None:
        raw = await self._redis.hget(self._key + "versions", str(number))
        return None if raw is None else Version(**orjson.loads(raw))

    async def all(self) -> list[Version]:
        raw = await self._redis.hgetall(self._key + "versions")
        return sorted((Version(**orjson.loads(v)) for v in raw.values()), key=lambda v: v.version)

    async def active(self) -> int | None:
        raw = await self._redis.get(self._key + "active")
        return None if raw is None else int(raw)

    async def activate(self, number: int) -> None:
        await self._redis.set(self._key + "active", str(number))


class AuditLog:
    def __init__(self, redis: aioredis.Redis, *, key_prefix: str) -> None:
        self._redis = redis
        self._key = f"{key_prefix}admin:audit"

    async def record(self, *, who: str, role: str, action: str, **detail: Any) -> None:
        entry = {"at": time.time(), "who": who, "role": role, "action": action, "detail": detail}
        await self._redis.xadd(self._key, {"entry": orjson.dumps(entry)}, maxlen=AUDIT_MAXLEN, approximate=True)

    async def recent(self, count: int = 200) -> list[dict[str, Any]]:
        """Newest first."""
        rows: Any = await self._redis.xrevrange(self._key, count=count)
        out = []
        for entry_id, fields in rows:
            raw = fields.get(b"entry", fields.get("entry"))
            out.append({"id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id, **orjson.loads(raw)})
        return out


def diff_text(before: str, after: str, from_name: str, to_name: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        from_name, to_name))
