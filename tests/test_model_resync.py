"""Resynchronisation after an AMI outage, on real captures cut at the worst moments."""

from __future__ import annotations

from cti.ami.codec import Decoder, Message
from cti.model import events as ev
from cti.model.reducer import CallModel
from tests.test_model_traces import AGENTS
from tests.traces import trace_bytes


def _until(name: str, event: str, nth: int = 1, agents: list | None = None) -> tuple[CallModel, list[Message]]:
    """A model fed up to (and including) the nth ``event``; the rest of the capture returned."""
    messages = Decoder().feed(trace_bytes(name))
    model, seen = CallModel(agents=AGENTS if agents is None else agents), 0
    for i, msg in enumerate(messages):
        model.apply(msg)
        if msg.event == event:
            seen += 1
            if seen == nth:
                return model, messages[i + 1 :]
    raise AssertionError(f"no {event} #{nth} in {name}")


def test_call_answered_before_outage_and_gone_after_ends_answered() -> None:
    model, _ = _until("basic", "AgentConnect")
    assert len(model.calls) == 1
    out = model.resync([], [], now=1795391540.0)
    [ended] = [e for e in out if e.type == ev.CALL_ENDED]
    assert ended.agent == "bob"
    assert ended.data["outcome"] == "answered" and ended.data["gap"] is True
    assert ended.data["reason"] == "gone_at_resync"
    assert ended.data["talk_s"] > 0
    assert not model.calls


def test_waiting_call_still_up_is_kept_and_finishes_normally() -> None:
    model, rest = _until("abandon", "QueueCallerJoin", nth=5)
    everything = Decoder().feed(trace_bytes("abandon"))
    before = everything[: len(everything) - len(rest)]
    gone = {m["Uniqueid"] for m in before if m.event == "Hangup"}
    channels = [Message({**m.fields, "Event": "CoreShowChannel"})
                for m in before if m.event == "Newchannel" and m["Uniqueid"] not in gone]
    assert len(channels) > 5
    entries = [
        Message({"Event": "QueueEntry", "Queue": "support", "Position": str(pos), "Uniqueid": call.linkedid,
                 "Linkedid": call.linkedid, "Wait": "1"})
        for pos, call in enumerate(model.calls.values(), start=1)
    ]
    out = model.resync(channels, entries, now=1795391583.0)
    assert not [e for e in out if e.type == ev.CALL_ENDED], "nothing ended while we were away"
    for msg in rest:
        model.apply(msg)
    outcomes = sorted(c.outcome or "" for c in model.ended.values())
    assert outcomes == ["abandoned", "answered", "answered", "answered", "answered"]


def test_unknown_channels_become_calls_and_queue_entries_set_position() -> None:
    model = CallModel(agents=AGENTS)
    channel = Message({"Event": "CoreShowChannel", "Channel": "PJSIP/trunk-00000001", "Uniqueid": "9.1",
                       "Linkedid": "9.1", "CallerIDNum": "13800000001", "CallerIDName": "Li",
                       "Duration": "00:01:05"})
    entry = Message({"Event": "QueueEntry", "Queue": "support", "Position": "1", "Uniqueid": "9.1",
                     "Channel": "PJSIP/trunk-00000001", "CallerIDNum": "13800000001", "Wait": "60"})
    member = Message({"Event": "QueueMember", "Queue": "support", "Name": "Alice",
                      "Location": "Local/1001@sim-agents/n", "StateInterface": "Local/1001@sim-agents",
                      "Status": "1", "Paused": "0", "CallsTaken": "3"})
    out = model.resync([channel], [entry, member], now=1000.0)
    call = model.calls["9.1"]
    assert (call.caller_num, call.queue, call.position, call.queued_at) == ("13800000001", "support", 1, 940.0)
    assert call.arrived_at == 935.0 and call.seen_gap
    assert model.queues["support"].waiting == {"9.1": 1}
    [state] = [e for e in out if e.type == ev.AGENT_STATE]
    assert state.agent == "alice" and state.data["status"] == "not_in_use" and state.data["calls_taken"] == 3
    assert state.data["resync"] is True, "tells the client it may have missed events"


def test_freepbx_local_members_match_agents_by_extension() -> None:
    from cti.config import AgentConfig

    model = CallModel(agents=[AgentConfig(id="amy", name="Amy Pond", interface="PJSIP/1001", extension="1001")])
    agent = model.agent_for("Local/1001@from-queue/n", "1001")
    assert agent is not None and agent.id == "amy"
    assert model.agent_for("Local/1002@from-queue/n", "1002") is None


def test_live_link_check_ends_a_call_only_when_two_checks_miss_it() -> None:
    model, rest = _until("basic", "AgentConnect")
    [linkedid] = model.calls
    assert model.resync([], [], now=1795391530.0, live_link=True) == [], "maybe its Hangup is still queued"
    assert linkedid in model.calls
    [ended] = [e for e in model.resync([], [], now=1795391830.0, live_link=True) if e.type == ev.CALL_ENDED]
    assert ended.linkedid == linkedid and ended.data["outcome"] == "answered"
    for msg in rest:  # the late events of a call already ended change nothing
        model.apply(msg)
    assert not model.calls and model.ended[linkedid].outcome == "answered"


