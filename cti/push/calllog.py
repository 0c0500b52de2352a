"""Today's calls per agent: what each agent handled or missed, by local day, with their dispositions.

:class:`CallLog` is a :class:`~cti.push.notifier.Sink` like :class:`~cti.push.history.AgentViews`: it
sees every published envelope (the payload dict, never re-parsed) and, for the two that close an
agent's part of a call, makes a small record (:func:`call_record`) and buffers it; its :meth:`~CallLog.run`
task writes the buffer to Redis behind the pushes, one pipelined round trip per gathering.

What is recorded, per agent:

* ``call.ended`` (the agent's part of a call is over): ``outcome`` ``answered``, with the agent's own
  part of the call: ``answered_at`` and ``talk_s`` of the agent's segment, ``queue`` the queue they
  answered from (the call's first queue when they took it by a direct hand-off). ``reason`` is the
  event's (``hangup``, ``gone_at_resync``).
* ``reason: transferred``: the agent talked to the caller and handed the call on. It is their call
  (their talk time, their disposition), recorded with ``outcome: transferred``; whoever receives it
  records their own part when it ends, so a transferred call shows once for each agent who took it.
* ``reason: merged`` is **not** recorded: that is the consult call of an attended transfer (agent A
  dialled B), folded into the caller's call, which B then gets as ``call.offered`` + ``call.answered``
  and records when it ends. Recording the consult too would show B the same conversation twice, the
  second time with A's extension as the caller.
* ``call.offer_withdrawn`` with ``reason: ring_no_answer``: a missed offer, ``outcome: missed``. Other
  withdrawals (answered elsewhere, the caller hung up, left the queue) are not the agent's to show.

``offered_at`` is when the offer to this agent was published (the server's clock; the call's first
offer to anyone after a restart), ``ended_at`` the end of the agent's part (``answered_at + talk_s``;
the withdrawal for a missed offer). The **day** of a record is the local date of ``ended_at`` in
``history.timezone``.

Storage: ``{prefix}agent:{agent}:calls:{YYYY-MM-DD}``, a hash of envelope id -> record JSON, expiring
:data:`KEEP_DAYS` days after its last write, so a day can be read for at least :data:`KEEP_DAYS` days
(today and the two before). A hash rather than a list because a write that timed out may have reached
Redis: retried, it overwrites the same fields instead of adding a record twice. While Redis does not
answer, records wait in a bounded buffer (:data:`MAX_BUFFER`; when full the oldest is dropped, logged)
and are written when it is back; reads merge in the records still buffered, so a client that saw
``call.ended`` finds the call in the list at once.

Read (:meth:`CallLog.calls`): newest first; a missed offer of a call the agent then took is left out,
and several missed rings of one call show once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

import orjson
import structlog
from redis.exceptions import RedisError

from cti.dispositions import RedisDispositions
from cti.push.envelope import Envelope
from cti.supervise import raise_if_cancelling

__all__ = ["KEEP_DAYS", "RECORD_FIELDS", "CallLog", "CallStore", "Entry", "RedisCallStore", "call_record",
           "collapse", "day_of", "kept_days"]

log = structlog.get_logger(__name__)

RECORD_FIELDS: Final = ("linkedid", "caller", "caller_name", "customer_id", "customer_name", "queue", "offered_at",
                        "answered_at", "ended_at", "talk_s", "outcome", "reason")
#: Days a record can be read back: today and the two before.
KEEP_DAYS: Final = 3
TTL_S: Final = KEEP_DAYS * 24 * 3600
#: Records held while Redis is away (about ten minutes at 100 calls/s, a few MB).
MAX_BUFFER: Final = 50_000
MAX_BATCH: Final = 1000
#: The writer gathers this long after the first record, so a busy minute costs few round trips.
GATHER_S: Final = 0.1
RETRY_S: Final = 0.5
WRITE_TIMEOUT_S: Final = 2.0
#: At shutdown the buffer gets this long to reach Redis.
STOP_FLUSH_S: Final = 1.0
#: Offers remembered for their ring time; a server that missed their end forgets the oldest.
MAX_RINGING: Final = 50_000

_OFFERED: Final = "call.offered"
_ENDED: Final = "call.ended"
_WITHDRAWN: Final = "call.offer_withdrawn"
_WATCHED: Final = frozenset({_OFFERED, _ENDED, _WITHDRAWN})


_NUMBER: Final = (int, float)


def _num(value: Any) -> float | None:
    return value if isinstance(value, _NUMBER) and value is not True and value is not False else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _agent_segment(segments: Any, agent: str) -> Mapping[str, Any] | None:
    """The agent's latest segment of the call: the part that just ended."""
    if isinstance(segments, list):
        for seg in reversed(segments):
            if isinstance(seg, dict) and seg.get("agent_id") == agent:
                return seg
    return None


