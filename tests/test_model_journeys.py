"""Property: for any journey through queues and transfers, the segments are what happened.

Hypothesis draws a caller's journey (queue visits that time out, ring agents who do not
answer, are answered, end in a blind transfer to a queue or to an agent's extension, or
are abandoned); the events are written in the order and with the fields app_queue 22 and
the bridge code send them (as in the overflow and blindxfer captures), and the model's
segments and pushes are compared with the journey itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cti.ami.codec import Message
from cti.config import AgentConfig
from cti.model import events as ev
from cti.model.events import DomainEvent
from cti.model.reducer import CallModel

NAMES = ["Alice", "Bob", "Chen", "Dora", "Evan"]
AGENTS = [AgentConfig(id=n.lower(), name=n, interface=f"Local/{1001 + i}@agents", extension=str(1001 + i))
          for i, n in enumerate(NAMES)]
QUEUES = ["support", "sales", "billing"]


@dataclass
class Step:
    queue: str | None  # None: a blind transfer straight to an agent's extension
    no_answer: list[int]  # agents who ring and do not answer first
    end: str  # timeout | abandon | answered | xfer_queue | xfer_agent
    agent: int = 0
    wait: float = 1.0
    talk: float = 2.0


step = st.builds(
    Step,
    queue=st.sampled_from(QUEUES),
    no_answer=st.lists(st.integers(0, 4), max_size=2, unique=True),
    end=st.sampled_from(["timeout", "abandon", "answered", "xfer_queue", "xfer_agent"]),
    agent=st.integers(0, 4),
    wait=st.floats(0.5, 30),
    talk=st.floats(0.5, 300),
)


@dataclass
class Writer:
    """AMI events for one caller (Local channel pair, caller leg ;2 waits in the queues)."""

    t: float = 1000.0
    out: list[Message] = field(default_factory=list)
    n: int = 0
    leg: dict[str, str] = field(default_factory=lambda: {
        "Channel": "Local/s@entry-00000001;2", "Uniqueid": "1000.2", "Linkedid": "1000.1",
        "CallerIDNum": "13800000999", "CallerIDName": "Journey"})

    def emit(self, event: str, dt: float = 0.001, **fields: str) -> None:
        self.t += dt
        self.out.append(Message({"Event": event, "Timestamp": f"{self.t:.6f}", **fields}))

    def agent_leg(self, i: int) -> dict[str, str]:
        self.n += 1
        return {"Channel": f"Local/{1001 + i}@agents-{self.n:08x};1", "Uniqueid": f"2000.{self.n}",
                "Linkedid": "1000.1"}

    def member(self, i: int, queue: str) -> dict[str, str]:
        return {"Queue": queue, "MemberName": NAMES[i], "Interface": f"Local/{1001 + i}@agents/n"}

    def ring(self, i: int, queue: str) -> dict[str, str]:
        agent = self.agent_leg(i)
        self.emit("Newchannel", **agent)
        self.emit("AgentCalled", **self.leg, **self.member(i, queue), DestChannel=agent["Channel"])
        self.emit("DialBegin", **self.leg, DestChannel=agent["Channel"])
        return agent


def write(journey: list[Step]) -> tuple[list[Message], list[dict]]:
    """The events of ``journey`` and what happened, segment by segment."""
    w = Writer()
    w.emit("Newchannel", **{**w.leg, "Channel": "Local/s@entry-00000001;1", "Uniqueid": "1000.1"})
    w.emit("Newchannel", **w.leg)
    expect: list[dict] = []
    transferred_from: str | None = None
    for number, s in enumerate(journey):
        last = number == len(journey) - 1
        end = s.end if not last or s.end in ("timeout", "abandon", "answered") else "answered"
        if s.queue is None and end == "timeout":
            end = "abandon"  # no queue to time out of: the caller gives up while the agent rings
        seg = {"queue": s.queue, "agent": None, "outcome": None, "transferred_from": transferred_from,
               "wait_s": s.wait, "talk_s": None}
        joined = w.t
        if s.queue is not None:
            w.emit("QueueCallerJoin", **w.leg, Queue=s.queue, Position="1", Count="1")
            for i in s.no_answer:
                agent = w.ring(i, s.queue)
                w.emit("AgentRingNoAnswer", **w.leg, **w.member(i, s.queue), RingTime="1")
                w.emit("DialEnd", **w.leg, DestChannel=agent["Channel"], DialStatus="NOANSWER")
                w.emit("Hangup", **agent)
        if end == "abandon" and s.queue is None:
            w.t = joined + s.wait - 0.001
            seg["outcome"] = "abandoned"
            expect.append(seg)
            break
        if end in ("timeout", "abandon"):
            w.t = joined + s.wait
            w.emit("QueueCallerAbandon", 0, **w.leg, Queue=s.queue or "", Position="1",
                   HoldTime=str(int(s.wait)))
            w.emit("QueueCallerLeave", **w.leg, Queue=s.queue or "", Position="1")
            seg["outcome"] = "abandoned" if end == "abandon" else "unanswered"
            expect.append(seg)
            if end == "abandon":
                break
            w.emit("VarSet", **w.leg, Variable="QUEUESTATUS", Value="TIMEOUT")
            transferred_from = None
            continue
        # answered here
        if s.queue is not None:
            agent = w.ring(s.agent, s.queue)
            w.t = joined + s.wait
            w.emit("DialEnd", 0, **w.leg, DestChannel=agent["Channel"], DialStatus="ANSWER")
            w.emit("QueueCallerLeave", **w.leg, Queue=s.queue, Position="1")
            w.emit("AgentConnect", **w.leg, **w.member(s.agent, s.queue), HoldTime=str(int(s.wait)))
            w.emit("BridgeEnter", **agent, BridgeUniqueid="b")
        else:  # the transferee runs the agent's own extension, answers there
            agent = None
            w.t = joined + s.wait
            w.emit("Newexten", 0, **w.leg, Context="agents", Exten=str(1001 + s.agent), Application="Answer")
        seg.update(agent=NAMES[s.agent], outcome="answered", talk_s=s.talk)
        w.t += s.talk
        if end in ("xfer_queue", "xfer_agent"):
            nxt = journey[number + 1]
            to_agent = end == "xfer_agent"
            nxt.queue = None if to_agent else nxt.queue
            if agent is None:  # only an agent with a channel of their own can transfer
                agent = w.agent_leg(s.agent)
                w.emit("Newchannel", **agent)
            w.emit("BlindTransfer", 0, Result="Success", TransfererChannel=agent["Channel"],
                   TransfererUniqueid=agent["Uniqueid"], TransfereeChannel=w.leg["Channel"],
                   TransfereeUniqueid=w.leg["Uniqueid"], TransfereeLinkedid="1000.1",
                   Context="agents" if to_agent else "xfer-queue",
                   Extension=str(1001 + nxt.agent) if to_agent else nxt.queue or "", IsExternal="Yes")
            if s.queue is not None:
                w.emit("AgentComplete", **w.leg, **w.member(s.agent, s.queue), Reason="transfer",
                       HoldTime=str(int(s.wait)), TalkTime=str(int(s.talk)))
            w.emit("Hangup", **agent)
            seg["outcome"] = "transferred"
            transferred_from = NAMES[s.agent]
            expect.append(seg)
            continue
        if s.queue is not None:
            assert agent is not None
            w.emit("Hangup", 0, **agent)
            w.emit("AgentComplete", **w.leg, **w.member(s.agent, s.queue), Reason="agent",
                   HoldTime=str(int(s.wait)), TalkTime=str(int(s.talk)))
        expect.append(seg)
        break
    w.emit("Hangup", **w.leg)
    w.emit("Hangup", **{**w.leg, "Channel": "Local/s@entry-00000001;1", "Uniqueid": "1000.1"})
    return w.out, expect


@settings(max_examples=150, deadline=None)
@given(st.lists(step, min_size=1, max_size=5))
def test_segments_are_the_journey(journey: list[Step]) -> None:
    messages, expect = write(journey)
    model, out = CallModel(agents=AGENTS), list[DomainEvent]()
    for msg in messages:
        out += model.apply(msg)
    assert not model.calls and model.malformed == 0
    call = model.ended["1000.1"]
    got = [{"queue": s.queue, "agent": s.agent, "outcome": s.outcome, "transferred_from": s.transferred_from,
            "wait_s": s.wait_s, "talk_s": s.talk_s} for s in call.segments]
    assert len(got) == len(expect)
    for g, e in zip(got, expect, strict=True):
        assert {**g, "wait_s": None, "talk_s": None} == {**e, "wait_s": None, "talk_s": None}
        assert g["wait_s"] == pytest.approx(e["wait_s"], abs=0.05)
        assert (g["talk_s"] is None) == (e["talk_s"] is None)
        if e["talk_s"] is not None:
            assert g["talk_s"] == pytest.approx(e["talk_s"], abs=0.05)
    answered = [e for e in expect if e["agent"]]
    assert call.agent == (answered[0]["agent"] if answered else None), "owner: the first who answered"
    assert call.outcome == ("answered" if answered else expect[-1]["outcome"])
    if answered:
        first = expect.index(answered[0])
        assert call.wait_s == pytest.approx(sum(e["wait_s"] for e in expect[: first + 1]), abs=0.1)
    # Every agent who answered is told once per part that it ended; every pop is resolved.
    for name in NAMES:
        agent = name.lower()
        kinds = [e.type for e in out if e.agent == agent and e.type.startswith("call.")]
        parts = sum(1 for e in expect if e["agent"] == name)
        assert kinds.count(ev.CALL_ENDED) == parts
        assert kinds.count(ev.CALL_OFFERED) == kinds.count(ev.CALL_OFFER_WITHDRAWN) + kinds.count(ev.CALL_ANSWERED)
    assert all(m.call is None for m in model.members.values())
    queues = {q: 0 for q in QUEUES}
    for e in expect:
        if e["queue"]:
            queues[e["queue"]] += 1
    for name, visits in queues.items():
        q = model.queues.get(name)
        counted = q.answered + q.abandoned + q.unanswered if q else 0
        assert counted == visits, "each queue counts each visit once"