def test_live_link_check_forgets_a_suspect_that_shows_up_again() -> None:
    model, _ = _until("basic", "AgentConnect")
    [call] = model.calls.values()
    channels = [Message({"Event": "CoreShowChannel", "Uniqueid": uid, "Linkedid": call.linkedid}) for uid in call.legs]
    model.resync([], [], now=1.0, live_link=True)
    model.resync(channels, [], now=2.0, live_link=True)
    assert model.resync([], [], now=3.0, live_link=True) == [], "one miss after a sighting is not two in a row"
    assert call.linkedid in model.calls


def test_a_ring_that_ended_during_the_outage_is_withdrawn() -> None:
    """overflow: cut while Dora rings for the sales caller; back after her AgentRingNoAnswer.
    The caller still waits in sales, but no channel of the call is Dora's phone any more."""
    from tests.test_model_segments import AGENTS as WITH_DORA

    model, _ = _until("overflow", "AgentCalled", nth=4, agents=WITH_DORA)  # the 4th: Dora, in sales
    [call] = [c for c in model.calls.values() if c.caller_num == "13800000610"]
    assert [o.member_name for o in call.offers.values()] == ["Dora"]
    caller_legs = [Message({"Event": "CoreShowChannel", "Channel": leg.channel, "Uniqueid": uid,
                            "Linkedid": call.linkedid}) for uid, leg in call.legs.items() if "1009" not in leg.channel]
    entry = Message({"Event": "QueueEntry", "Queue": "sales", "Position": "1", "Uniqueid": next(
        uid for uid, leg in call.legs.items() if leg.channel.endswith(";2") and "ivr" in leg.channel), "Wait": "6"})
    out = model.resync(caller_legs, [entry], now=1795449930.0)
    [withdrawn] = [e for e in out if e.type == ev.CALL_OFFER_WITHDRAWN]
    assert withdrawn.agent == "dora" and withdrawn.data["reason"] == "gone_at_resync"
    assert not call.offers and call.current_queue == "sales", "still waiting, no longer ringing Dora"


def test_a_ring_that_started_while_we_were_away_pops_on_resync() -> None:
    """ctiedge's CoreShowChannels (ActionID cap-22), read by a server that has just started:
    caller 503 waits in Queue() and Bob's phone (Local/1002@sim-agents-...;1, AppQueue) rings."""
    channels = [m for m in Decoder().feed(trace_bytes("ctiedge"))
                if m.event == "CoreShowChannel" and m.fields.get("ActionID") == "cap-22"]
    entry = Message({"Event": "QueueEntry", "Queue": "support", "Position": "1", "Uniqueid": "1795449821.21166",
                     "Channel": "Local/s@cti-entry-00002957;2", "CallerIDNum": "13800000503", "Wait": "3"})
    model = CallModel(agents=AGENTS)
    out = model.resync(channels, [entry], now=1795449829.0)
    [pop] = [e for e in out if e.type == ev.CALL_OFFERED]
    assert (pop.agent, pop.linkedid, pop.data["offered_queue"]) == ("bob", "1795449821.21165", "support")
    assert pop.data["while_disconnected"] and pop.data["wait_so_far_s"] == 3.0
    again = model.resync(channels, [entry], now=1795449830.0)
    assert not [e for e in again if e.type == ev.CALL_OFFERED], "popped once"


def test_a_call_answered_and_ended_unseen_is_answered_when_app_queue_counted_it() -> None:
    """basic, cut while Bob rings; back after the whole call: no channel left, but Bob's CallsTaken
    in support went up by one — it was answered, not abandoned."""
    def cut_while_ringing() -> CallModel:
        model, _ = _until("basic", "AgentCalled")
        # What the login's QueueStatus told us about Bob before the call.
        model.apply(Message({"Event": "QueueMemberStatus", "Queue": "support", "MemberName": "Bob",
                             "Interface": "Local/1002@sim-agents/n", "CallsTaken": "6", "Status": "6", "Paused": "0"}))
        return model

    def bob_after(calls_taken: int) -> Message:
        return Message({"Event": "QueueMember", "Queue": "support", "Name": "Bob",
                        "Location": "Local/1002@sim-agents/n", "StateInterface": "Local/1002@sim-agents",
                        "Status": "1", "Paused": "0", "CallsTaken": str(calls_taken)})

    model = cut_while_ringing()
    out = model.resync([], [bob_after(7)], now=1795391540.0)
    [call] = model.ended.values()
    assert (call.outcome, call.agent, call.segments[0].reason) == ("answered", "Bob", "while_disconnected")
    assert [e.data["reason"] for e in out if e.type == ev.CALL_OFFER_WITHDRAWN and e.agent == "bob"] == ["call_ended"]
    assert model.queues["support"].answered == 1 and model.queues["support"].abandoned == 0
    model = cut_while_ringing()
    model.resync([], [bob_after(6)], now=1795391540.0)
    [gone] = model.ended.values()
    assert gone.outcome == "abandoned", "no call counted: the caller gave up"
