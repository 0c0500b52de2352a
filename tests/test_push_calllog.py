"""Agents' calls of the day: the record each closing envelope makes (pure), the sink and its writer
against real Redis, also while Redis is unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from cti.dispositions import RedisDispositions
from cti.push.calllog import (
    KEEP_DAYS,
    RECORD_FIELDS,
    TTL_S,
    CallLog,
    Entry,
    RedisCallStore,
    call_record,
    collapse,
    day_of,
    kept_days,
)
from cti.push.envelope import Envelope
from tests.e2e import eventually

# --- the pure part --------------------------------------------------------------------------------

_AGENTS = st.sampled_from(["alice", "bob", None])
_TIME = st.floats(1.6e9, 1.9e9, allow_nan=False)
_SEGMENT = st.fixed_dictionaries({
    "queue": st.sampled_from(["support", "sales", None]),
    "joined_at": _TIME,
    "left_at": st.none() | _TIME,
    "outcome": st.sampled_from(["answered", "transferred", "abandoned", "unanswered", None]),
    "agent_id": _AGENTS,
    "talk_s": st.none() | st.floats(0, 10_000, allow_nan=False),
})
_CUSTOMER = st.none() | st.fixed_dictionaries({"id": st.text(min_size=1, max_size=8), "name": st.text(max_size=8)})
_PAYLOAD = st.fixed_dictionaries({
    "linkedid": st.text(min_size=1, max_size=12),
    "caller": st.none() | st.text(max_size=16),
    "caller_name": st.none() | st.text(max_size=16),
    "queue": st.sampled_from(["support", None]),
    "current_queue": st.sampled_from(["sales", None]),
    "offered_at": st.none() | _TIME,
    "answered_at": st.none() | _TIME,
    "ended_at": st.none() | _TIME,
    "segments": st.lists(_SEGMENT, max_size=4),
    "customer": _CUSTOMER,
    "reason": st.sampled_from(["hangup", "transferred", "merged", "gone_at_resync", "ring_no_answer",
                               "answered_elsewhere", "caller_abandoned"]),
})
_KINDS = st.sampled_from(["call.ended", "call.offer_withdrawn", "call.offered", "call.answered", "call.updated",
                          "agent.state", "command.result"])


@given(_KINDS, st.sampled_from(["alice", "bob"]), _PAYLOAD, _TIME, st.none() | _TIME)
def test_a_record_is_made_only_for_a_part_that_ended_or_a_missed_ring(
        kind: str, agent: str, payload: dict[str, Any], now: float, rang_at: float | None) -> None:
    record = call_record(kind, agent, payload, now=now, rang_at=rang_at)
    reason = payload["reason"]
    if kind == "call.ended" and reason != "merged":
        assert record is not None
        assert record["outcome"] == ("transferred" if reason == "transferred" else "answered")
        mine = [s for s in payload["segments"] if s["agent_id"] == agent]
        if mine:
            assert record["talk_s"] == mine[-1]["talk_s"], "the agent's own part, not the whole call's"
            assert record["queue"] == (mine[-1]["queue"] or payload["queue"])
        if record["answered_at"] is not None and record["talk_s"] is not None:
            assert record["ended_at"] >= record["answered_at"]
    elif kind == "call.offer_withdrawn" and reason == "ring_no_answer":
        assert record is not None
        assert (record["outcome"], record["answered_at"], record["talk_s"], record["ended_at"]) == (
            "missed", None, None, now)
        assert record["queue"] == (payload["current_queue"] or payload["queue"])
    else:
        assert record is None, "merged consult legs, other withdrawals and other types add nothing"
        return
    assert tuple(record) == RECORD_FIELDS
    assert record["linkedid"] == payload["linkedid"] and record["caller"] == payload["caller"]
    assert record["offered_at"] == (rang_at if rang_at is not None else payload["offered_at"])
    customer = payload["customer"] or {}
    assert (record["customer_id"], record["customer_name"]) == (customer.get("id"), customer.get("name"))
    assert orjson.loads(orjson.dumps(record)) == record


_RECORDS = st.lists(st.fixed_dictionaries({
    "linkedid": st.sampled_from(["c1", "c2", "c3", "c4"]),
    "outcome": st.sampled_from(["answered", "transferred", "missed"]),
    "ended_at": st.floats(0, 100, allow_nan=False),
}), max_size=20)


@given(_RECORDS)
def test_collapse_keeps_every_part_taken_and_one_missed_ring_per_call_not_taken(records: list[dict[str, Any]]) -> None:
    shown = collapse(records)
    assert [r["ended_at"] for r in shown] == sorted((r["ended_at"] for r in shown), reverse=True), "newest first"
    taken = [r for r in records if r["outcome"] != "missed"]
    assert sorted(map(repr, (r for r in shown if r["outcome"] != "missed"))) == sorted(map(repr, taken))
    missed = [r["linkedid"] for r in shown if r["outcome"] == "missed"]
    assert len(missed) == len(set(missed)), "several rings of one call show once"
    assert set(missed) == {r["linkedid"] for r in records if r["outcome"] == "missed"} - {
        r["linkedid"] for r in taken}, "a call the agent took after missing a ring shows as taken only"
    for linkedid in missed:  # the latest ring
        assert max(r["ended_at"] for r in shown if r["linkedid"] == linkedid) == max(
            r["ended_at"] for r in records if r["linkedid"] == linkedid and r["outcome"] == "missed")


_ZONES = st.sampled_from(["UTC", "Asia/Shanghai", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham",
                          "America/Santiago", "Asia/Kathmandu"])


@given(st.floats(0, 4e9, allow_nan=False), _ZONES)
def test_the_day_is_the_local_date_in_the_zone_and_the_kept_days_count_back_from_it(ts: float, zone: str) -> None:
    tz = ZoneInfo(zone)
    local = datetime.fromtimestamp(ts, UTC).astimezone(tz)
    assert day_of(ts, tz) == local.date().isoformat()
    days = kept_days(ts, tz)
    assert days[0] == day_of(ts, tz) and len(days) == KEEP_DAYS == len(set(days))
    assert all(datetime.fromisoformat(a).toordinal() - datetime.fromisoformat(b).toordinal() == 1
               for a, b in itertools.pairwise(days))


# --- the sink, on a store in memory -----------------------------------------------------------------


class MemoryStore:
    def __init__(self) -> None:
        self.days: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.codes: dict[tuple[str, str], str] = {}
        self.down = False
        self.writes = 0

    async def write(self, entries: Any) -> None:
        if self.down:
            raise ConnectionError("down")
        self.writes += 1
        for e in entries:
            self.days.setdefault((e.agent, e.day), {})[e.field] = e.record

    async def read(self, agent: str, day: str) -> dict[str, dict[str, Any]]:
        return dict(self.days.get((agent, day), {}))

    async def dispositions(self, agent: str, linkedids: Any) -> dict[str, str]:
        return {lid: self.codes[(lid, agent)] for lid in linkedids if (lid, agent) in self.codes}


def _payload(linkedid: str, **extra: Any) -> dict[str, Any]:
    return {"linkedid": linkedid, "caller": "8613900000001", "caller_name": "Li Na", "queue": "support",
            "current_queue": None, "offered_at": 1000.0, "answered_at": 1010.0, "ended_at": None,
            "customer": {"id": "c-1002", "name": "Li Na"}, **extra}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_the_sink_folds_offers_ends_and_missed_rings_and_reads_what_is_still_buffered() -> None:
    store, clock = MemoryStore(), Clock(1_800_000_000.0)  # 2027-01-15 08:00 UTC
    log = CallLog(store, timezone="Asia/Shanghai", clock=clock, gather_s=0)
    seq = iter(range(1, 100))

    def publish(kind: str, agent: str, payload: dict[str, Any]) -> None:
        log.publish(Envelope(type=kind, agent=agent, seq=next(seq), payload=payload))

    publish("agent.state", "alice", {"agent_id": "alice"})
    publish("call.offered", "bob", _payload("c1"))
    clock.now += 5
    publish("call.offer_withdrawn", "bob", _payload("c1", reason="ring_no_answer"))
    publish("call.offered", "alice", _payload("c1"))
    clock.now += 2
    publish("call.offered", "bob", _payload("c1"))  # rung again: it will ring alice's answer away
    publish("call.offer_withdrawn", "bob", _payload("c1", reason="answered_elsewhere"))
    segments = [{"queue": "support", "agent_id": "alice", "outcome": "transferred", "left_at": 1_800_000_002.0,
                 "talk_s": 30.0}, {"queue": None, "agent_id": "bob", "outcome": "answered", "left_at": None,
                                   "talk_s": None}]
    publish("call.ended", "alice", _payload("c1", reason="transferred", segments=segments))
    publish("call.ended", "bob", _payload("c2", reason="merged", segments=[]))  # a consult leg: not shown
    assert log.pending == 2
    alice = await log.calls("alice", "2027-01-15")
    assert [(c["linkedid"], c["outcome"], c["reason"], c["talk_s"], c["disposition"]) for c in alice] == [
        ("c1", "transferred", "transferred", 30.0, None)]
    assert alice[0]["offered_at"] == 1_800_000_005.0 and alice[0]["ended_at"] == 1_800_000_032.0
    [missed] = await log.calls("bob", "2027-01-15")
    assert (missed["outcome"], missed["offered_at"], missed["ended_at"]) == ("missed", 1.8e9, 1.8e9 + 5)

    store.codes[("c1", "alice")] = "resolved"
    runner = asyncio.create_task(log.run())
    await eventually(lambda: log.pending == 0)
    assert store.writes == 1, "one write for what was gathered"
    assert [c["disposition"] for c in await log.calls("alice", "2027-01-15")] == ["resolved"]
    assert await log.calls("alice", "2027-01-14") == []
    clock.now = 1_800_000_000.0 - 16 * 3600 - 1  # 2027-01-14 23:59:59 in Shanghai
    assert log.kept_days() == ["2027-01-14", "2027-01-13", "2027-01-12"]
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner


async def test_what_is_buffered_when_the_server_stops_is_written_first() -> None:
    store = MemoryStore()
    log = CallLog(store, clock=Clock(1_800_000_000.0), gather_s=3600)  # would gather for an hour
    runner = asyncio.create_task(log.run())
    log.publish(Envelope(type="call.ended", agent="alice", seq=1, payload=_ended("c1", "alice", 1.8e9)))
    await asyncio.sleep(0)  # the writer is gathering now
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    assert runner.cancelled() and log.pending == 0
    assert [r["linkedid"] for r in store.days[("alice", "2027-01-15")].values()] == ["c1"]


# --- against real Redis ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _forwarder(port: int, target: tuple[str, int]) -> AsyncIterator[None]:
    """Redis at ``127.0.0.1:port`` from now on: connections are relayed to the real one."""
    writers: list[asyncio.StreamWriter] = []
    relays: list[asyncio.Task[Any]] = []

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relays.append(asyncio.current_task())  # type: ignore[arg-type]
        up_reader, up_writer = await asyncio.open_connection(*target)
        writers.extend((writer, up_writer))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*relays, return_exceptions=True)
        await server.wait_closed()


def _ended(linkedid: str, agent: str, answered_at: float) -> dict[str, Any]:
    return _payload(linkedid, reason="hangup", segments=[
        {"queue": "support", "agent_id": agent, "outcome": "answered", "left_at": answered_at, "talk_s": 60.0}])


async def test_records_written_while_redis_is_unreachable_reach_it_when_it_is_back(redis_url: str) -> None:
    prefix = f"cl{uuid.uuid4().hex[:6]}:"
    port = _free_port()  # nothing listens there yet: Redis is "away"
    away = aioredis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=2, socket_connect_timeout=2)
    real = aioredis.from_url(redis_url)
    target = (real.connection_pool.connection_kwargs["host"], int(real.connection_pool.connection_kwargs["port"]))
    clock = Clock(1_800_000_000.0)
    log = CallLog(RedisCallStore(away, key_prefix=prefix), timezone="UTC", clock=clock, max_buffer=3, gather_s=0,
                  retry_s=0.01)
    runner = asyncio.create_task(log.run())
    try:
        for i in range(5):
            log.publish(Envelope(type="call.ended", agent="alice", seq=i + 1,
                                 payload=_ended(f"c{i}", "alice", 1_800_000_000.0 + i)))
        await eventually(lambda: log.failures >= 2)
        assert log.pending == 3 and log.dropped == 2, "bounded: the two oldest were dropped"
        async with _forwarder(port, target):
            await eventually(lambda: log.pending == 0)
            key = RedisCallStore(real, key_prefix=prefix).key("alice", "2027-01-15")
            stored = [orjson.loads(v) for v in (await real.hgetall(key)).values()]
            assert sorted(r["linkedid"] for r in stored) == ["c2", "c3", "c4"]
            assert 0 < await real.ttl(key) <= TTL_S
            await RedisDispositions(real, key_prefix=prefix).set("c3", "alice", "follow_up")
            calls = await log.calls("alice", "2027-01-15")
            assert [(c["linkedid"], c["disposition"]) for c in calls] == [("c4", None), ("c3", "follow_up"),
                                                                         ("c2", None)]
            assert log.dropped == 0, "counted again from the next outage"
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await away.aclose()
        await real.aclose()


async def test_a_write_retried_after_it_reached_redis_adds_nothing_twice(redis_client: aioredis.Redis) -> None:
    store = RedisCallStore(redis_client, key_prefix="dup:")
    record = call_record("call.ended", "bob", _ended("c9", "bob", 1_800_000_000.0), now=0)
    assert record is not None
    entries = [Entry(1, "bob", "2027-01-15", "env-1", record)]
    await store.write(entries)
    await store.write(entries)  # the first write timed out after Redis applied it
    assert list((await store.read("bob", "2027-01-15")).values()) == [record]
    assert await store.dispositions("bob", []) == {}
