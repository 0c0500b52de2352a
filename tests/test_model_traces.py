"""The call model on real Asterisk 22 captures: calls, queues, agents, outcomes, pushes."""

from __future__ import annotations

import random

import pytest

from cti.ami.codec import Decoder
from cti.config import AgentConfig
from cti.model import events as ev
from cti.model.events import DomainEvent
from cti.model.reducer import CallModel
from cti.replay import replay_chunks
from tests.traces import NAMES, trace_bytes

AGENTS = [
    AgentConfig(id="alice", name="Alice", interface="Local/1001@sim-agents"),
    AgentConfig(id="bob", name="Bob", interface="Local/1002@sim-agents"),
    AgentConfig(id="chen", name="Chen", interface="Local/1003@sim-agents"),
]


def run(name: str, chunk: int | None = None) -> tuple[CallModel, list[DomainEvent]]:
    data = trace_bytes(name)
    model, out, decoder = CallModel(agents=AGENTS), [], Decoder()
    rnd = random.Random(name)
    pos = 0
    while pos < len(data):
        step = chunk or rnd.randint(1, 4096)
        for msg in decoder.feed(data[pos : pos + step]):
            out += model.apply(msg)
        pos += step
    return model, out


def rows(name: str) -> list[dict]:
    return list(replay_chunks([trace_bytes(name)], agents=AGENTS))


def test_basic_one_answered_call() -> None:
    [row] = rows("basic")
    assert row == {
        "linkedid": "1795391524.70", "caller": "13800000001", "caller_name": "Caller", "queue": "support",
        "agent": "Bob", "outcome": "answered", "wait_s": pytest.approx(1.003, abs=0.01),
        "talk_s": pytest.approx(4.507, abs=0.01), "ended": True,
        "segments": [{
            "queue": "support", "joined_at": pytest.approx(1795391525.686, abs=0.01),
            "left_at": pytest.approx(1795391526.688, abs=0.01), "outcome": "answered", "reason": None,
            "agent": "Bob", "agent_id": "bob", "wait_s": pytest.approx(1.003, abs=0.01),
            "talk_s": pytest.approx(4.507, abs=0.01), "position": 1, "transferred_from": None,
        }],
    }


def test_basic_pushes_offer_answer_end_to_bob_in_order() -> None:
    model, out = run("basic", chunk=7)
    bob = [e for e in out if e.agent == "bob" and e.type.startswith("call.")]
    assert [e.type for e in bob] == [ev.CALL_OFFERED, ev.CALL_ANSWERED, ev.CALL_ENDED]
    offered = bob[0].data
    assert offered["caller"] == "13800000001" and offered["queue"] == "support"
    assert offered["position"] == 1 and offered["wait_so_far_s"] == pytest.approx(0.0009, abs=0.01)
    assert not model.calls, "the call must be over"
    assert model.members["local/1002@sim-agents/n"].calls_taken == 7


def test_vip_trace_goes_to_vip_queue() -> None:
    [row] = rows("vip")
    assert (row["caller"], row["queue"], row["agent"], row["outcome"]) == ("8613900000001", "vip", "Chen", "answered")


def test_burst_eight_answered_vip_first() -> None:
    result = rows("burst")
    assert len(result) == 8
    assert all(r["outcome"] == "answered" for r in result)
    assert {r["agent"] for r in result} == {"Alice", "Bob", "Chen"}
    vip = next(r for r in result if r["caller"] == "8613900000001")
    assert vip["wait_s"] == min(r["wait_s"] for r in result)
    model, out = run("burst")
    answered = [e.data["caller"] for e in out if e.type == ev.CALL_ANSWERED]
    offered_before_vip = {e.data["caller"] for e in out[: next(
        i for i, e in enumerate(out) if e.type == ev.CALL_QUEUED and e.data["caller"] == "8613900000001")]
        if e.type == ev.CALL_OFFERED}
    waiting_then = [c for c in answered if c not in offered_before_vip]
    assert waiting_then[0] == "8613900000001", "the VIP beats every caller still waiting when it joined"
    assert model.queues["support"].answered == 8 and not model.queues["support"].waiting


def test_burst_agent_complete_without_channel_fields_still_lands() -> None:
    model, _ = run("burst")
    assert all(m.call is None for m in model.members.values())
    assert all(c.talk_s and c.talk_s > 4 for c in model.ended.values())


def test_abandon_exactly_one_abandoned() -> None:
    result = rows("abandon")
    outcomes = sorted(r["outcome"] for r in result)
    assert outcomes == ["abandoned"] + ["answered"] * 4
    [gone] = [r for r in result if r["outcome"] == "abandoned"]
    assert gone["caller"] == "13800000299" and gone["agent"] is None and gone["talk_s"] is None
    assert gone["wait_s"] == pytest.approx(3.2, abs=0.1)
    model, out = run("abandon")
    assert model.queues["support"].abandoned == 1 and model.queues["support"].answered == 4
    assert [e.data["reason"] for e in out if e.type == ev.CALL_LEFT_QUEUE] == ["abandoned"]


