"""The simulator's AMI server over real TCP, checked against the shapes of the Asterisk 22 recordings."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from cti.ami.codec import Decoder, Message, encode_action
from cti.config import AgentConfig, SimConfig
from cti.sim.server import AmiServer
from tests.traces import TRACES

AGENTS = [
    AgentConfig(id="alice", name="Alice", interface="PJSIP/1001"),
    AgentConfig(id="bob", name="Bob", interface="PJSIP/1002"),
]
FAST = SimConfig(ring_s=0.05, mean_talk_s=0.2, wrapup_s=0.05, calls_per_minute=0, no_answer_prob=0, tick_s=0.01, seed=7)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = Decoder()
        self.buffer: list[Message] = []
        self.n = 0

    async def next(self, timeout: float = 5.0) -> Message:
        while not self.buffer:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError
            self.buffer.extend(self.decoder.feed(data))
        return self.buffer.pop(0)

    async def until(self, pred, timeout: float = 5.0) -> tuple[Message, list[Message]]:  # type: ignore[no-untyped-def]
        seen: list[Message] = []
        async with asyncio.timeout(timeout):
            while True:
                m = await self.next()
                seen.append(m)
                if pred(m):
                    return m, seen

    async def action(self, name: str, **fields: str) -> Message:
        self.n += 1
        aid = f"t-{self.n}"
        self.writer.write(encode_action(name, aid, fields))
        msg, _ = await self.until(lambda m: m.response is not None and m.action_id == aid)
        return msg


_OPEN: list[Client] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _OPEN:
        c = _OPEN.pop()
        c.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await c.writer.wait_closed()


async def connect(srv: AmiServer, login: bool = True) -> Client:
    c = Client(*await asyncio.open_connection("127.0.0.1", srv.port))
    _OPEN.append(c)
    greeting = await c.next()
    assert greeting.fields["Greeting"] == "Asterisk Call Manager/11.0.0"
    if login:
        r = await c.action("Login", Username="cti", Secret="ctisecret")
        assert r.response == "Success" and r["Message"] == "Authentication accepted"
    return c


@pytest.fixture
async def server() -> AsyncIterator[AmiServer]:
    async with AmiServer(config=FAST, agents=AGENTS, port=0, host="127.0.0.1") as srv:
        yield srv


def trace_events(folder: str) -> dict[str, Message]:
    """The first event of each name in a recording."""
    msgs = Decoder().feed((TRACES / folder / "ami-raw.txt").read_bytes())
    out: dict[str, Message] = {}
    for m in msgs:
        if m.event and m.event not in out:
            out[m.event] = m
    return out


async def test_login_ping_unknown(server: AmiServer) -> None:
    c = await connect(server)
    booted = await c.next()
    assert booted.event == "FullyBooted"
    r = await c.action("Ping")
    assert r["Ping"] == "Pong" and "Timestamp" in r and r.action_id == "t-2"
    r = await c.action("NoSuchThing")
    assert r.response == "Error" and r["Message"].startswith("Invalid/unknown command")
    r = await c.action("Events", EventMask="off")
    assert r["Events"] == "Off"
    r = await c.action("Hangup", Channel="PJSIP/none-00000001")
    assert (r.response, r["Message"]) == ("Error", "No such channel")
    r = await c.action("Redirect", Channel="PJSIP/none-00000001", Context="x", Exten="s", Priority="1")
    assert (r.response, r["Message"]) == ("Error", "Channel specified does not exist")
    r = await c.action("Logoff")
    assert (r.response, r["Message"]) == ("Goodbye", "Thanks for all the fish.")
    with pytest.raises(EOFError):
        await c.next()


async def test_bad_login_closes(server: AmiServer) -> None:
    c = await connect(server, login=False)
    r = await c.action("Ping")
    assert r["Message"] == "Permission denied"
    r = await c.action("Login", Username="cti", Secret="wrong")
    assert (r.response, r["Message"]) == ("Error", "Authentication failed")
    with pytest.raises(EOFError):
        await c.next()


async def test_malformed_input_does_not_crash(server: AmiServer) -> None:
    c = await connect(server, login=False)
    c.writer.write(b"\xff\xfe garbage without colon\r\n\r\n" + b"x" * 70000)
    with pytest.raises((EOFError, ConnectionError)):
        while True:
            await c.next()
    c2 = await connect(server)
    assert (await c2.action("Ping"))["Ping"] == "Pong"


async def test_scripted_call_matches_trace_shapes(server: AmiServer) -> None:
    c = await connect(server)
    linkedid = server.sim.place_call("13800000001", "Caller", patience=60)
    done, seen = await c.until(lambda m: m.event == "Hangup" and m.get("Uniqueid") == linkedid)
    events = [m for m in seen if m.event]
    names = [m.event for m in events]
    order = ["QueueCallerJoin", "AgentCalled", "AgentConnect", "AgentComplete", "Hangup"]
    idx = [names.index(n) for n in order[:-1]] + [len(names) - 1]
    assert idx == sorted(idx)
    call_events = [m for m in events if "Linkedid" in m]
    assert {m["Linkedid"] for m in call_events} == {linkedid}
    ref = trace_events("basic")
    for name in [
        "QueueCallerJoin",
        "AgentCalled",
        "DialBegin",
        "DialEnd",
        "QueueCallerLeave",
        "AgentConnect",
        "BridgeCreate",
        "BridgeEnter",
        "AgentComplete",
        "BridgeLeave",
        "Hangup",
        "QueueMemberStatus",
        "Newchannel",
        "Newexten",
        "VarSet",
        "Newstate",
        "DialState",
        "HangupRequest",
        "BridgeDestroy",
    ]:
        mine = next(m for m in events if m.event == name)
        theirs = ref[name]
        if name in ("DialBegin", "DialEnd"):  # the trace's first Dial* is the Local-channel Originate leg
            theirs = next(
                m
                for m in Decoder().feed((TRACES / "basic/ami-raw.txt").read_bytes())
                if m.event == name and "Channel" in m
            )
        assert list(mine.fields) == list(theirs.fields), name
    for m in events:
        if m.event == "FullyBooted":  # sent without Timestamp, as in the recordings
            continue
        assert m["Privilege"].endswith(",all")
        assert len(m["Timestamp"].split(".")[1]) == 6
    # agent leg: PJSIP/1001-xxxxxxxx with the caller's Linkedid
    called = next(m for m in events if m.event == "AgentCalled")
    assert called["DestChannel"].startswith(("PJSIP/1001-", "PJSIP/1002-"))
    assert called["DestLinkedid"] == linkedid and called["DestUniqueid"] != linkedid
    complete = next(m for m in events if m.event == "AgentComplete")
    assert complete["Reason"] == "agent"
    assert done["Cause"] == "16" and done["Cause-txt"] == "Normal Clearing"


async def test_abandon(server: AmiServer) -> None:
    server.sim.pause("alice")
    server.sim.pause("bob")
    c = await connect(server)
    linkedid = server.sim.place_call("13800000299", "Impatient", patience=0.1)
    _, seen = await c.until(lambda m: m.event == "Hangup" and m.get("Linkedid") == linkedid)
    names = [m.event for m in seen if m.get("Linkedid") == linkedid]
    assert names[-4:] == ["VarSet", "QueueCallerAbandon", "QueueCallerLeave", "Hangup"]
    ab = next(m for m in seen if m.event == "QueueCallerAbandon")
    ref = trace_events("abandon")["QueueCallerAbandon"]
    assert list(ab.fields) == list(ref.fields)
    assert ab["Position"] == "1" and ab["OriginalPosition"] == "1"


async def test_vip_jumps_queue_and_status_lists(server: AmiServer) -> None:
    server.sim.pause("alice")
    server.sim.pause("bob")
    c = await connect(server)
    plain = [server.sim.place_call(f"1380000000{i}", "Caller", patience=30) for i in range(3)]
    vip = server.sim.place_call("8613900000001", "VIP", priority=10, patience=30)
    join, _ = await c.until(lambda m: m.event == "QueueCallerJoin" and m["Linkedid"] == vip)
    assert join["Position"] == "1" and join["Count"] == "4"
    r = await c.action("QueueStatus")
    assert r["EventList"] == "start"
    _, items = await c.until(lambda m: m.event == "QueueStatusComplete")
    entries = [m for m in items if m.event == "QueueEntry"]
    assert [e["Uniqueid"] for e in entries] == [vip, *plain]
    assert entries[0]["Priority"] == "10"
    members = [m for m in items if m.event == "QueueMember"]
    assert {m["Location"] for m in members} == {"PJSIP/1001", "PJSIP/1002"}
    assert all(m["Paused"] == "1" for m in members)
    assert items[-1]["ListItems"] == str(len(items) - 1)
    r = await c.action("CoreShowChannels")
    _, chans = await c.until(lambda m: m.event == "CoreShowChannelsComplete")
    shows = [m for m in chans if m.event == "CoreShowChannel"]
    assert len(shows) == 4 and chans[-1]["ListItems"] == "4"
    ref = trace_events("cti")["CoreShowChannel"]
    assert list(shows[0].fields) == list(ref.fields)
    # unpausing: the VIP is answered first
    server.sim.pause("alice", False)
    conn, _ = await c.until(lambda m: m.event == "AgentConnect")
    assert conn["Linkedid"] == vip


async def test_originate_setvar_redirect(server: AmiServer) -> None:
    server.sim.pause("alice")
    server.sim.pause("bob")
    c = await connect(server)
    r = await c.action("Originate", Channel="Local/s@sim", CallerID='"Caller" <13800000301>', Context="x", Exten="s")
    assert r["Message"] == "Originate successfully queued"
    resp, _ = await c.until(lambda m: m.event == "OriginateResponse")
    assert resp["ActionID"] == f"t-{c.n}" and resp["CallerIDNum"] == "13800000301"
    channel = resp["Channel"]
    r = await c.action("Setvar", Channel=channel, Variable="CTI", Value="1")
    assert r["Message"] == "Variable Set"
    await c.until(lambda m: m.event == "VarSet" and m["Variable"] == "CTI")
    r = await c.action("Redirect", Channel=channel, Context="cti-hold", Exten="s", Priority="1")
    assert r["Message"] == "Redirect successful"
    await c.until(lambda m: m.event == "QueueCallerLeave")
    r = await c.action("Redirect", Channel=channel, Context="x", Exten="support", Priority="1")
    await c.until(lambda m: m.event == "QueueCallerJoin")
    r = await c.action("Hangup", Channel=channel)
    assert r.response == "Success"
    await c.until(lambda m: m.event == "Hangup" and m["Channel"] == channel)


async def test_no_answer_goes_to_next_agent() -> None:
    cfg = FAST.model_copy(update={"no_answer_prob": 1.0, "ring_timeout_s": 0.05, "retry_s": 10})
    async with AmiServer(config=cfg, agents=AGENTS, port=0) as srv:
        c = await connect(srv)
        srv.sim.place_call("13800000001", "Caller", patience=30)
        rna, _seen = await c.until(lambda m: m.event == "AgentRingNoAnswer")
        end, _ = await c.until(lambda m: m.event == "DialEnd")
        assert end["DialStatus"] == "NOANSWER"
        called, _ = await c.until(lambda m: m.event == "AgentCalled")
        assert called["Interface"] != rna["Interface"]
        assert int(rna["RingTime"]) >= 0


async def test_drop_connections_sim_continues(server: AmiServer) -> None:
    c = await connect(server)
    linkedid = server.sim.place_call("13800000001", "Caller", patience=30)
    await c.until(lambda m: m.event == "AgentCalled")
    assert server.drop_connections() == 1
    with pytest.raises((EOFError, ConnectionError)):
        while True:
            await c.next()
    async with asyncio.timeout(5):
        while server.connection_count:  # noqa: ASYNC110 - a plain count, nothing to wait on
            await asyncio.sleep(0.01)  # until the server has let go of the dropped connection
    c2 = await connect(server)
    assert server.connection_count == 1
    r = await c2.action("CoreShowChannels")
    assert r.response == "Success"
    # the call went on (or ended) while nobody listened; the server still serves and simulates
    server.sim.place_call("13800000002", "Next", patience=30)
    join, _ = await c2.until(lambda m: m.event == "QueueCallerJoin")
    assert join["Linkedid"] != linkedid
