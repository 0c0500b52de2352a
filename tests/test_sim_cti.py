"""The simulator's CTI routing mode (config/asterisk/extensions_cti.conf) over real TCP, driven as a CTI server
drives Asterisk: Setvar and Redirect after each CtiHold. Event shapes are the ``cti`` / ``ctiedge`` captures'
(and the other captures' for the events they share), read from the raw bytes on both sides so the order of a
UserEvent's repeated ``Uniqueid`` counts. Time is the simulator's manual clock, never the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest

from cti.agi import AgiServer, AgiSettings, IvrResult
from cti.ami.codec import Message
from cti.config import AgentConfig, SimConfig
from cti.replay import replay_chunks
from cti.sim.cti_mode import CtiPbx
from cti.sim.server import GREETING, AmiServer
from ivr_flows import parse_flow
from tests.test_sim_faithful import differences
from tests.test_sim_server import Client
from tests.traces import trace_bytes

START = 1_795_449_900.0
AGENTS = [
    AgentConfig(id=name.lower(), name=name, interface=f"Local/{ext}@sim-agents/n", extension=ext)
    for name, ext in (("Alice", "1001"), ("Bob", "1002"), ("Chen", "1003"), ("Dora", "1009"))
]
ALICE, BOB, CHEN, DORA = (a.interface for a in AGENTS)
BASE: dict[str, Any] = {"mode": "cti", "channel_style": "local", "calls_per_minute": 0, "ring_s": 1,
                        "no_answer_prob": 0, "mean_talk_s": 30, "mean_patience_s": 600, "tick_s": 0.01, "seed": 5}
CAPTURES = ("basic", "vip", "burst", "abandon", "cti", "overflow", "blindxfer", "ctiedge")
#: Sent in CTI mode but in no capture (their dialplan had Wait() where ours has MusicOnHold()).
NOT_IN_CAPTURES = {"MusicOnHoldStart", "MusicOnHoldStop"}
Block = list[tuple[str, str]]


# --- the raw bytes ------------------------------------------------------------------------------------------


def blocks(data: bytes) -> list[Block]:
    """Every message as its (key, value) lines in wire order (the capture's comment lines and greeting left out)."""
    out = []
    for chunk in data.decode().split("\r\n\r\n"):
        lines = [line.split(": ", 1) for line in chunk.split("\r\n") if ": " in line and not line.startswith(";")]
        if lines:
            out.append([(k, v) for k, v in lines])
    return out


def keys(block: Block) -> tuple[str, ...]:
    return tuple(k for k, _ in block)


def value(block: Block, key: str) -> str | None:
    return next((v for k, v in block if k == key), None)


def named(block: Block) -> str:
    """An event's name, a UserEvent's with its own name: ``UserEvent:CtiHold``."""
    event = value(block, "Event") or ""
    return f"{event}:{value(block, 'UserEvent')}" if event == "UserEvent" else event


@cache
def capture_blocks(name: str) -> list[Block]:
    return [b for b in blocks(trace_bytes(name)) if b[0][0] in ("Event", "Response")]


@cache
def capture_shapes() -> dict[str, set[tuple[str, ...]]]:
    shapes: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for name in CAPTURES:
        for b in capture_blocks(name):
            shapes[named(b)].add(keys(b))
    return shapes


def capture_user_event(name: str) -> tuple[str, ...]:
    return next(keys(b) for b in capture_blocks("cti") if named(b) == f"UserEvent:{name}")


class RawClient(Client):
    """A manager connection that also keeps every byte it read, for wire-order checks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.raw = bytearray()

    async def next(self, timeout: float = 5.0) -> Message:
        while not self.buffer:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError
            self.raw += data
            self.buffer.extend(self.decoder.feed(data))
        return self.buffer.pop(0)

    def events(self) -> list[Block]:
        return [b for b in blocks(bytes(self.raw)) if b[0][0] == "Event"]


# --- a CTI-mode simulator and a client ----------------------------------------------------------------------


@dataclass
class Harness:
    srv: AmiServer
    c: RawClient
    now: list[float]

    @property
    def pbx(self) -> CtiPbx:
        assert isinstance(self.srv.sim.pbx, CtiPbx)
        return self.srv.sim.pbx

    def call(self, number: str = "13800000001", name: str = "Li Lei", **choice: Any) -> str:
        """A caller rings cti-entry at the current time; returns the Linkedid."""
        linkedid = self.pbx.place_call(number, name, now=self.now[0], **choice)
        self.srv.sim.tick()
        return linkedid

    def advance(self, seconds: float) -> None:
        self.now[0] += seconds
        self.srv.sim.tick()

    async def until(self, pred: Callable[[Message], bool]) -> Message:
        m, _ = await self.c.until(pred)
        return m

    async def held(self, linkedid: str) -> Message:
        return await self.until(lambda m: m.event == "UserEvent" and m["UserEvent"] == "CtiHold"
                                and m["Linkedid"] == linkedid)

    async def route(self, channel: str, agent: str, endpoint: str, ring_s: str | None = None) -> list[Message]:
        """What a CTI server does for a match: Setvar CTI_AGENT, CTI_ENDPOINT (, CTI_RING_S), Redirect."""
        replies = [await self.c.action("Setvar", Channel=channel, Variable="CTI_AGENT", Value=agent),
                   await self.c.action("Setvar", Channel=channel, Variable="CTI_ENDPOINT", Value=endpoint)]
        if ring_s is not None:
            replies.append(await self.c.action("Setvar", Channel=channel, Variable="CTI_RING_S", Value=ring_s))
        replies.append(await self.c.action("Redirect", Channel=channel, Context="cti-connect", Exten="s",
                                           Priority="1"))
        return replies

    def record(self, linkedid: str) -> dict[str, Any]:
        [record] = [r for r in self.pbx.records if r["linkedid"] == linkedid]
        return record

    async def read_all(self) -> list[Block]:
        """Every event sent so far (a Ping's reply comes after them on the connection), in wire order."""
        assert (await self.c.action("Ping"))["Ping"] == "Pong"
        return self.c.events()

    def assert_replay_agrees(self) -> None:
        """``cti replay`` of the bytes this client read tells every ended call as the simulator's records do."""
        assert_replay_agrees(bytes(self.c.raw), list(self.pbx.records))


@contextlib.asynccontextmanager
async def cti_server(**overrides: Any) -> AsyncIterator[Harness]:
    now = [START]
    config = SimConfig.model_validate(BASE | overrides)
    async with AmiServer(config=config, agents=AGENTS, port=0, random_arrivals=False, clock=lambda: now[0]) as srv:
        client = RawClient(*await asyncio.open_connection("127.0.0.1", srv.port))
        try:
            await client.next()  # greeting
            assert (await client.action("Login", Username="cti", Secret="ctisecret")).response == "Success"
            yield Harness(srv, client, now)
        finally:
            client.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await client.writer.wait_closed()


def assert_capture_shapes(events: list[Block]) -> None:
    """Every event type the captures have comes in one of their field orders; our UserEvents as the cti
    capture's, with the fields extensions_cti.conf adds after them."""
    shapes = capture_shapes()
    extra = {"CtiHold": ("Entry",), "CtiNoAnswer": (), "CtiFallback": ()}
    for b in events:
        name = named(b)
        if name.startswith("UserEvent:"):
            user = name.split(":", 1)[1]
            if user == "CtiFallback":  # not in the captures: CtiHold's shape with Queue instead of Entry
                assert keys(b) == (*capture_user_event("CtiHold"), "Queue")
            else:
                assert keys(b) == (*capture_user_event(user), *extra[user]), user
        elif name not in NOT_IN_CAPTURES:
            assert name in shapes, f"{name} is in no capture"
            assert keys(b) in shapes[name], f"{name}: {keys(b)} not as recorded"


def assert_replay_agrees(data: bytes, records: list[dict[str, Any]]) -> None:
    rows = {r["linkedid"]: r for r in replay_chunks([data], agents=AGENTS)}
    assert records
    wrong = {r["linkedid"]: differences(r, rows[r["linkedid"]]) if r["linkedid"] in rows else ["no row"]
             for r in records}
    assert not any(wrong.values()), wrong


def of_call(events: list[Block], linkedid: str) -> list[Block]:
    return [b for b in events if value(b, "Linkedid") == linkedid]


def after_status(events: list[Block], status: str) -> list[Block]:
    """The events from the first DialEnd with this DialStatus on."""
    at = next(i for i, b in enumerate(events) if named(b) == "DialEnd" and value(b, "DialStatus") == status)
    return events[at:]


def dial_statuses(events: list[Block]) -> list[str | None]:
    return [value(b, "DialStatus") for b in events if value(b, "Event") == "DialEnd" and value(b, "Channel")]


# --- answered, no answer, busy ---------------------------------------------------------------------------------


async def test_a_routed_call_is_answered_with_the_captures_events() -> None:
    async with cti_server() as h:
        lid = h.call(entry="billing", tier="vip_gold", language="en", talk=8)
        h.advance(2)
        hold = await h.held(lid)
        assert hold["Context"] == "cti-hold" and hold.getall("Uniqueid") == [hold["Uniqueid"]] * 2
        assert hold["Entry"] == "billing"
        channel = hold["Channel"]
        replies = await h.route(channel, "alice", ALICE)
        assert [(r.response, r["Message"]) for r in replies] == [("Success", "Variable Set")] * 2 + [
            ("Success", "Redirect successful")]
        begin = await h.until(lambda m: m.event == "DialBegin" and m.get("Channel") == channel)
        assert begin["DialString"] == "1001@sim-agents/n" and begin["DestChannel"].startswith("Local/1001@sim-agents-")
        assert (begin["DestCallerIDNum"], begin["DestConnectedLineNum"]) == ("1001", "13800000001")
        h.advance(1)
        answered = await h.until(lambda m: m.event == "DialEnd" and m.get("Channel") == channel)
        assert answered["DialStatus"] == "ANSWER" and answered["DestExten"] == ""
        h.advance(10)
        await h.until(lambda m: m.event == "Hangup" and m["Channel"] == channel[:-1] + "1")
        events = await h.read_all()
        h.assert_replay_agrees()
    assert_capture_shapes(events)
    mine = of_call(events, lid)
    names = [named(b) for b in mine]
    # cti-entry: the IVR's footprint writes the choice before the caller is held
    before_hold = mine[:names.index("UserEvent:CtiHold")]
    cti_vars = {value(b, "Variable"): value(b, "Value") for b in before_hold
                if named(b) == "VarSet" and (value(b, "Variable") or "").startswith("CTI_")}
    assert cti_vars == {"CTI_FLOW": "hotline@sim", "CTI_OUTCOME": "route", "CTI_ENTRY": "billing", "CTI_PRIORITY": "2",
                        "CTI_TIER": "vip_gold", "CTI_LANGUAGE": "en", "CTI_HOLD_START": str(int(START + 1.2)),
                        "CTI_HOLD_LEFT": "300"}
    assert names.count("AGIExecStart") == names.count("AGIExecEnd") == 8
    # the answer and the end, as the cti capture's answered call: DialEnd ANSWER, the bridge, BRIDGEPEER on both
    # sides ... Dial()'s variables as it returns, the caller's halves hang up
    recorded = of_call(capture_blocks("cti"), "1795391605.128")
    answer = ["DialEnd", "Newexten", "BridgeEnter", "BridgeEnter", "VarSet", "VarSet"]
    assert [named(b) for b in after_status(mine, "ANSWER")][:6] == answer
    assert [named(b) for b in after_status(recorded, "ANSWER")][:6] == answer
    assert names[-14:] == [named(b) for b in recorded][-14:]
    assert [value(b, "Variable") for b in mine[-14:]] == [value(b, "Variable") for b in recorded[-14:]]
    record = h.record(lid)
    assert (record["outcome"], record["agent"]) == ("answered", "Alice")
    cti = record["cti"]
    assert (cti["entry"], cti["tier"], cti["language"], cti["outcome"], cti["answered_by"], cti["holds"]) == (
        "billing", "vip_gold", "en", "answered", "alice", 1)
    assert [(r["agent"], r["outcome"]) for r in cti["rings"]] == [("alice", "answer")]
    assert cti["hold_s"] == pytest.approx(cti["rings"][0]["at"] + 1 - cti["enqueued_at"], abs=0.01)


async def test_no_answer_reports_ctinoanswer_and_holds_again_keeping_the_hold_start() -> None:
    async with cti_server() as h:
        lid = h.call(entry="tech_support", talk=5)
        h.advance(2)
        channel = (await h.held(lid))["Channel"]
        h.advance(3)
        await h.route(channel, "dora", DORA, ring_s="1")  # rings as long as Dora takes to answer: too short
        h.advance(1)
        noanswer = await h.until(lambda m: m.event == "UserEvent" and m["UserEvent"] == "CtiNoAnswer")
        assert (noanswer["Agent"], noanswer["Status"], noanswer["Uniqueid"]) == ("dora", "NOANSWER", noanswer.getall(
            "Uniqueid")[0])
        again = await h.held(lid)
        h.advance(2)
        await h.route(channel, "bob", BOB, ring_s="15")  # CTI_RING_S stays set: a channel variable
        h.advance(1)
        await h.until(lambda m: m.event == "DialEnd" and m.get("DialStatus") == "ANSWER")
        r = await h.c.action("Getvar", Channel=channel, Variable="CTI_ENDPOINT")
        assert (r.response, r["Variable"], r["Value"]) == ("Success", "CTI_ENDPOINT", BOB)
        h.advance(10)
        await h.until(lambda m: m.event == "Hangup" and m["Channel"] == channel)
        events = await h.read_all()
        h.assert_replay_agrees()
    assert_capture_shapes(events)
    mine = of_call(events, lid)
    starts = [value(b, "Value") for b in mine if value(b, "Variable") == "CTI_HOLD_START"]
    assert len(starts) == 2 and starts[0] == starts[1], "the hold start survives the return from cti-connect"
    lefts = [int(value(b, "Value") or 0) for b in mine if value(b, "Variable") == "CTI_HOLD_LEFT"]
    assert lefts == [300, 300 - (int(START + 6) - int(START + 1.2))]
    assert again["Timestamp"] > noanswer["Timestamp"]
    # After DialEnd NOANSWER: the agent's channels go, DIALSTATUS, GotoIf, the UserEvent, CTI_ENDPOINT cleared,
    # Goto and the hold again: the cti capture's sequence, with our dialplan's two more steps.
    names = [named(b) for b in after_status(mine, "NOANSWER")]
    recorded = [named(b) for b in after_status(of_call(capture_blocks("cti"), "1795391605.128"), "NOANSWER")]
    assert names[:5] == recorded[:5] == ["DialEnd", "HangupRequest", "Hangup", "SoftHangupRequest", "Hangup"]
    assert names[5:14] == ["VarSet", "Newexten", "Newexten", "UserEvent:CtiNoAnswer", "Newexten", "VarSet",
                           "Newexten", "Newexten", "VarSet"]
    assert [value(b, "Value") for b in mine if value(b, "Variable") == "CTI_ENDPOINT"] == [DORA, "", BOB]
    cti = h.record(lid)["cti"]
    assert [(r["agent"], r["outcome"]) for r in cti["rings"]] == [("dora", "noanswer"), ("bob", "answer")]
    assert (cti["holds"], cti["answered_by"], cti["outcome"]) == (2, "bob", "answered")


async def test_busy_agent_gives_busy_and_the_caller_holds_again() -> None:
    async with cti_server() as h:
        first = h.call("13800000001", talk=120)
        second = h.call("13800000002", "Wang Lei", talk=5)
        h.advance(2)
        one, two = (await h.held(first))["Channel"], (await h.held(second))["Channel"]
        await h.route(one, "alice", ALICE)
        h.advance(1)
        await h.until(lambda m: m.event == "DialEnd" and m.get("Channel") == one and m["DialStatus"] == "ANSWER")
        await h.route(two, "alice", ALICE)  # two servers' views differ: Alice is on a call
        busy = await h.until(lambda m: m.event == "UserEvent" and m["UserEvent"] == "CtiNoAnswer")
        assert (busy["Channel"], busy["Agent"], busy["Status"]) == (two, "alice", "BUSY")
        await h.held(second)
        events = await h.read_all()
    assert_capture_shapes(events)
    assert dial_statuses(of_call(events, second)) == ["BUSY"]
    hangup = next(b for b in of_call(events, second) if named(b) == "Hangup" and "@sim-agents-" in (value(b, "Channel")
                                                                                                   or ""))
    assert (value(hangup, "Cause"), value(hangup, "Cause-txt")) == ("17", "User busy")


async def test_no_endpoint_holds_again_and_an_unknown_one_is_chanunavail() -> None:
    async with cti_server() as h:
        lid = h.call(talk=5, patience=30)
        h.advance(2)
        channel = (await h.held(lid))["Channel"]
        r = await h.c.action("Redirect", Channel=channel, Context="cti-connect", Exten="s", Priority="1")
        assert r["Message"] == "Redirect successful"
        await h.held(lid)
        await h.route(channel, "zed", "PJSIP/9999")
        unavailable = await h.until(lambda m: m.event == "UserEvent" and m["UserEvent"] == "CtiNoAnswer")
        assert (unavailable["Agent"], unavailable["Status"]) == ("zed", "CHANUNAVAIL")
        await h.held(lid)
        h.advance(40)
        await h.until(lambda m: m.event == "Hangup" and m["Channel"] == channel)
        events = h.c.events()
    assert_capture_shapes(events)
    mine = of_call(events, lid)
    checks = [value(b, "AppData") for b in mine if value(b, "Context") == "cti-connect"
              and value(b, "Application") == "GotoIf" and value(b, "Priority") == "1"]
    assert checks == ["1?cti-hold,s,1", "0?cti-hold,s,1"]
    assert not [b for b in mine if named(b) == "DialBegin" and value(b, "Context") == "cti-connect"]
    record = h.record(lid)["cti"]
    assert (record["holds"], record["outcome"]) == (3, "abandoned_hold")
    assert record["rings"] == [{"agent": None, "endpoint": "PJSIP/9999", "at": record["rings"][0]["at"],
                                "outcome": "chanunavail", "ring_s": 0.0}]


# --- hang-ups -------------------------------------------------------------------------------------------


async def test_caller_hangs_up_on_hold() -> None:
    async with cti_server() as h:
        lid = h.call(patience=5)
        h.advance(2)
        channel = (await h.held(lid))["Channel"]
        h.advance(5)
        await h.until(lambda m: m.event == "Hangup" and m["Channel"] == channel[:-1] + "1")
        events = h.c.events()
        r = await h.c.action("Redirect", Channel=channel, Context="cti-connect", Exten="s", Priority="1")
        assert (r.response, r["Message"]) == ("Error", f"Channel does not exist: {channel}")
        for action in ("Setvar", "Getvar"):
            r = await h.c.action(action, Channel=channel, Variable="CTI_AGENT", Value="alice")
            assert (r.response, r["Message"]) == ("Error", "No such channel")
        r = await h.c.action("Hangup", Channel=channel)
        assert (r.response, r["Message"]) == ("Error", "No such channel")
    assert_capture_shapes(events)
    mine = of_call(events, lid)
    names = [named(b) for b in mine]
    # ctiedge's 502: the phone's Hangup(), its request, the PBX side asked to go, then both halves
    at = next(i for i, b in enumerate(mine) if value(b, "Application") == "Hangup")
    assert names[at:] == [
        "Newexten", "SoftHangupRequest", "HangupRequest", "MusicOnHoldStop", "SoftHangupRequest", "Hangup", "Hangup"]
    # the replies above are ctiedge's to Redirect, then Setvar, Hangup and Getvar, of a channel that is gone
    assert [value(b, "Message") for b in capture_blocks("ctiedge") if value(b, "Response") == "Error"][:4] == [
        "Channel does not exist: Local/nosuch@cti-hold-00000000;2", "No such channel", "No such channel",
        "No such channel"]
    record = h.record(lid)
    assert (record["cti"]["outcome"], record["outcome"], record["cti"]["rings"]) == ("abandoned_hold", None, [])


async def test_caller_hangs_up_while_the_agent_rings() -> None:
    async with cti_server(no_answer_prob=1) as h:
        lid = h.call(patience=8)
        h.advance(2)
        channel = (await h.held(lid))["Channel"]
        h.advance(2)
        await h.route(channel, "dora", DORA)
        h.advance(6)
        await h.until(lambda m: m.event == "Hangup" and m["Channel"] == channel)
        events = await h.read_all()
        h.assert_replay_agrees()
    assert_capture_shapes(events)
    mine = of_call(events, lid)
    assert dial_statuses(mine) == ["CANCEL"]
    names = [named(b) for b in mine]
    recorded = [named(b) for b in of_call(capture_blocks("ctiedge"), "1795449821.21167")]
    ref = recorded[recorded.index("HangupRequest", recorded.index("DialState")):]
    ref = [n for n in ref if n not in ("DeviceStateChange", "QueueMemberStatus")]
    ours = [n for n in names[names.index("HangupRequest", names.index("DialState")):]
            if n not in ("DeviceStateChange", "QueueMemberStatus")]
    assert ours == ref, "ctiedge's 504: DialEnd CANCEL, every channel hangs up"
    record = h.record(lid)
    assert record["cti"]["outcome"] == "abandoned_ringing"
    assert [(r["agent"], r["outcome"]) for r in record["cti"]["rings"]] == [("dora", "cancel")]
    assert record["segments"][-1]["outcome"] == "abandoned"


async def test_the_caller_hangs_up_while_talking_and_the_agent_hangs_up_by_ami() -> None:
    async with cti_server() as h:
        talker, other = h.call("13800000001", talk=60), h.call("13800000002", "Wang Lei", talk=60)
        h.advance(2)
        one, two = (await h.held(talker))["Channel"], (await h.held(other))["Channel"]
        await h.route(one, "alice", ALICE)
        await h.route(two, "bob", BOB)
        h.advance(1)
        bob = await h.until(lambda m: m.event == "BridgeEnter" and m["Channel"].startswith("Local/1002@"))
        assert (await h.c.action("Hangup", Channel=one)).response == "Success"
        await h.until(lambda m: m.event == "Hangup" and m["Channel"].startswith("Local/1001@")
                      and m["Channel"].endswith(";2"))
        assert (await h.c.action("Hangup", Channel=bob["Channel"])).response == "Success"
        await h.until(lambda m: m.event == "Hangup" and m["Channel"] == two[:-1] + "1")
        events = await h.read_all()
        h.assert_replay_agrees()
    assert_capture_shapes(events)
    for lid in (talker, other):
        record = h.record(lid)
        assert record["outcome"] == "answered" and record["talk_s"] is not None
    assert not h.pbx.channels and not h.pbx.calls


async def test_hangup_in_the_ivr_writes_the_flows_end_on_the_dead_channel() -> None:
    async with cti_server() as h:
        lid = h.call(keys="hangup", patience=2)
        h.advance(5)
        await h.until(lambda m: m.event == "Hangup" and m["Linkedid"] == lid and m["Channel"].endswith(";2"))
        events = await h.read_all()
        h.assert_replay_agrees()
    assert_capture_shapes(events)
    mine = of_call(events, lid)
    names = [named(b) for b in mine]
    # ctiedge's 501: the phone's Hangup, the pending WAIT FOR DIGIT fails, the writes go on, AGISTATUS=HANGUP
    failed = next(b for b in mine if named(b) == "AGIExecEnd" and value(b, "ResultCode") == "-1")
    assert value(failed, "Result") == "Failure" and value(failed, "Command") == "WAIT FOR DIGIT 5000"
    assert ("AGISTATUS", "HANGUP") in [(value(b, "Variable"), value(b, "Value")) for b in mine]
    assert "UserEvent:CtiHold" not in names
    assert h.record(lid)["cti"]["outcome"] == "ivr_hangup"


# --- hold limit, double Redirect, transfer --------------------------------------------------------------


async def test_hold_limit_counts_the_whole_wait_then_ctifallback_and_the_queue() -> None:
    async with cti_server(hold_max_s=20) as h:
        lid = h.call(talk=5)
        h.advance(2)
        first = await h.held(lid)
        channel = first["Channel"]
        h.advance(3)
        await h.route(channel, "dora", DORA, ring_s="1")
        h.advance(1)
        await h.held(lid)
        h.advance(20)
        fallback = await h.until(lambda m: m.event == "UserEvent" and m["UserEvent"] == "CtiFallback")
        assert (fallback["Queue"], fallback["Priority"]) == ("support", "6")
        join = await h.until(lambda m: m.event == "QueueCallerJoin")
        assert (join["Channel"], join["Queue"], join["Context"], join["Priority"]) == (channel, "support", "cti-hold",
                                                                                       "7")
        h.advance(1)
        connect = await h.until(lambda m: m.event == "AgentConnect")
        h.advance(10)
        await h.until(lambda m: m.event == "Hangup" and m["Channel"] == channel)
        events = await h.read_all()
        h.assert_replay_agrees()
    assert_capture_shapes(events)
    held_at = int(float(first["Timestamp"]))
    assert int(float(fallback["Timestamp"])) - held_at == 20, "20 s on hold in all, the ring included"
    queue = [b for b in of_call(events, lid) if named(b) == "Newexten" and value(b, "Application") == "Queue"]
    assert [value(b, "AppData") for b in queue] == ["support,,,,600"]
    record = h.record(lid)
    assert record["cti"]["outcome"] == "fallback" and record["cti"]["hold_s"] == pytest.approx(20, abs=1.5)
    assert (record["queue"], record["agent"], record["outcome"]) == ("support", connect["MemberName"], "answered")
    assert [s["queue"] for s in record["segments"]] == [None, "support"]


async def test_two_redirects_both_succeed_the_first_dial_is_cancelled_and_the_second_wins() -> None:
    async with cti_server() as h:
        lid = h.call(talk=5)
        h.advance(2)
        channel = (await h.held(lid))["Channel"]
        first = await h.route(channel, "alice", ALICE)
        second = await h.route(channel, "bob", BOB)
        assert [r["Message"] for r in (first[-1], second[-1])] == ["Redirect successful"] * 2
        h.advance(1)
        await h.until(lambda m: m.event == "DialEnd" and m["DialStatus"] == "ANSWER")
        h.advance(10)
        await h.until(lambda m: m.event == "Hangup" and m["Channel"] == channel)
        events = await h.read_all()
        h.assert_replay_agrees()
    assert_capture_shapes(events)
    mine = of_call(events, lid)
    assert dial_statuses(mine) == ["CANCEL", "ANSWER"]
    names = [named(b) for b in mine]
    cancel = next(i for i, b in enumerate(mine) if value(b, "DialStatus") == "CANCEL")
    stale = mine[cancel - 1]
    # ctiedge's 505: the second Redirect's Newexten still shows the Dial being cancelled, then DialEnd CANCEL
    assert (named(stale), value(stale, "Context"), value(stale, "Priority"), value(stale, "Application"),
            value(stale, "AppData")) == ("Newexten", "cti-connect", "1", "Dial", f"{ALICE},15")
    recorded = of_call(capture_blocks("ctiedge"), "1795449854.21174")
    at = len(recorded) - len(after_status(recorded, "CANCEL"))
    assert [named(b) for b in recorded[at - 2:at + 1]] == ["Newexten", "DialState", "DialEnd"]  # and a late DialState
    assert names[cancel + 1:cancel + 5] == ["HangupRequest", "Hangup", "SoftHangupRequest", "Hangup"]
    cti = h.record(lid)["cti"]
    assert [(r["agent"], r["outcome"]) for r in cti["rings"]] == [("alice", "cancel"), ("bob", "answer")]
    assert h.record(lid)["agent"] == "Bob"


@pytest.mark.parametrize("to_agent", [True, False])
async def test_the_agent_blind_transfers_a_cti_connected_call(to_agent: bool) -> None:
    async with cti_server(transfer_share=1, transfer_to_agent_share=1 if to_agent else 0,
                          queue_members={"support": ["chen"]}) as h:
        lid = h.call(talk=20)
        h.advance(2)
        channel = (await h.held(lid))["Channel"]
        await h.route(channel, "alice", ALICE)
        for _ in range(40):
            h.advance(1)
        await h.until(lambda m: m.event == "Hangup" and m["Channel"] == channel)
        events = await h.read_all()
        h.assert_replay_agrees()
    assert_capture_shapes(events)
    mine = of_call(events, lid)
    [xfer] = [b for b in events if named(b) == "BlindTransfer" and value(b, "TransfereeLinkedid") == lid]
    assert (value(xfer, "TransfererChannel") or "").startswith("Local/1001@sim-agents-")
    assert "AgentComplete" not in [named(b) for b in mine[:mine.index(after_status(mine, "ANSWER")[0]) + 40]], (
        "no app_queue part for a Dial() call")
    record = h.record(lid)
    segments = [(s["queue"], s["outcome"], s["reason"], s["agent"], s["transferred_from"]) for s in record["segments"]]
    assert segments[0] == (None, "transferred", "blind", "Alice", None)
    if to_agent:
        assert value(xfer, "Context") == "sim-agents"
        assert segments[1][0] is None and segments[1][1:3] == ("answered", None) and segments[1][4] == "Alice"
    else:
        assert (value(xfer, "Context"), value(xfer, "Extension")) == ("xfer-queue", "support")
        assert segments[1] == ("support", "answered", None, "Chen", "Alice")
    assert record["cti"]["answered_by"] == "alice"


# --- PJSIP phones, many calls ----------------------------------------------------------------------------------


async def test_pjsip_agents_get_one_channel_per_ring() -> None:
    agents = [a.model_copy(update={"interface": f"PJSIP/{a.extension}"}) for a in AGENTS]
    now = [START]
    config = SimConfig.model_validate(BASE | {"channel_style": "auto"})
    async with AmiServer(config=config, agents=agents, port=0, random_arrivals=False, clock=lambda: now[0]) as srv:
        c = Client(*await asyncio.open_connection("127.0.0.1", srv.port))
        await c.next()
        await c.action("Login", Username="cti", Secret="ctisecret")
        srv.sim.place_call("13800000001", "Li Lei")
        now[0] += 2
        srv.sim.tick()
        hold, _ = await c.until(lambda m: m.event == "UserEvent" and m["UserEvent"] == "CtiHold")
        assert hold["Channel"].startswith("PJSIP/trunk-") and hold["Context"] == "cti-hold"
        await c.action("Setvar", Channel=hold["Channel"], Variable="CTI_ENDPOINT", Value="PJSIP/1002")
        await c.action("Redirect", Channel=hold["Channel"], Context="cti-connect", Exten="s", Priority="1")
        begin, _ = await c.until(lambda m: m.event == "DialBegin")
        assert begin["DestChannel"].startswith("PJSIP/1002-") and begin["DialString"] == "1002"
        now[0] += 1
        srv.sim.tick()
        end, _ = await c.until(lambda m: m.event == "DialEnd")
        assert end["DialStatus"] == "ANSWER"
        c.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await c.writer.wait_closed()


def test_many_calls_against_a_small_router_leave_nothing_behind() -> None:
    """Ten simulated minutes of random callers (some hang up in the IVR, some on hold, some rings unanswered)
    routed by a tiny router that dials a free agent for each CtiHold: every call ends with a record that
    agrees with its events, and no channel is left."""
    cfg = SimConfig.model_validate(BASE | {"calls_per_minute": 8, "no_answer_prob": 0.3, "mean_patience_s": 40,
                                           "ivr_hangup_share": 0.1, "hold_max_s": 60, "transfer_share": 0.1,
                                           "caller_hangup_share": 0.2, "mean_talk_s": 20, "vip_share": 0.3})
    pbx = CtiPbx(config=cfg, agents=AGENTS, rng=random.Random(cfg.seed), now=START)
    events: list[Message] = []
    pick = random.Random(2)
    t = START
    while t < START + 600 or pbx.calls:
        t += 0.25
        if t > START + 600:  # no more callers: the last arrival's successor is due in years
            pbx.config = cfg.model_copy(update={"calls_per_minute": 1e-9})
        batch = pbx.advance(t)
        events.extend(batch)
        for m in batch:
            if m.event == "UserEvent" and m["UserEvent"] == "CtiHold" and m["Channel"] in pbx.channels:
                free = [p for p in pbx.phones if not p.busy]
                if free and pick.random() < 0.8:
                    p = pick.choice(free)
                    pbx.setvar(m["Channel"], "CTI_AGENT", p.agent.id, now=t)
                    pbx.setvar(m["Channel"], "CTI_ENDPOINT", p.interface, now=t)
                    pbx.redirect(m["Channel"], "cti-connect", "s", now=t)
        events.extend(pbx.take_events())
        assert t < START + 3600, "calls never ended"
    assert not pbx.channels
    records = list(pbx.records)
    assert len(records) > 50
    assert_replay_agrees(GREETING + b"".join(m.encode() for m in events), records)
    outcomes = {r["cti"]["outcome"] for r in records}
    assert {"answered", "abandoned_hold", "ivr_hangup", "fallback"} <= outcomes, outcomes
    by_call: dict[str, list[Message]] = defaultdict(list)
    for m in events:
        if "Linkedid" in m:
            by_call[m["Linkedid"]].append(m)
    for r in records:
        mine = by_call[r["linkedid"]]
        ends = [m["DialStatus"] for m in mine if m.event == "DialEnd" and m.get("Context") == "cti-connect"]
        rings = {"ANSWER": "answer", "NOANSWER": "noanswer", "BUSY": "busy", "CANCEL": "cancel"}
        assert [rings[s] for s in ends] == [x["outcome"] for x in r["cti"]["rings"] if x["outcome"] != "chanunavail"]
        holds = sum(1 for m in mine if m.event == "UserEvent" and m["UserEvent"] == "CtiHold")
        assert holds == r["cti"]["holds"]
        answered = [x["agent"] for x in r["cti"]["rings"] if x["outcome"] == "answer"]
        assert r["cti"]["answered_by"] == (answered[0] if answered else None)


# --- a real FastAGI server -----------------------------------------------------------------------------------

FLOW = parse_flow({
    "id": "twochoices", "languages": ["en"], "default_language": "en", "start": "menu",
    "prompts": {"choose": {"file": "demo/choose", "text": {"en": "Press 1 for billing or 2 for support."}}},
    "nodes": {
        "menu": {"type": "menu", "prompt": "choose", "options": {"1": {"next": "billing"}, "2": {"next": "support"}},
                 "timeout_ms": 3000, "max_retries": 1, "default": "billing"},
        "billing": {"type": "route", "entry_point": "billing"},
        "support": {"type": "route", "entry_point": "tech_support"},
    }}, source="test")


async def nobody(by: str, value: str) -> None:
    return None


@contextlib.asynccontextmanager
async def agi_server() -> AsyncIterator[tuple[AgiServer, asyncio.Queue[IvrResult]]]:
    results: asyncio.Queue[IvrResult] = asyncio.Queue()
    async with AgiServer(flows=lambda: {"twochoices": FLOW}, directory=nobody, on_end=results.put_nowait,
                         settings=AgiSettings(port=0), clock=lambda: datetime(2026, 11, 23, 3, tzinfo=UTC)) as agi:
        yield agi, results


async def test_a_real_fastagi_ivr_sets_the_cti_variables_before_ctihold() -> None:
    async with agi_server() as (agi, results), cti_server(agi_url=f"agi://127.0.0.1:{agi.port}/twochoices") as h:
        lid = h.call(keys="2", talk=5)
        h.advance(0.5)  # AGI() starts: the session runs over TCP, on the manual clock's time
        hold = await h.held(lid)
        assert hold["Entry"] == "tech_support"
        result = await asyncio.wait_for(results.get(), 10)
        assert result.end is not None and result.end.entry_point == "tech_support"
        await h.route(hold["Channel"], "bob", BOB)
        h.advance(1)
        await h.until(lambda m: m.event == "DialEnd" and m["DialStatus"] == "ANSWER")
        hung = h.call("13800000009", keys="hangup")
        h.advance(0.5)
        await h.until(lambda m: m.event == "VarSet" and m["Variable"] == "AGISTATUS" and m["Linkedid"] == hung)
        await h.until(lambda m: m.event == "Hangup" and m["Linkedid"] == hung and m["Channel"].endswith(";2"))
        h.advance(10)
        await h.until(lambda m: m.event == "Hangup" and m["Channel"] == hold["Channel"])
        events = await h.read_all()
        h.assert_replay_agrees()
    assert_capture_shapes(events)
    mine = of_call(events, lid)
    names = [named(b) for b in mine]
    held = names.index("UserEvent:CtiHold")
    written = {value(b, "Variable"): value(b, "Value") for b in mine[:held] if named(b) == "VarSet"}
    assert (written["CTI_OUTCOME"], written["CTI_ENTRY"], written["AGISTATUS"]) == ("route", "tech_support", "SUCCESS")
    starts = [value(b, "Command") for b in mine if named(b) == "AGIExecStart"]
    ends = [value(b, "Command") for b in mine if named(b) == "AGIExecEnd"]
    assert starts == ends and any(s.startswith("SET VARIABLE CTI_ENTRY") for s in starts if s)
    assert [value(b, "Digit") for b in mine if named(b) == "DTMFEnd"] == ["2"]
    agi = next(i for i, b in enumerate(mine) if value(b, "Application") == "AGI")
    assert value(mine[agi], "AppData") == h.pbx.agi_url and names.index("AGIExecStart") == agi + 1
    record = h.record(lid)
    assert (record["cti"]["entry"], record["cti"]["language"], record["agent"]) == ("tech_support", "en", "Bob")
    gone = of_call(events, hung)
    statuses = [(value(b, "Variable"), value(b, "Value")) for b in gone if named(b) == "VarSet"]
    assert ("AGISTATUS", "HANGUP") in statuses and ("CTI_OUTCOME", "abandoned") in statuses
    failed = [b for b in gone if named(b) == "AGIExecEnd" and value(b, "ResultCode") == "-1"]
    assert len(failed) == 1 and value(failed[0], "Result") == "Failure"
    assert h.record(hung)["cti"]["outcome"] == "ivr_hangup"
