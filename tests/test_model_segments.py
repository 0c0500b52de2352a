"""Call segments on real Asterisk 22 captures: queue timeouts, two queues, blind transfers, per-queue pause.

Expected values are read off the captures by hand (the event and its Timestamp are named
next to each), not taken from the program's output.
"""

from __future__ import annotations

import json

import pytest

from cti.ami.codec import Decoder, Message
from cti.config import AgentConfig
from cti.model import events as ev
from cti.model.events import DomainEvent
from cti.model.reducer import CallModel
from cti.replay import replay_chunks
from tests.traces import trace_bytes

AGENTS = [
    AgentConfig(id="alice", name="Alice", interface="Local/1001@sim-agents", extension="1001"),
    AgentConfig(id="bob", name="Bob", interface="Local/1002@sim-agents", extension="1002"),
    AgentConfig(id="chen", name="Chen", interface="Local/1003@sim-agents", extension="1003"),
    AgentConfig(id="evan", name="Evan", interface="Local/1004@sim-agents", extension="1004"),
    AgentConfig(id="dora", name="Dora", interface="Local/1009@sim-agents", extension="1009"),
]
approx = pytest.approx


def run(name: str) -> tuple[CallModel, list[DomainEvent]]:
    model, out = CallModel(agents=AGENTS), []
    for msg in Decoder().feed(trace_bytes(name)):
        out += model.apply(msg)
    return model, out


def row_of(name: str, caller: str, agents: list[AgentConfig] | None = None) -> dict:
    rows = [r for r in replay_chunks([trace_bytes(name)], agents=AGENTS if agents is None else agents)
            if r["caller"] == caller]
    assert len(rows) == 1
    return rows[0]


def pushes(out: list[DomainEvent], agent: str, linkedid: str) -> list[str]:
    return [e.type for e in out if e.agent == agent and e.linkedid == linkedid and e.type.startswith("call.")]


# --- overflow: timeout in support, then sales ----------------------------------------------------


def test_overflow_timeout_is_unanswered_then_answered_in_sales() -> None:
    row = row_of("overflow", "13800000610")
    support, sales = row["segments"]
    # QueueCallerJoin support 1795449917.312760; QueueCallerAbandon 1795449923.319481 HoldTime 6,
    # then VarSet QUEUESTATUS=TIMEOUT: a timeout, not an abandon.
    assert support == {
        "queue": "support", "joined_at": approx(1795449917.3128), "left_at": approx(1795449923.3195),
        "outcome": "unanswered", "reason": "timeout", "agent": None, "agent_id": None,
        "wait_s": approx(6.0, abs=0.02), "talk_s": None, "position": 1, "transferred_from": None,
    }
    # QueueCallerJoin sales 1795449923.320741; Dora AgentRingNoAnswer; Evan AgentConnect 1795449931.333455;
    # AgentComplete 1795449935.838516 TalkTime 4.
    assert (sales["queue"], sales["outcome"], sales["agent"], sales["agent_id"]) == (
        "sales", "answered", "Evan", "evan")
    assert sales["wait_s"] == approx(8.0, abs=0.02) and sales["talk_s"] == approx(4.5, abs=0.02)
    assert (row["queue"], row["agent"], row["outcome"]) == ("support", "Evan", "answered")
    assert row["wait_s"] == approx(1795449931.333455 - 1795449917.312760, abs=0.02)
    assert row["talk_s"] == approx(4.5, abs=0.02)


