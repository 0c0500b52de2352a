"""Disposition codes agents set on their calls, kept in Redis a week with the call (reports and the
agent's list of today's calls read them): ``{prefix}call:{linkedid}:disposition``, agent id -> code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["RedisDispositions"]


class RedisDispositions:
    """``{prefix}call:{linkedid}:disposition``: agent id -> code, kept a week (reports read them)."""

    TTL_S = 7 * 24 * 3600

    def __init__(self, redis: Any, *, key_prefix: str = "cti:") -> None:
        self._redis = redis
        self._prefix = key_prefix

    def key(self, linkedid: str) -> str:
        return f"{self._prefix}call:{linkedid}:disposition"

    async def set(self, linkedid: str, agent_id: str, code: str) -> None:
        key = self.key(linkedid)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(key, agent_id, code)
        pipe.expire(key, self.TTL_S)
        await pipe.execute()

    async def of(self, linkedid: str) -> dict[str, str]:
        raw = await self._redis.hgetall(self.key(linkedid))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def of_agent(self, agent_id: str, linkedids: Sequence[str]) -> dict[str, str]:
        """The agent's code on each call that has one: one round trip for all of them."""
        if not linkedids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for linkedid in linkedids:
            pipe.hget(self.key(linkedid), agent_id)
        codes = await pipe.execute()
        return {linkedid: code.decode() if isinstance(code, bytes) else code
                for linkedid, code in zip(linkedids, codes, strict=True) if code is not None}
