"""The facts the KPI book counts, kept in Redis for the day so a restart does not zero the wallboard.

Each fact has an id made from what it is about (``v:{linkedid}:{segment}``, ``h:{linkedid}:{hold}``,
``t:…`` for talk, ``w:…`` for a wrap-up, ``a:{linkedid}`` for an arrival), so the same fact told
twice (a restored call's segments counted again, two servers watching the same Asterisk) is one
fact: ``HSETNX`` in Redis, a set of the loaded ids in memory. A local day is one hash,
``{prefix}kpi:facts:{YYYY-MM-DD}``, kept for a few days; a starting server tells its book the facts
of today and of the rolling window.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import redis.asyncio as aioredis

from cti.kpi.book import Dim, KpiBook, VisitEnd
from cti.kpi.wrapups import WrapUp

__all__ = ["Arrived", "Fact", "Handled", "RedisFacts", "decode", "encode", "tell"]

KEEP_DAYS = 3


@dataclass(frozen=True, slots=True)
class Handled:
    dims: tuple[Dim, ...]
    at: float
    talk_s: float


@dataclass(frozen=True, slots=True)
class Arrived:
    at: float
    repeat: bool


Fact = VisitEnd | Handled | WrapUp | Arrived


def tell(book: KpiBook, fact: Fact) -> None:
    if isinstance(fact, VisitEnd):
        book.visit_ended(fact)
    elif isinstance(fact, Handled):
        book.handled(fact.dims, fact.at, fact.talk_s)
    elif isinstance(fact, WrapUp):
        book.wrapped_up(fact.dims, fact.at, fact.wrap_s)
    else:
        book.arrived(fact.at, repeat=fact.repeat)


def encode(fact: Fact) -> bytes:
    if isinstance(fact, VisitEnd):
        body: dict[str, Any] = {"k": "v", "q": fact.queue, "at": fact.at, "o": fact.outcome, "w": fact.wait_s,
                                "r": fact.reason, "t": fact.tier, "e": fact.entry, "s": fact.skills}
    elif isinstance(fact, Handled):
        body = {"k": "t", "d": fact.dims, "at": fact.at, "s": fact.talk_s}
    elif isinstance(fact, WrapUp):
        body = {"k": "w", "d": fact.dims, "at": fact.at, "s": fact.wrap_s}
    else:
        body = {"k": "a", "at": fact.at, "r": fact.repeat}
    return orjson.dumps(body)


def decode(raw: bytes | str) -> Fact:
    """Raises ``ValueError`` for what :func:`encode` did not write."""
    try:
        f = orjson.loads(raw)
        kind, at = f["k"], float(f["at"])
        if kind == "v":
            return VisitEnd(queue=f["q"], at=at, outcome=f["o"], wait_s=float(f["w"]), reason=f["r"], tier=f["t"],
                            entry=f["e"], skills=tuple(f["s"]))
        if kind in ("t", "w"):
            dims = tuple((str(k), str(v)) for k, v in f["d"])
            return Handled(dims, at, float(f["s"])) if kind == "t" else WrapUp(dims, at, float(f["s"]))
        if kind == "a":
            return Arrived(at, bool(f["r"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a KPI fact: {exc}") from exc
    raise ValueError(f"not a KPI fact: kind {kind!r}")


class RedisFacts:
    def __init__(self, redis: aioredis.Redis, *, key_prefix: str, timezone: str) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}kpi:facts:"
        self._zone = ZoneInfo(timezone)

    def key(self, at: float) -> str:
        return self._prefix + datetime.fromtimestamp(at, self._zone).date().isoformat()

    async def save(self, facts: Iterable[tuple[str, Fact]]) -> None:
        """Each fact under its day, unless that day has it already."""
        keys = set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for fact_id, fact in facts:
                key = self.key(fact.at)
                keys.add(key)
                pipe.hsetnx(key, fact_id, encode(fact))
            for key in keys:
                pipe.expire(key, KEEP_DAYS * 86400)
            await pipe.execute()

    async def load(self, since: float, until: float) -> tuple[list[tuple[str, Fact]], int]:
        """The facts of the days from ``since`` to ``until`` (and how many could not be read)."""
        keys = []
        at = since
        while True:
            key = self.key(at)
            if key not in keys:
                keys.append(key)
            if at >= until:
                break
            at = min(until, at + 6 * 3600)
        out, bad = [], 0
        for key in keys:
            async for fact_id, raw in self._redis.hscan_iter(key, count=1000):
                try:
                    out.append((fact_id.decode() if isinstance(fact_id, bytes) else fact_id, decode(raw)))
                except ValueError:
                    bad += 1
        return out, bad