def test_overflow_counts_each_queue_visit_and_pops_the_second_queue() -> None:
    model, out = run("overflow")
    assert model.queues["support"].unanswered == 1 and model.queues["support"].abandoned == 0
    assert model.queues["sales"].answered == 1
    [linkedid] = [c.linkedid for c in model.ended.values() if c.caller_num == "13800000610"]
    [pop] = [e for e in out if e.type == ev.CALL_OFFERED and e.agent == "evan" and e.linkedid == linkedid]
    assert pop.data["offered_queue"] == "sales" and pop.data["current_queue"] == "sales"
    assert [s["outcome"] for s in pop.data["segments"]] == ["unanswered", None]
    assert pushes(out, "dora", linkedid) == [ev.CALL_OFFERED, ev.CALL_OFFER_WITHDRAWN]
    assert pushes(out, "evan", linkedid) == [ev.CALL_OFFERED, ev.CALL_ANSWERED, ev.CALL_ENDED]
    left = [e for e in out if e.type == ev.CALL_LEFT_QUEUE and e.linkedid == linkedid]
    assert [(e.data["left_queue"], e.data["reason"]) for e in left] == [("support", "timeout")]


def test_abandon_is_still_an_abandon() -> None:
    # abandon capture: QueueCallerAbandon, QueueCallerLeave, then the caller's Hangup; no QUEUESTATUS.
    row = row_of("abandon", "13800000299")
    [seg] = row["segments"]
    assert (row["outcome"], seg["outcome"], seg["reason"], seg["agent"]) == ("abandoned", "abandoned", None, None)


# --- blind transfers -----------------------------------------------------------------------------


def test_blind_transfer_to_a_queue_keeps_the_first_agent_as_owner() -> None:
    row = row_of("blindxfer", "13800000620")
    support, sales = row["segments"]
    # Bob: AgentConnect 1795449949.080718 (joined 1795449948.078536), BlindTransfer 1795449950.880633
    assert (support["outcome"], support["reason"], support["agent"]) == ("transferred", "blind", "Bob")
    assert support["wait_s"] == approx(1.0, abs=0.02) and support["talk_s"] == approx(1.8, abs=0.02)
    # sales: joined 1795449950.880855, Evan AgentConnect 1795449958.896604, AgentComplete 1795449969.409170
    assert (sales["queue"], sales["outcome"], sales["agent"], sales["transferred_from"]) == (
        "sales", "answered", "Evan", "Bob")
    assert sales["wait_s"] == approx(8.0, abs=0.03) and sales["talk_s"] == approx(10.51, abs=0.02)
    assert (row["agent"], row["outcome"]) == ("Bob", "answered")
    assert row["wait_s"] == approx(1.0, abs=0.02), "wait is to the first answer, not Bob's talk time"
    assert row["talk_s"] == approx(1.8 + 10.51, abs=0.03)


def test_blind_transfer_to_an_extension_reaches_that_agent() -> None:
    row = row_of("blindxfer", "13800000621")
    support, direct = row["segments"]
    assert (support["agent"], support["outcome"]) == ("Alice", "transferred")
    # BlindTransfer Extension 1002 @ sim-agents 1795449968.891204; the transferee runs Bob's extension:
    # Newexten Answer 1795449969.892926; last Hangup 1795449979.902154.
    assert (direct["queue"], direct["agent"], direct["agent_id"], direct["outcome"], direct["transferred_from"]) == (
        None, "Bob", "bob", "answered", "Alice")
    assert direct["wait_s"] == approx(1.0, abs=0.02) and direct["talk_s"] == approx(10.01, abs=0.02)
    assert row["agent"] == "Alice", "the owner is who answered first"


def test_blind_transfer_to_an_extension_found_from_queue_members_alone() -> None:
    row = row_of("blindxfer", "13800000621", agents=[])
    assert row["segments"][1]["agent"] == "Bob", "Local/1002@sim-agents/n is the member for 1002@sim-agents"