def call_record(kind: str, agent: str, payload: Mapping[str, Any], *, now: float,
                rang_at: float | None = None) -> dict[str, Any] | None:
    """The record an envelope adds to the agent's calls (module docstring), or None.

    ``now`` is when it was published (a missed offer's end); ``rang_at`` when the offer to this agent
    was published, if known."""
    if kind == _ENDED:
        reason = payload.get("reason")
        if reason == "merged":
            return None
        seg = _agent_segment(payload.get("segments"), agent)
        if seg is not None:
            answered_at = _num(seg.get("left_at")) if seg.get("outcome") in ("answered", "transferred") else None
            talk_s = _num(seg.get("talk_s"))
            queue = _str(seg.get("queue")) or _str(payload.get("queue"))
        else:
            answered_at, talk_s, queue = _num(payload.get("answered_at")), None, _str(payload.get("queue"))
        if answered_at is not None and talk_s is not None:
            ended_at: float = round(answered_at + talk_s, 3)
        else:
            ended_at = _num(payload.get("ended_at")) or now
        outcome = "transferred" if reason == "transferred" else "answered"
    elif kind == _WITHDRAWN and payload.get("reason") == "ring_no_answer":
        reason, answered_at, talk_s, ended_at, outcome = "ring_no_answer", None, None, now, "missed"
        queue = _str(payload.get("current_queue")) or _str(payload.get("queue"))
    else:
        return None
    customer = payload.get("customer")
    if not isinstance(customer, dict):
        customer = {}
    customer_id = customer.get("id")
    return {
        "linkedid": payload.get("linkedid"),
        "caller": _str(payload.get("caller")),
        "caller_name": _str(payload.get("caller_name")),
        "customer_id": customer_id if isinstance(customer_id, str | int) and not isinstance(customer_id, bool)
        else None,
        "customer_name": _str(customer.get("name")),
        "queue": queue,
        "offered_at": rang_at if rang_at is not None else _num(payload.get("offered_at")),
        "answered_at": answered_at,
        "ended_at": ended_at,
        "talk_s": talk_s,
        "outcome": outcome,
        "reason": _str(reason),
    }


def day_of(ts: float, zone: ZoneInfo) -> str:
    """``YYYY-MM-DD``: the local date of an epoch time in ``zone``."""
    return datetime.fromtimestamp(ts, zone).date().isoformat()


def kept_days(now: float, zone: ZoneInfo, keep: int = KEEP_DAYS) -> list[str]:
    """Today (in ``zone``) and the days before it that can still be read, newest first."""
    today = datetime.fromtimestamp(now, zone).date()
    return [(today - timedelta(days=i)).isoformat() for i in range(keep)]


def _newest_first(record: Mapping[str, Any]) -> tuple[float, str]:
    return -(_num(record.get("ended_at")) or 0.0), str(record.get("linkedid"))


def collapse(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Newest first. Every part an agent took stays; a missed offer goes when the agent took that call
    after all, and several missed rings of one call show once (the latest)."""
    ordered = sorted(records, key=_newest_first)
    taken = {r.get("linkedid") for r in ordered if r.get("outcome") != "missed"}
    missed: set[Any] = set()
    out: list[dict[str, Any]] = []
    for record in ordered:
        linkedid = record.get("linkedid")
        if record.get("outcome") == "missed":
            if linkedid in taken or linkedid in missed:
                continue
            missed.add(linkedid)
        out.append(dict(record))
    return out


@dataclass(frozen=True, slots=True)
class Entry:
    """One buffered record: ``n`` counts entries made, ``field`` is its id in the day's hash."""

    n: int
    agent: str
    day: str
    field: str
    record: dict[str, Any]


class CallStore(Protocol):
    async def write(self, entries: Sequence[Entry]) -> None: ...
    async def read(self, agent: str, day: str) -> dict[str, dict[str, Any]]: ...
    async def dispositions(self, agent: str, linkedids: Sequence[str]) -> dict[str, str]: ...


class RedisCallStore:
    """``{prefix}agent:{agent}:calls:{day}``: a hash, envelope id -> record JSON, expiring ``ttl_s`` after
    its last write. Dispositions are read where :class:`cti.dispositions.RedisDispositions` keeps them."""

    def __init__(self, redis: Any, *, key_prefix: str = "cti:", ttl_s: int = TTL_S) -> None:
        self.redis = redis
        self._prefix = key_prefix
        self._ttl = ttl_s
        self._dispositions = RedisDispositions(redis, key_prefix=key_prefix)

    def key(self, agent: str, day: str) -> str:
        return f"{self._prefix}agent:{agent}:calls:{day}"

    async def write(self, entries: Sequence[Entry]) -> None:
        """One round trip: an HSET and an EXPIRE per agent and day in the batch."""
        by_key: dict[str, dict[str, bytes]] = {}
        for entry in entries:
            by_key.setdefault(self.key(entry.agent, entry.day), {})[entry.field] = orjson.dumps(entry.record)
        pipe = self.redis.pipeline(transaction=False)
        for key, fields in by_key.items():
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self._ttl)
        await pipe.execute()

    async def read(self, agent: str, day: str) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(self.key(agent, day))
        return {(k.decode() if isinstance(k, bytes) else k): orjson.loads(v) for k, v in raw.items()}

    async def dispositions(self, agent: str, linkedids: Sequence[str]) -> dict[str, str]:
        return await self._dispositions.of_agent(agent, linkedids)


