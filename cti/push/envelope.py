"""The one JSON envelope every push transport carries, and where its sequence numbers come from.

Clients dedupe on ``id`` (MQTT QoS 1 may deliver twice; a client may hold both an
MQTT and a WebSocket subscription) and detect gaps on ``seq``, which counts per
agent.  The counter lives in Redis so it survives restarts and is shared by
several servers pushing to the same agent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import redis.asyncio as aioredis

__all__ = ["VERSION", "Envelope", "EnvelopeError", "MemorySequencer", "RedisSequencer", "Sequencer", "utc_now_iso"]

VERSION: Final = 1


class EnvelopeError(ValueError):
    """A message that is not a version-1 envelope."""


def utc_now_iso() -> str:
    """ISO-8601 UTC with milliseconds and ``Z``: sorts as text and parses everywhere."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Envelope:
    type: str
    agent: str
    seq: int
    payload: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ts: str = field(default_factory=utc_now_iso)
    v: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "id": self.id, "seq": self.seq, "ts": self.ts, "type": self.type,
                "agent": self.agent, "payload": self.payload}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Envelope:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise EnvelopeError(f"not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise EnvelopeError("an envelope is a JSON object")
        if data.get("v") != VERSION:
            raise EnvelopeError(f"unsupported envelope version {data.get('v')!r}")
        kinds: dict[str, type | tuple[type, ...]] = {
            "id": str, "seq": int, "ts": str, "type": str, "agent": str, "payload": dict,
        }
        for name, kind in kinds.items():
            value = data.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise EnvelopeError(f"field {name!r} is missing or not a {getattr(kind, '__name__', kind)}")
        return cls(type=data["type"], agent=data["agent"], seq=data["seq"], payload=data["payload"],
                   id=data["id"], ts=data["ts"], v=VERSION)


class Sequencer(Protocol):
    async def next(self, agent: str) -> int:
        """The agent's next sequence number: 1, 2, 3, ..."""
        ...

    async def next_many(self, agents: Sequence[str]) -> list[int]:
        """One number per entry, in order (an agent may appear several times)."""
        ...


class MemorySequencer:
    """Per-process counters: unit tests and running without Redis (restarts begin at 1 again)."""

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}

    async def next(self, agent: str) -> int:
        value = self._counters.get(agent, 0) + 1
        self._counters[agent] = value
        return value

    async def next_many(self, agents: Sequence[str]) -> list[int]:
        return [await self.next(agent) for agent in agents]


class RedisSequencer:
    """``INCR {prefix}agent:{agent}:seq``: atomic, so servers sharing Redis never hand out a number twice."""

    def __init__(self, redis: aioredis.Redis, *, key_prefix: str = "cti:") -> None:
        self._redis = redis
        self._prefix = key_prefix

    def key(self, agent: str) -> str:
        return f"{self._prefix}agent:{agent}:seq"

    async def next(self, agent: str) -> int:
        return int(await self._redis.incr(self.key(agent)))

    async def next_many(self, agents: Sequence[str]) -> list[int]:
        """Every INCR in one round trip: a burst of pops costs one wait on Redis, not one each."""
        pipe = self._redis.pipeline(transaction=False)
        for agent in agents:
            pipe.incr(self.key(agent))
        return [int(v) for v in await pipe.execute()]