def test_blind_transfer_pushes_to_both_agents() -> None:
    model, out = run("blindxfer")
    to_sales = next(c.linkedid for c in model.ended.values() if c.caller_num == "13800000620")
    to_bob = next(c.linkedid for c in model.ended.values() if c.caller_num == "13800000621")
    assert pushes(out, "bob", to_sales) == [ev.CALL_OFFERED, ev.CALL_ANSWERED, ev.CALL_ENDED]
    [bob_done] = [e for e in out if e.agent == "bob" and e.linkedid == to_sales and e.type == ev.CALL_ENDED]
    assert bob_done.data["reason"] == "transferred" and not bob_done.data["ended"]
    [evan_pop] = [e for e in out if e.agent == "evan" and e.linkedid == to_sales and e.type == ev.CALL_OFFERED]
    assert (evan_pop.data["transferred_from"], evan_pop.data["transferred_from_id"]) == ("Bob", "bob")
    assert pushes(out, "alice", to_bob) == [ev.CALL_OFFERED, ev.CALL_ANSWERED, ev.CALL_ENDED]
    assert pushes(out, "bob", to_bob) == [ev.CALL_OFFERED, ev.CALL_ANSWERED, ev.CALL_ENDED]
    [bob_pop] = [e for e in out if e.agent == "bob" and e.linkedid == to_bob and e.type == ev.CALL_OFFERED]
    assert bob_pop.data["transferred_from_id"] == "alice" and bob_pop.data["caller"] == "13800000621"
    assert all(m.call is None for m in model.members.values())
    assert model.queues["sales"].transferred_in == 1


# --- attended transfer (no capture: the event as main/stasis_bridges.c documents it) -----------


def _chan(prefix: str, channel: str, uid: str, linkedid: str) -> dict[str, str]:
    return {f"{prefix}Channel": channel, f"{prefix}Uniqueid": uid, f"{prefix}Linkedid": linkedid}