class CallLog:
    """The sink, the writer task (:meth:`run`) and the reader behind ``GET /api/agents/{id}/calls/today``."""

    def __init__(self, store: CallStore, *, timezone: str = "UTC", clock: Callable[[], float] = time.time,
                 max_buffer: int = MAX_BUFFER, gather_s: float = GATHER_S, retry_s: float = RETRY_S) -> None:
        self._store = store
        self.timezone = timezone
        self.zone = ZoneInfo(timezone)
        self._clock = clock
        self._max_buffer = max_buffer
        self._gather_s = gather_s
        self._retry_s = retry_s
        self._pending: deque[Entry] = deque()
        self._made = itertools.count(1)
        self._wakeup = asyncio.Event()
        self._rang: dict[tuple[str, str], float] = {}  # (agent, linkedid) -> when the offer was published
        self.dropped = 0  # records lost to a full buffer, since the last successful write
        self.failures = 0  # writes that failed, in all
        self._failing = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    # --- the sink: every envelope, in publish order --------------------------------------------------

    def publish(self, envelope: Envelope) -> None:
        kind = envelope.type
        if kind not in _WATCHED:
            return
        payload = envelope.payload
        linkedid = payload.get("linkedid")
        if not isinstance(linkedid, str):
            return
        key = (envelope.agent, linkedid)
        now = self._clock()
        if kind == _OFFERED:
            rang = self._rang
            rang.pop(key, None)  # re-inserted last: the oldest offers are the first forgotten
            rang[key] = now
            if len(rang) > MAX_RINGING:
                del rang[next(iter(rang))]
            return
        record = call_record(kind, envelope.agent, payload, now=now, rang_at=self._rang.pop(key, None))
        if record is None:
            return
        pending = self._pending
        if len(pending) >= self._max_buffer:
            lost = pending.popleft()
            self.dropped += 1
            if self.dropped == 1:
                log.error("calllog.buffer_full", buffered=len(pending), dropped_agent=lost.agent,
                          dropped_linkedid=lost.record.get("linkedid"),
                          effect="Redis is not taking agents' call records: the oldest are dropped")
        pending.append(Entry(next(self._made), envelope.agent, day_of(record["ended_at"], self.zone), envelope.id,
                             record))
        self._wakeup.set()

    # --- the writer ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Write what is buffered, gathered, a batch per round trip; while Redis fails, keep it and retry."""
        try:
            while True:
                raise_if_cancelling()
                if not self._pending:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    await asyncio.sleep(self._gather_s)
                    continue
                if not await self._write_batch():
                    await asyncio.sleep(self._retry_s)
        except asyncio.CancelledError:
            await self._flush_at_stop()
            raise

    async def _write_batch(self) -> bool:
        batch = list(itertools.islice(self._pending, MAX_BATCH))
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await self._store.write(batch)
        except (RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelling()
            self.failures += 1
            if not self._failing:
                self._failing = True
                log.error("calllog.write_failed", error=repr(exc), buffered=len(self._pending),
                          effect="agents' call records wait in memory until Redis takes them")
            return False
        last = batch[-1].n
        pending = self._pending
        while pending and pending[0].n <= last:  # what a full buffer dropped meanwhile is gone already
            pending.popleft()
        if self._failing or self.dropped:
            log.info("calllog.write_resumed", dropped=self.dropped, buffered=len(pending))
            self._failing, self.dropped = False, 0
        return True

    async def _flush_at_stop(self) -> None:
        """Best effort: what is buffered gets :data:`STOP_FLUSH_S` to reach Redis as the server stops."""
        if not self._pending:
            return
        try:
            async with asyncio.timeout(STOP_FLUSH_S):
                while self._pending and await self._write_batch():
                    pass
        except (TimeoutError, asyncio.CancelledError):
            pass
        if self._pending:
            log.warning("calllog.lost_at_stop", records=len(self._pending))

    # --- the reader ----------------------------------------------------------------------------------

    def kept_days(self) -> list[str]:
        """Today and the days before it that can be read, newest first."""
        return kept_days(self._clock(), self.zone)

    def today(self) -> str:
        return day_of(self._clock(), self.zone)

    async def calls(self, agent: str, day: str) -> list[dict[str, Any]]:
        """The agent's calls of ``day``, newest first, each with ``disposition`` (their code, or None)."""
        stored = await self._store.read(agent, day)
        for entry in self._pending:
            if entry.agent == agent and entry.day == day:
                stored.setdefault(entry.field, entry.record)
        records = collapse(stored.values())
        linkedids = list(dict.fromkeys(r["linkedid"] for r in records if isinstance(r.get("linkedid"), str)))
        codes = await self._store.dispositions(agent, linkedids)
        for record in records:
            linkedid = record.get("linkedid")
            record["disposition"] = codes.get(linkedid) if isinstance(linkedid, str) else None
        return records

