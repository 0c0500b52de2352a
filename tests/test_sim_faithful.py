"""The simulator against the recorded Asterisk 22 captures (tests/fixtures/ami-traces).

Everything here is measured from the captures at test time, not copied into the test:
the events per call of each kind of call, the field order of each event type. The
engine runs on simulated time only (``Pbx.advance``), never the wall clock.

(a) Ten simulated minutes with every feature on, replayed through ``cti replay``'s
    code path, give exactly the simulator's own record of each call, and every kind of
    call happened at least once.
(b) Events per call (events carrying the call's Linkedid) are within 20 % of the captures'.
(c) Each event type has the field order it has in the captures.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from functools import cache
from statistics import mean
from typing import Any

import pytest

from cti.ami.codec import Decoder, Message
from cti.config import AgentConfig, SimConfig
from cti.replay import replay_chunks
from cti.sim.pbx import Caller, Pbx
from cti.sim.server import GREETING, AmiServer
from tests.test_sim_server import Client
from tests.traces import trace_bytes

START = 1_795_449_900.0
MINUTES = 10
TICK = 0.25
CAPTURES = ("basic", "vip", "burst", "abandon", "cti", "overflow", "blindxfer", "ctiedge")
#: Queue members as in the captures' queues.conf: sim-agents extensions, Dora is 1009.
AGENTS = [
    AgentConfig(id=name.lower(), name=name, interface=f"Local/{ext}@sim-agents/n", extension=ext)
    for name, ext in (("Alice", "1001"), ("Bob", "1002"), ("Chen", "1003"), ("Dora", "1009"))
]
CALLERS = [Caller(number="8613900000001", name="VIP Wang", vip=True), Caller(number="13800000001", name="Li Lei")]
CONFIG = SimConfig.all_features(seed=11)
SEGMENT_KEYS = ("queue", "joined_at", "left_at", "outcome", "reason", "agent", "wait_s", "talk_s", "position",
                "transferred_from")
RECORD_KEYS = ("linkedid", "caller", "queue", "agent", "outcome", "wait_s", "talk_s")


def call_events(messages: Iterable[Message]) -> dict[str, list[Message]]:
    """Broadcast events (not action replies) by the Linkedid they carry."""
    out: dict[str, list[Message]] = defaultdict(list)
    for m in messages:
        if m.event and "Privilege" in m and "Linkedid" in m:
            out[m["Linkedid"]].append(m)
    return out


@cache
def capture(name: str) -> list[Message]:
    return [m for m in Decoder().feed(trace_bytes(name)) if m.event]


@cache
def capture_calls(name: str) -> dict[str, list[Message]]:
    return call_events(capture(name))


@cache
def simulation() -> tuple[Pbx, list[Message]]:
    """Ten simulated minutes of a busy call centre with every feature on (four agents, two queues)."""
    pbx = Pbx(config=CONFIG, agents=AGENTS, rng=random.Random(CONFIG.seed), now=START, callers=CALLERS)
    events: list[Message] = []
    t = START
    for _ in range(int(MINUTES * 60 / TICK)):
        t += TICK
        events.extend(pbx.advance(t))
    return pbx, events


def sim_calls() -> dict[str, list[Message]]:
    return call_events(simulation()[1])


def wire(events: Iterable[Message]) -> bytes:
    """The bytes an AMI client receives from cti/sim/server.py: the greeting, then each event encoded."""
    return GREETING + b"".join(m.encode() for m in events)


# --- (a) the simulator's record of each call is what `cti replay` makes of its events ----------------


def close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, int | float) and not isinstance(b, bool):
        return abs(a - b) <= 0.01
    return bool(a == b)


def differences(record: dict[str, Any], row: dict[str, Any]) -> list[str]:
    """What a replayed row gets wrong about a record (the spec of ``cti replay``'s output)."""
    out = [f"{k}: sim {record[k]!r}, replay {row.get(k, '<missing>')!r}"
           for k in RECORD_KEYS if not close(record[k], row.get(k, "<missing>"))]
    segments = row.get("segments")
    if not isinstance(segments, list):
        return [*out, f"segments: replay has {segments!r}"]
    if len(segments) != len(record["segments"]):
        return [*out, f"segments: sim {len(record['segments'])}, replay {len(segments)}"]
    for i, (mine, theirs) in enumerate(zip(record["segments"], segments, strict=True)):
        out.extend(f"segments[{i}].{k}: sim {mine[k]!r}, replay {theirs.get(k, '<missing>')!r}"
                   for k in SEGMENT_KEYS if not close(mine[k], theirs.get(k, "<missing>")))
    return out


def test_replayed_rows_equal_the_simulators_records() -> None:
    pbx, events = simulation()
    records = list(pbx.records)
    assert len(records) > 60, "ten busy minutes"
    rows = {r["linkedid"]: r for r in replay_chunks([wire(events)], agents=AGENTS)}
    wrong = {}
    for record in records:
        row = rows.get(record["linkedid"])
        problems = ["no row"] if row is None else differences(record, row)
        if problems:
            wrong[record["linkedid"]] = problems
    assert not wrong, f"{len(wrong)} of {len(records)} calls differ: {dict(list(wrong.items())[:5])}"


def paused_in_one_queue_only(events: list[Message]) -> bool:
    """A member paused in one queue (QueueMemberPause carries the Queue) is offered a call from another."""
    paused: dict[tuple[str, str], bool] = {}
    for m in events:
        if m.event == "QueueMemberPause":
            paused[m["Queue"], m["Interface"]] = m["Paused"] == "1"
        elif m.event == "AgentCalled":
            elsewhere = [q for (q, iface), p in paused.items() if p and iface == m["Interface"] and q != m["Queue"]]
            if elsewhere and not paused.get((m["Queue"], m["Interface"]), False):
                return True
    return False


def test_every_kind_of_call_happens() -> None:
    pbx, events = simulation()
    records = list(pbx.records)
    calls = sim_calls()
    segments = [s for r in records for s in r["segments"]]

    def rna(linkedid: str) -> bool:
        names = [(m.event, m.get("DialStatus")) for m in calls[linkedid]]
        return ("AgentRingNoAnswer", None) in names and ("DialEnd", "NOANSWER") in names

    blind = [m for m in events if m.event == "BlindTransfer"]
    kinds = {
        "answered": any(r["outcome"] == "answered" for r in records),
        "abandoned": any(r["outcome"] == "abandoned" for r in records),
        "unanswered timeout": any(r["outcome"] == "unanswered" and r["segments"][-1]["reason"] == "timeout"
                                  for r in records),
        "two queues": any(len({s["queue"] for s in r["segments"] if s["queue"]}) == 2 for r in records),
        "ring-no-answer": any(rna(r["linkedid"]) for r in records),
        "blind transfer to a queue": any(s["transferred_from"] and s["queue"] for s in segments)
        and any(m["Context"] == CONFIG.xfer_context for m in blind),
        "blind transfer to an agent": any(s["transferred_from"] and s["queue"] is None and s["outcome"] == "answered"
                                          for s in segments) and any(m["Context"] == "sim-agents" for m in blind),
        "paused in one queue only": paused_in_one_queue_only(events),
    }
    assert all(kinds.values()), {k: v for k, v in kinds.items() if not v}


def test_queue_timeout_is_reported_as_app_queue_22_does() -> None:
    """Timeout: ABANDONED=TRUE, QueueCallerAbandon (HoldTime), QUEUEWAIT, QueueCallerLeave, QUEUESTATUS=TIMEOUT,
    in the captured order; a real abandon has no QUEUESTATUS and ends with the caller's Hangup."""

    def shape(msgs: list[Message]) -> list[str]:
        """The queue events and the variables that tell a timeout from an abandon (a wait as ``x``)."""
        keep = {"QueueCallerAbandon", "QueueCallerLeave", "QueueCallerJoin", "Hangup"}
        out = []
        for m in msgs:
            if m.event in keep:
                out.append(m.event)
            elif m.event == "VarSet" and m["Variable"] in ("ABANDONED", "QUEUEWAIT", "QUEUESTATUS"):
                value = "x" if m["Variable"] == "QUEUEWAIT" and m["Value"] else m["Value"]
                out.append(f"{m['Variable']}={value}")
        return out

    def between(msgs: list[Message], first: str, last: str) -> list[str]:
        s = shape(msgs)
        return s[s.index(first): s.index(last) + 1]

    [overflow] = [c for c in capture_calls("overflow").values() if any(m.event == "QueueCallerAbandon" for m in c)]
    [abandon] = [c for c in capture_calls("abandon").values() if any(m.event == "QueueCallerAbandon" for m in c)]
    timeout_ref = between(overflow, "ABANDONED=TRUE", "QUEUESTATUS=TIMEOUT")
    assert timeout_ref == ["ABANDONED=TRUE", "QueueCallerAbandon", "QUEUEWAIT=x", "QueueCallerLeave",
                           "QUEUESTATUS=TIMEOUT"]
    abandon_ref = shape(abandon)[shape(abandon).index("QUEUEWAIT=x"):]
    pbx, _ = simulation()
    calls = sim_calls()
    timeouts = [r for r in pbx.records if any(s["reason"] == "timeout" for s in r["segments"])]
    abandons = [r for r in pbx.records if [s["outcome"] for s in r["segments"]] == ["abandoned"]]
    assert timeouts and abandons
    for r in timeouts:
        assert between(calls[r["linkedid"]], "ABANDONED=TRUE", "QUEUESTATUS=TIMEOUT") == timeout_ref
    for r in abandons:
        mine = shape(calls[r["linkedid"]])
        assert mine[mine.index("QUEUEWAIT=x"):] == abandon_ref
        assert not any(s.startswith("QUEUESTATUS") for s in mine)
    hold = [m for r in timeouts for m in calls[r["linkedid"]] if m.event == "QueueCallerAbandon"]
    assert all(int(m["HoldTime"]) >= 0 for m in hold)


# --- (b) events per call ---------------------------------------------------------------------------


def names(msgs: list[Message]) -> list[tuple[str | None, str | None]]:
    return [(m.event, m.get("Reason") or m.get("DialStatus")) for m in msgs]


def kind_of(segments: list[dict[str, Any]], msgs: list[Message]) -> str | None:
    """The kinds of call the captures show, from a call's segments and events."""
    shape = [(s["queue"] is not None, s["outcome"], s["reason"]) for s in segments]
    evs = names(msgs)
    if shape == [(True, "answered", None)]:
        if ("AgentRingNoAnswer", None) not in evs and ("AgentComplete", "agent") in evs:
            return "answered"
    elif shape == [(True, "abandoned", None)]:
        if not any(e == "AgentCalled" for e, _ in evs):
            return "abandoned"
    elif shape == [(True, "unanswered", "timeout"), (True, "answered", None)]:
        return "overflow"
    elif shape == [(True, "transferred", "blind"), (True, "answered", None)]:
        return "blind transfer to a queue"
    elif shape == [(True, "transferred", "blind"), (False, "answered", None)]:
        return "blind transfer to an agent"
    return None


#: Which recorded call shows each kind: (capture, how to find the call in it).
REFERENCE: dict[str, tuple[str, Callable[[list[Message]], bool]]] = {
    "answered": ("basic", lambda c: True),
    "abandoned": ("abandon", lambda c: any(m.event == "QueueCallerAbandon" for m in c)),
    "overflow": ("overflow", lambda c: any(m.event == "QueueCallerAbandon" for m in c)),
    "blind transfer to a queue": ("blindxfer", lambda c: any(m.get("Context") == "xfer-queue" for m in c)),
    "blind transfer to an agent": ("blindxfer", lambda c: not any(m.get("Context") == "xfer-queue" for m in c)),
}


def rings(msgs: list[Message]) -> int:
    return sum(1 for m in msgs if m.event == "AgentCalled")


@pytest.mark.parametrize("kind", REFERENCE)
def test_events_per_call_are_the_captures(kind: str) -> None:
    """Same kind of call on both sides, and the same number of agents rung when the simulation has such calls
    (the captured overflow and queue-transfer calls each rang Dora, who did not answer, then Evan)."""
    name, pick = REFERENCE[kind]
    [call] = [c for c in capture_calls(name).values() if pick(c)]
    recorded = len(call)
    pbx, _ = simulation()
    calls = sim_calls()
    alike = [calls[r["linkedid"]] for r in pbx.records if kind_of(r["segments"], calls[r["linkedid"]]) == kind]
    assert alike, f"no {kind} call in the simulation"
    same_rings = [c for c in alike if rings(c) == rings(call)]
    simulated = mean(len(c) for c in same_rings or alike)
    assert 0.8 * recorded <= simulated <= 1.2 * recorded, f"{kind}: {simulated:.0f} events, {name} has {recorded}"


# --- (c) field order ----------------------------------------------------------------------------------


@cache
def capture_shapes() -> dict[str, set[tuple[str, ...]]]:
    shapes: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for name in CAPTURES:
        for m in capture(name):
            if m.event is not None:
                shapes[m.event].add(tuple(k for k, _ in m.items()))
    return shapes


#: Sent by the simulator but in no capture: QueueEntry (a QueueStatus item when callers wait; the captures'
#: QueueStatus ran with an empty queue), with the field order of manager_queues_status() in app_queue.c.
NOT_IN_CAPTURES = {"QueueEntry"}


def status_lists(pbx: Pbx) -> list[Message]:
    return [*pbx.core_show_channels(START, "a-1"), *pbx.queue_status(START, "a-2")]


def test_field_order_of_every_event_type_is_the_captures() -> None:
    shapes = capture_shapes()
    _, events = simulation()
    mid = Pbx(config=CONFIG, agents=AGENTS, rng=random.Random(3), now=START, callers=CALLERS)
    for _ in range(400):  # a snapshot of the lists mid-run: channels up, callers waiting
        mid.advance(mid.next_due() or START)
    seen: dict[str, tuple[str, ...]] = {}
    for m in [*events, *status_lists(mid)]:
        assert m.event is not None
        keys = tuple(k for k, _ in m.items())
        if m.event in NOT_IN_CAPTURES:
            continue
        assert m.event in shapes, f"{m.event} is in no capture"
        assert keys in shapes[m.event], f"{m.event}: {keys} not as recorded: {shapes[m.event]}"
        seen.setdefault(m.event, keys)
    for required in ("Newchannel", "Newexten", "VarSet", "NewCallerid", "NewConnectedLine", "LocalBridge",
                     "DialBegin", "DialState", "DialEnd", "DTMFBegin", "DTMFEnd", "Newstate", "QueueCallerJoin",
                     "AgentCalled", "AgentRingNoAnswer", "AgentConnect", "BridgeCreate", "BridgeEnter",
                     "BridgeLeave", "BridgeDestroy", "AgentComplete", "QueueCallerAbandon", "QueueCallerLeave",
                     "BlindTransfer", "Unhold", "HangupRequest", "SoftHangupRequest", "Hangup", "DeviceStateChange",
                     "QueueMemberStatus", "QueueMemberPause", "CoreShowChannel", "QueueParams", "QueueMember"):
        assert required in seen, f"the simulation never sent {required}"


def test_channels_and_members_are_named_as_in_the_captures() -> None:
    pbx, _ = simulation()
    calls = sim_calls()
    some = next(r for r in pbx.records if kind_of(r["segments"], calls[r["linkedid"]]) == "answered")
    channels = [m["Channel"] for m in calls[some["linkedid"]] if m.event == "Newchannel"]
    entry = CONFIG.entry_context
    assert channels[0].startswith(f"Local/s@{entry}-") and channels[0].endswith(";1")
    assert channels[1] == channels[0][:-1] + "2"
    assert channels[2].startswith("Local/") and "@sim-agents-" in channels[2] and channels[2].endswith(";1")
    assert calls[some["linkedid"]][0]["Uniqueid"] == some["linkedid"], "the phone's ;1 starts the call"
    called = next(m for m in calls[some["linkedid"]] if m.event == "AgentCalled")
    assert called["Interface"] in {a.interface for a in AGENTS}
    assert called["Channel"] == channels[1] and called["DestChannel"] == channels[2]
    members = [m for m in pbx.queue_status(START, None) if m.event == "QueueMember"]
    assert {m["StateInterface"] for m in members} == {a.interface.removesuffix("/n") for a in AGENTS}
    assert len({m["Queue"] for m in members}) == 2
    recorded = next(m for m in capture("ctiedge") if m.event == "QueueMember")
    assert recorded["Location"].endswith("@sim-agents/n") and recorded["StateInterface"].endswith("@sim-agents")


# --- the pure engine's controls in the Local style -----------------------------------------------------


def engine(**overrides: Any) -> Pbx:
    cfg = SimConfig(channel_style="local", calls_per_minute=0, ring_s=1, no_answer_prob=0, mean_talk_s=30,
                    mean_patience_s=600, queue_members={"support": ["alice", "bob"], "sales": ["bob", "chen"]},
                    **overrides)
    return Pbx(config=cfg, agents=AGENTS[:3], rng=random.Random(1), now=START, random_arrivals=False)


def drive(pbx: Pbx, until: float) -> list[Message]:
    out = pbx.take_events()
    while (due := pbx.next_due()) is not None and due <= until:
        out.extend(pbx.advance(due))
    return out + pbx.advance(until)


def test_pause_in_one_queue_only() -> None:
    pbx = engine()
    assert pbx.pause("bob", True, now=START, queue="support", reason="lunch")
    assert not pbx.pause("alice", True, now=START, queue="sales"), "Alice is not in sales"
    events = pbx.take_events()
    [pause] = [m for m in events if m.event == "QueueMemberPause"]
    assert (pause["Queue"], pause["MemberName"], pause["Paused"], pause["PausedReason"]) == ("support", "Bob", "1",
                                                                                             "lunch")
    assert [m["Device"] for m in events if m.event == "DeviceStateChange"] == [
        "Queue:support_pause_Local/1002@sim-agents/n"]
    status = {(m["Queue"], m["Name"]): m["Paused"] for m in pbx.queue_status(START, None) if m.event == "QueueMember"}
    assert status == {("support", "Alice"): "0", ("support", "Bob"): "1", ("sales", "Bob"): "0",
                      ("sales", "Chen"): "0"}
    pbx.pause("chen", True, now=START)  # no Queue: every queue Chen is in
    lid = pbx.place_call("13800000001", "Li Lei", now=START, overflow=True)
    events = drive(pbx, START + 10)
    called = [m for m in events if m.event == "AgentCalled" and m["Linkedid"] == lid]
    assert [(m["Queue"], m["MemberName"]) for m in called] == [("support", "Alice")]
    pbx.pause("alice", True, now=START + 10)
    lid2 = pbx.place_call("13800000002", "Wang Lei", now=START + 10, overflow=True)
    events = drive(pbx, START + 30)
    called = [m for m in events if m.event == "AgentCalled" and m["Linkedid"] == lid2]
    assert [(m["Queue"], m["MemberName"]) for m in called] == [("sales", "Bob")], "paused in support, rung from sales"


def test_controls_hangup_redirect_setvar_in_local_style() -> None:
    pbx = engine()
    for agent in ("alice", "bob"):
        pbx.pause(agent, True, now=START)
    lid = pbx.place_call("13800000001", "Li Lei", now=START)
    drive(pbx, START + 5)
    call = pbx.calls[lid]
    assert call.state.name == "QUEUED" and call.caller.name.endswith(";2") and call.phone is not None
    assert pbx.setvar(call.caller.name, "CTI_LANG", "zh", now=START + 5)
    assert pbx.redirect(call.caller.name, "cti-hold", "s", now=START + 6)
    assert pbx.redirect(call.caller.name, "xfer-queue", "sales", now=START + 7)  # Chen answers sales
    events = drive(pbx, START + 300)
    queue_events = {"QueueCallerJoin", "QueueCallerLeave", "QueueCallerAbandon"}
    assert [(m.event, m["Queue"]) for m in events if m.event in queue_events and m["Linkedid"] == lid] == [
        ("QueueCallerLeave", "support"), ("QueueCallerJoin", "sales"), ("QueueCallerLeave", "sales")]
    assert any(m.event == "VarSet" and m["Variable"] == "CTI_LANG" for m in events)
    [record] = [r for r in pbx.records if r["linkedid"] == lid]
    assert [(s["queue"], s["outcome"]) for s in record["segments"]] == [("support", "unanswered"),
                                                                        ("sales", "answered")]
    assert record["outcome"] == "answered" and record["agent"] == "Chen"
    lid2 = pbx.place_call("13800000002", "Wang Lei", now=START + 300)
    drive(pbx, START + 305)
    assert pbx.hangup(pbx.calls[lid2].caller.name, now=START + 305)  # the caller's ;2, while queued
    events = pbx.take_events()
    assert [m.event for m in events if m.get("Linkedid") == lid2][-6:] == [
        "VarSet", "QueueCallerAbandon", "QueueCallerLeave", "VarSet", "SoftHangupRequest", "Hangup"]
    assert pbx.records[-1]["linkedid"] == lid2 and pbx.records[-1]["outcome"] == "abandoned"
    assert not pbx.channels


# --- the AMI server in front of the Local style ----------------------------------------------------------


@contextlib.asynccontextmanager
async def local_server() -> AsyncIterator[tuple[AmiServer, Client, list[float]]]:
    now = [START]
    cfg = SimConfig(channel_style="local", calls_per_minute=0, ring_s=1, no_answer_prob=0, mean_talk_s=30,
                    mean_patience_s=600, second_queue_share=0.5, tick_s=0.01)
    async with AmiServer(config=cfg, agents=AGENTS, port=0, random_arrivals=False, clock=lambda: now[0]) as srv:
        client = Client(*await asyncio.open_connection("127.0.0.1", srv.port))
        await client.next()  # greeting
        assert (await client.action("Login", Username="cti", Secret="ctisecret")).response == "Success"
        try:
            yield srv, client, now
        finally:
            client.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await client.writer.wait_closed()


async def test_server_lists_and_actions_in_local_style() -> None:
    async with local_server() as (srv, c, now):
        r = await c.action("QueuePause", Interface="Local/1009@sim-agents/n", Queue="sales", Paused="true")
        assert r["Message"] == "Interface paused successfully"
        pause, _ = await c.until(lambda m: m.event == "QueueMemberPause")
        assert (pause["Queue"], pause["Interface"], pause["Paused"]) == ("sales", "Local/1009@sim-agents/n", "1")
        r = await c.action("QueuePause", Interface="Local/1001@sim-agents/n", Queue="sales", Paused="true")
        assert (r.response, r["Message"]) == ("Error", "Interface not found"), "Alice is in support only"
        r = await c.action("Originate", Channel="Local/s@ivr-entry", Context="sim-caller", Exten="s",
                           CallerID='"Li Lei" <13800000001>')
        assert r.response == "Success"
        resp, _ = await c.until(lambda m: m.event == "OriginateResponse")
        assert resp["Channel"].startswith("Local/s@ivr-entry-") and resp["Channel"].endswith(";1")
        now[0] += 1.5
        srv.sim.tick()
        join, _ = await c.until(lambda m: m.event == "QueueCallerJoin")
        await c.until(lambda m: m.event == "DialState")
        r = await c.action("CoreShowChannels")
        _, items = await c.until(lambda m: m.event == "CoreShowChannelsComplete")
        shows = {m["Channel"]: m for m in items if m.event == "CoreShowChannel"}
        assert len(shows) == 4, "caller ;1/;2 and the ringing agent's ;1/;2"
        recorded = next(m for m in capture("blindxfer") if m.event == "CoreShowChannel")
        assert all(list(m.fields) == list(recorded.fields) for m in shows.values())
        assert (shows[join["Channel"]]["Application"], shows[join["Channel"]]["ApplicationData"]) == ("Queue",
                                                                                                      "support")
        r = await c.action("QueueStatus")
        _, items = await c.until(lambda m: m.event == "QueueStatusComplete")
        members = {(m["Queue"], m["Name"]): m for m in items if m.event == "QueueMember"}
        assert members["sales", "Dora"]["Paused"] == "1" and members["support", "Dora"]["Paused"] == "0"
        r = await c.action("Setvar", Channel=join["Channel"], Variable="CTI_X", Value="1")
        assert r["Message"] == "Variable Set"
        r = await c.action("Hangup", Channel=join["Channel"])
        assert r["Message"] == "Channel Hungup"
        ab, _ = await c.until(lambda m: m.event == "QueueCallerAbandon")
        assert ab["Channel"] == join["Channel"]
        await c.until(lambda m: m.event == "Hangup" and m["Channel"] == join["Channel"])