def test_attended_transfer_folds_the_consult_call_and_hands_the_caller_over() -> None:
    model = CallModel(agents=AGENTS)
    out: list[DomainEvent] = []

    def feed(ts: float, **fields: str) -> None:
        out.extend(model.apply(Message({"Timestamp": str(ts), **fields})))

    caller = {"Channel": "PJSIP/trunk-00000001", "Uniqueid": "100.1", "Linkedid": "100.1"}
    feed(100.0, Event="Newchannel", CallerIDNum="13800000777", CallerIDName="Zhao", **caller)
    feed(101.0, Event="QueueCallerJoin", Queue="support", Position="1", CallerIDNum="13800000777", **caller)
    feed(101.1, Event="AgentCalled", Queue="support", Interface="Local/1001@sim-agents/n", MemberName="Alice",
         **caller)
    feed(103.0, Event="AgentConnect", Queue="support", Interface="Local/1001@sim-agents/n", MemberName="Alice",
         HoldTime="2", **caller)
    feed(103.0, Event="Newchannel", Channel="Local/1001@sim-agents-00000001;1", Uniqueid="103.2", Linkedid="100.1")
    # Alice puts the caller on hold and dials Bob from her phone: a new call, Linkedid 110.3.
    consult = {"Channel": "Local/1001@sim-agents-00000002;2", "Uniqueid": "110.3", "Linkedid": "110.3"}
    feed(110.0, Event="Newchannel", CallerIDNum="1001", **consult)
    feed(110.0, Event="Newchannel", Channel="Local/1002@sim-agents-00000003;1", Uniqueid="110.4", Linkedid="110.3")
    feed(110.0, Event="DialBegin", DestChannel="Local/1002@sim-agents-00000003;1", DestUniqueid="110.4",
         DestLinkedid="110.3", **consult)
    feed(112.0, Event="DialEnd", DialStatus="ANSWER", DestChannel="Local/1002@sim-agents-00000003;1",
         DestUniqueid="110.4", DestLinkedid="110.3", **consult)
    assert pushes(out, "bob", "110.3") == [ev.CALL_OFFERED, ev.CALL_ANSWERED]
    feed(120.0, Event="AttendedTransfer", Result="Success", DestType="Bridge", DestBridgeUniqueid="b1",
         IsExternal="No", OrigBridgeUniqueid="b1", SecondBridgeUniqueid="b2",
         **_chan("OrigTransferer", "Local/1001@sim-agents-00000001;1", "103.2", "100.1"),
         **_chan("SecondTransferer", "Local/1001@sim-agents-00000002;2", "110.3", "110.3"),
         **_chan("Transferee", "PJSIP/trunk-00000001", "100.1", "100.1"),
         **_chan("TransferTarget", "Local/1002@sim-agents-00000003;1", "110.4", "110.3"))
    feed(120.0, Event="AgentComplete", Queue="support", Interface="Local/1001@sim-agents/n", MemberName="Alice",
         Reason="transfer", HoldTime="2", TalkTime="17", **caller)
    feed(120.0, Event="Hangup", **consult)  # Alice's consult channel leaves at once
    assert "110.3" not in model.calls and model.ended["110.3"].merged_into == "100.1"
    assert pushes(out, "bob", "110.3") == [ev.CALL_OFFERED, ev.CALL_ANSWERED, ev.CALL_ENDED]
    assert pushes(out, "bob", "100.1") == [ev.CALL_OFFERED, ev.CALL_ANSWERED]
    [pop] = [e for e in out if e.agent == "bob" and e.linkedid == "100.1" and e.type == ev.CALL_OFFERED]
    assert pop.data["caller"] == "13800000777" and pop.data["transferred_from_id"] == "alice"
    assert pushes(out, "alice", "100.1") == [ev.CALL_OFFERED, ev.CALL_ANSWERED, ev.CALL_ENDED]
    # Bob's consult leg now belongs to the caller's call, even if its events still name 110.3.
    feed(150.0, Event="Hangup", Channel="Local/1002@sim-agents-00000003;1", Uniqueid="110.4", Linkedid="110.3")
    feed(150.0, Event="Hangup", Channel="Local/1001@sim-agents-00000001;1", Uniqueid="103.2", Linkedid="100.1")
    feed(150.1, Event="Hangup", **caller)
    call = model.ended["100.1"]
    first, second = call.segments
    assert (first.outcome, first.reason, first.agent_id) == ("transferred", "attended", "alice")
    assert (second.queue, second.outcome, second.agent_id, second.transferred_from_id) == (
        None, "answered", "bob", "alice")
    assert second.talk_s == approx(30.1) and first.talk_s == approx(17.0)
    assert (call.agent_id, call.outcome, call.wait_s) == ("alice", "answered", approx(2.0))
    assert pushes(out, "bob", "100.1") == [ev.CALL_OFFERED, ev.CALL_ANSWERED, ev.CALL_ENDED]


# --- per-queue member state ----------------------------------------------------------------------


def _pause_event(queue: str, paused: bool, reason: str = "") -> Message:
    """ctiedge's QueueMemberPause for Bob, with its Queue (and pause) changed."""
    [block] = [m for m in Decoder().feed(trace_bytes("ctiedge"))
               if m.fields.get("Event") == "QueueMemberPause" and m.fields.get("Paused") == "1"]
    fields = dict(block.fields) | {"Queue": queue, "Paused": "1" if paused else "0", "PausedReason": reason}
    return Message(fields)


def test_pause_in_one_queue_leaves_the_other_alone() -> None:
    model = CallModel(agents=AGENTS)
    model.apply(_pause_event("support", False))
    model.apply(_pause_event("sales", False))
    [state] = model.apply(_pause_event("support", True, "lunch"))
    bob = model.members["local/1002@sim-agents/n"]
    assert bob.queues["support"].paused and not bob.queues["sales"].paused
    assert not bob.paused, "still takes sales calls"
    assert state.data["paused_in"] == ["support"] and state.data["memberships"]["support"]["paused_reason"] == "lunch"
    model.apply(_pause_event("sales", True, "lunch"))
    assert bob.paused and bob.paused_reason == "lunch"
    model.apply(_pause_event("support", False))
    assert not bob.paused and not bob.queues["support"].paused and bob.queues["sales"].paused
    assert bob.calls_taken == 27 * 2, "CallsTaken is per queue"