def test_cti_trace_keeps_ivr_variables_and_follows_the_redirected_dials() -> None:
    model, out = run("cti")
    [call] = model.ended.values()
    assert call.caller_num == "13800000301"
    assert call.vars["CTI_SKILL"] == "billing" and call.vars["CTI_PRIORITY"] == "5"
    assert call.queue is None, "never joined an app_queue queue"
    # Redirected to cti-connect twice: Dial to 1009 (Dora) ends NOANSWER after 15 s, Dial to 1001 ANSWER after 1 s.
    # 1009 is no agent of ours and no queue member in this capture: its ring is not a segment.
    [alice] = call.segments
    assert (alice.queue, alice.outcome, alice.agent_id, alice.wait_s) == (
        None, "answered", "alice", pytest.approx(1.0, abs=0.01))
    assert alice.talk_s == pytest.approx(1795391637.138 - 1795391632.631, abs=0.01)
    assert call.outcome == "answered" and call.agent_id == "alice"
    pushed = [e.type for e in out if e.agent == "alice" and e.type.startswith("call.")]
    assert pushed == [ev.CALL_OFFERED, ev.CALL_ANSWERED, ev.CALL_ENDED]
    dora = AgentConfig(id="dora", name="Dora", interface="Local/1009@sim-agents")
    [call] = [r for r in replay_chunks([trace_bytes("cti")], agents=[*AGENTS, dora])]
    first, second = call["segments"]
    assert (first["agent"], first["outcome"], first["reason"]) == (None, "unanswered", "ring_no_answer")
    assert first["wait_s"] == pytest.approx(15.0, abs=0.01) and second["agent_id"] == "alice"


@pytest.mark.parametrize("name", NAMES)
def test_without_timestamps_queue_times_are_used(name: str) -> None:
    lines = trace_bytes(name).split(b"\r\n")
    data = b"\r\n".join(line for line in lines if not line.startswith(b"Timestamp: "))
    for row in replay_chunks([data], agents=AGENTS):
        if row["outcome"] == "answered" and row["queue"]:
            assert row["wait_s"] is not None and row["talk_s"] in (4.0, 5.0)  # app_queue's TalkTime
        if row["outcome"] == "abandoned":
            assert row["wait_s"] == 3.0


@pytest.mark.parametrize("name", NAMES)
def test_every_call_ends_once(name: str) -> None:
    _, out = run(name)
    ended = [e.linkedid for e in out if e.type == ev.CALL_FINISHED]
    arrived = [e.linkedid for e in out if e.type == ev.CALL_ARRIVED]
    assert sorted(ended) == sorted(arrived) and len(set(ended)) == len(ended)


@pytest.mark.parametrize("name", NAMES)
def test_live_calls_survive_the_store_encoding(name: str) -> None:
    """The model store writes calls with orjson's dataclass encoding: it must read back as the same call,
    and carry what call_to_dict says a call is, at every step of every capture."""
    import json

    import orjson

    from cti.model.state import call_from_dict, call_to_dict

    model, decoder = CallModel(agents=AGENTS), Decoder()
    checked = 0
    for msg in decoder.feed(trace_bytes(name)):
        model.apply(msg)
        for call in model.calls.values():
            stored = orjson.loads(orjson.dumps(call))
            assert stored == json.loads(json.dumps(call_to_dict(call)))
            assert call_from_dict(stored) == call
            checked += 1
    assert checked


def holds_by_caller(name: str) -> tuple[dict[str, list[tuple]], list[DomainEvent]]:
    model, out = run(name)
    return {c.caller_num or "": [(h.outcome, h.reason, h.agent_id, round(h.wait_s or 0, 1)) for h in c.holds]
            for c in model.ended.values()}, out


def test_cti_hold_is_one_wait_across_a_ring_not_answered() -> None:
    """Dora's 15 s ring sends the caller back to the hold (a second CtiHold): still one wait, answered by alice."""
    holds, out = holds_by_caller("cti")
    assert holds["13800000301"] == [("answered", None, "alice", 23.3)]
    assert [e.type for e in out].count(ev.CALL_HELD) == 1


def test_cti_edge_holds_end_abandoned_by_fallback_or_answered() -> None:
    holds, out = holds_by_caller("ctiedge")
    assert holds["13800000501"] == [], "hung up in the IVR: never held"
    assert holds["13800000502"] == [("abandoned", None, None, 6.7)]
    assert holds["13800000503"] == [("unanswered", "fallback", None, 4.0)], "then answered in app_queue"
    assert holds["13800000504"] == [("abandoned", None, None, 11.7)]
    assert holds["13800000505"] == [("answered", None, "bob", 5.8)], "alice's ring cancelled, bob answered"
    assert [e.type for e in out].count(ev.CALL_HELD) == 4
