"""The one JSON envelope every push transport carries, and where its sequence numbers come from.

Clients dedupe on ``id`` (MQTT QoS 1 may deliver twice; a client may hold both an
MQTT and a WebSocket subscription) and detect gaps on ``seq``, which counts per
agent.  The counter lives in Redis so it survives restarts and is shared by
several servers pushing to the same agent.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from cti.supervise import raise_if_cancelling

__all__ = ["VERSION", "Envelope", "EnvelopeError", "MemorySequencer", "RedisSequencer", "Sequencer", "utc_now_iso"]

log = structlog.get_logger(__name__)

VERSION: Final = 1


class EnvelopeError(ValueError):
    """A message that is not a version-1 envelope."""


_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text


def utc_now_iso() -> str:
    """ISO-8601 UTC with milliseconds and ``Z``: sorts as text and parses everywhere.

    Formatted once a second; each call adds only the milliseconds (a ``datetime`` per envelope
    was a visible share of a push)."""
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((now - whole) * 1000):03d}Z"


def _id_source() -> Callable[[], str]:
    """32 hex digits, unique across processes and restarts: 64 random bits fixed per process, then
    a counter. As unique as ``uuid4().hex`` for deduping, without a system call per envelope."""
    prefix = os.urandom(8).hex()
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):016x}"


new_id = _id_source()


@dataclass(frozen=True, slots=True)
class Envelope:
    """Encoded once, when made: every transport sends the same ``body`` bytes (UTF-8 JSON).

    A payload that is not JSON (a set, bytes, a non-text key) raises :class:`EnvelopeError` here,
    where the code that built it is on the stack. Non-finite floats become ``null`` (orjson).
    """

    type: str
    agent: str
    seq: int
    payload: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    ts: str = field(default_factory=utc_now_iso)
    v: int = VERSION
    body: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            body = orjson.dumps(self.to_dict())
        except TypeError as exc:  # orjson.JSONEncodeError
            raise EnvelopeError(f"{self.type} for {self.agent}: payload is not JSON: {exc}") from None
        object.__setattr__(self, "body", body)

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "id": self.id, "seq": self.seq, "ts": self.ts, "type": self.type,
                "agent": self.agent, "payload": self.payload}

    def to_json(self) -> str:
        return self.body.decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> Envelope:
        try:
            data = orjson.loads(text)
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


#: Reserve a block of numbers per key (KEYS[i], ARGV[2i] numbers, at least ARGV[2i+1]) and return
#: each block's first number. Like INCRBY, except that a key Redis does not have starts at the
#: caller's floor (the clock in ms, ARGV[1]), not at 1, so a Redis that lost its data never hands
#: out a number again, and that a counter behind the numbers this server handed out while Redis was
#: away catches up with them.
_RESERVE = """
local floor = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local size, least = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local hi = redis.call('INCRBY', key, size)
  local lo = hi - size + 1
  local want = lo
  if lo == 1 and floor > want then want = floor end
  if least > want then want = least end
  if want ~= lo then redis.call('SET', key, want + size - 1) end
  out[i] = want
end
return out
"""
#: Numbers reserved per round trip and agent: one Redis call per this many pushes to an agent.
SEQ_BLOCK = 64
REDIS_WAIT_S = 1.0


class RedisSequencer:
    """Per-agent numbers from ``{prefix}agent:{agent}:seq``, atomic across servers sharing Redis.

    Numbers are reserved in blocks of ``block`` (one script call reserves a block for every agent of a
    batch that needs one), so most pushes wait on nothing: on this kind of machine a Redis round trip
    per push was a tenth of the server's CPU. The rest of a block is skipped when the server stops, so
    a client sees a jump after a restart, which it must treat as "may have missed events" anyway.

    They only ever go up. A missing key starts at the clock in milliseconds (``floor``), which is
    past any number handed out before unless an agent had more than a thousand events a second for
    its whole life. While Redis does not answer within ``wait`` seconds, an agent whose block is used
    up gets numbers from the same floor here (pops keep flowing) and Redis's counter is moved past
    them when it is back. The jump tells a client it may have missed events.
    """

    def __init__(self, redis: aioredis.Redis, *, key_prefix: str = "cti:",
                 floor: Callable[[], int] = lambda: int(time.time() * 1000), wait: float = REDIS_WAIT_S,
                 block: int = SEQ_BLOCK) -> None:
        if block < 1:
            raise ValueError("block must be at least 1")
        self._redis = redis
        self._prefix = key_prefix
        self._floor = floor
        self._wait = wait
        self._block = block
        self._script = redis.register_script(_RESERVE)
        self._last: dict[str, int] = {}  # the last number this server handed out, per agent
        self._end: dict[str, int] = {}  # the last number of the agent's reserved block
        self.local = 0  # numbers handed out while Redis was away
        self.reservations = 0  # script calls made

    def key(self, agent: str) -> str:
        return f"{self._prefix}agent:{agent}:seq"

    async def next(self, agent: str) -> int:
        return (await self.next_many([agent]))[0]

    def _left(self, agent: str) -> int:
        return self._end.get(agent, 0) - self._last.get(agent, 0) if agent in self._end else 0

    async def next_many(self, agents: Sequence[str]) -> list[int]:
        """One number per entry, in order; at most one Redis round trip, and none while blocks last."""
        # A new block for each agent whose block cannot number all its entries of this batch.
        sizes = {agent: max(self._block, count - self._left(agent))
                 for agent, count in Counter(agents).items() if self._left(agent) < count}
        starts: dict[str, int] = {}
        away = 0
        if sizes:
            floor = self._floor()
            args: list[int] = [floor]
            for agent, size in sizes.items():
                args += [size, self._last.get(agent, 0) + 1]
            try:
                async with asyncio.timeout(self._wait):
                    reply = await self._script(keys=[self.key(a) for a in sizes], args=args)
                starts = {agent: int(v) for agent, v in zip(sizes, reply, strict=True)}
                self.reservations += 1
            except (RedisError, OSError, TimeoutError) as exc:
                raise_if_cancelling()
                if not self.local:
                    log.error("push.sequence_local", error=repr(exc), why="Redis did not answer: numbering "
                              "locally from the clock until it does")
                away = floor
            else:
                if self.local:
                    log.info("push.sequence_redis_back", numbered_locally=self.local)
                    self.local = 0
        values = []
        for agent in agents:
            last = self._last.get(agent, 0)
            if self._left(agent) > 0:
                value = last + 1  # from the agent's block
            elif agent in starts:
                value = starts.pop(agent)
                self._end[agent] = value + sizes[agent] - 1
            else:  # Redis away and the block used up
                value = max(last + 1, away)
                self._end.pop(agent, None)
                self.local += 1
            self._last[agent] = value
            values.append(value)
        return values