# --- bad values ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "1e400", "-5", "abc"])
def test_absurd_timestamps_and_durations_never_reach_a_snapshot(bad: str) -> None:
    data = trace_bytes("basic").replace(b"Timestamp: 1795391526", b"Timestamp: " + bad.encode() + b"\r\nX: 1")
    for key in (b"HoldTime: ", b"TalkTime: "):
        data = data.replace(key + b"1", key + bad.encode()).replace(key + b"4", key + bad.encode())
    model, out = CallModel(agents=AGENTS), []
    for msg in Decoder().feed(data):
        out += model.apply(msg, now=1795391526.5)
    [call] = model.ended.values()
    assert call.outcome == "answered" and call.agent_id == "bob"
    for event in out:
        json.dumps(event.data, allow_nan=False)  # raises on NaN / Infinity
    json.dumps(model.snapshot(), allow_nan=False)
    if bad != "abc":  # "abc" is no number at all: the field is simply not a timestamp
        assert model.bad_values["Timestamp"] > 0


def test_blind_transfer_to_an_extension_that_dials_a_pjsip_phone() -> None:
    """from-internal 1002 runs Dial(PJSIP/1002): answered by DialEnd ANSWER, not by an Answer()."""
    agents = [AgentConfig(id="alice", name="Alice", interface="PJSIP/1001", extension="1001"),
              AgentConfig(id="bob", name="Bob", interface="PJSIP/1002", extension="1002")]
    model, out = CallModel(agents=agents), []

    def feed(ts: float, **fields: str) -> None:
        out.extend(model.apply(Message({"Timestamp": str(ts), **fields})))

    caller = {"Channel": "PJSIP/trunk-00000001", "Uniqueid": "1.1", "Linkedid": "1.1"}
    alice = {"Channel": "PJSIP/1001-00000002", "Uniqueid": "1.2", "Linkedid": "1.1"}
    feed(10.0, Event="Newchannel", CallerIDNum="13800000001", **caller)
    feed(10.0, Event="QueueCallerJoin", Queue="support", Position="1", **caller)
    feed(10.1, Event="Newchannel", **alice)
    feed(10.1, Event="AgentCalled", Queue="support", Interface="PJSIP/1001", MemberName="Alice", **caller)
    feed(12.0, Event="AgentConnect", Queue="support", Interface="PJSIP/1001", MemberName="Alice", **caller)
    feed(20.0, Event="BlindTransfer", Result="Success", TransfererChannel=alice["Channel"], TransfererUniqueid="1.2",
         TransfereeChannel=caller["Channel"], TransfereeUniqueid="1.1", TransfereeLinkedid="1.1",
         Context="from-internal", Extension="1002", IsExternal="No")
    feed(20.0, Event="AgentComplete", Queue="support", Interface="PJSIP/1001", MemberName="Alice",
         Reason="transfer", **caller)
    feed(20.0, Event="Hangup", **alice)
    feed(20.1, Event="Newexten", Context="from-internal", Exten="1002", Application="Answer", **caller)
    assert [e.type for e in out if e.agent == "bob"] == [ev.CALL_OFFERED], "an Answer() here is not Bob"
    feed(20.1, Event="Newchannel", Channel="PJSIP/1002-00000003", Uniqueid="1.3", Linkedid="1.1")
    feed(20.1, Event="DialBegin", DestChannel="PJSIP/1002-00000003", DestUniqueid="1.3", **caller)
    feed(23.0, Event="DialEnd", DialStatus="ANSWER", DestChannel="PJSIP/1002-00000003", DestUniqueid="1.3",
         **caller)
    assert pushes(out, "bob", "1.1") == [ev.CALL_OFFERED, ev.CALL_ANSWERED]
    seg = model.calls["1.1"].segments[-1]
    assert (seg.agent_id, seg.transferred_from_id, seg.wait_s) == ("bob", "alice", approx(3.0))
