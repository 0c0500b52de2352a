"""The live state the reducer keeps: calls with their legs and segments, queue members, queues.

Plain mutable records owned by :class:`cti.model.reducer.CallModel`; nothing
outside the reducer writes them. ``snapshot()`` is what leaves the model.

A call's life is a list of :class:`Segment` s: each queue visit, and each
hand-off straight to an agent (a blind transfer to an extension, a dial to an
agent's device). The call's own figures are derived from them, so a call that
times out of one queue and is answered in another, or is transferred, is
counted once in each place with its own outcome.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from cti.model.ivr import abandoned_in_ivr, ivr_part

Outcome = Literal["answered", "abandoned", "unanswered"]
#: What ``call.finished`` says over the whole call: the segments' outcome, or ``abandoned_ivr`` for a
#: caller who hung up in the IVR before reaching a queue or an agent (apart from queue abandons).
FinalOutcome = Literal["answered", "abandoned", "unanswered", "abandoned_ivr"]
SegmentOutcome = Literal["answered", "abandoned", "unanswered", "transferred"]


@dataclass(slots=True)
class Leg:
    """One channel of a call (a ``Uniqueid``)."""

    uniqueid: str
    channel: str
    caller_num: str | None = None
    caller_name: str | None = None


@dataclass(slots=True)
class Offer:
    """The call ringing one agent: an ``AgentCalled``, or a direct dial / transfer to an agent."""

    interface: str
    member_name: str
    agent_id: str | None
    queue: str | None  # None: not app_queue's (resolved by Dial/Bridge events, not Agent* ones)
    at: float | None
    device: str = ""  # channel name prefix of the agent's phone, lower case
    exten: tuple[str, str] | None = None  # (context, exten) a blind transfer sent the caller to


@dataclass(slots=True)
class Segment:
    """One queue visit, or one direct hand-off to an agent (``queue`` None)."""

    queue: str | None
    joined_at: float | None
    leg: str | None = None  # Uniqueid of the channel that waits (its hangup is an abandon)
    position: int | None = None
    left_at: float | None = None  # stopped waiting: answered, left the queue, hung up
    outcome: SegmentOutcome | None = None
    reason: str | None = None  # unanswered: timeout, leaveempty, ...; transferred: blind, attended
    agent: str | None = None  # who answered, as Asterisk names the member
    agent_id: str | None = None
    agent_interface: str | None = None
    answered_at: float | None = None
    completed_at: float | None = None  # the agent's part ended (AgentComplete, transfer, hangup)
    transferred_from: str | None = None
    transferred_from_id: str | None = None
    hold_time: float | None = None  # app_queue's HoldTime, for captures without Timestamp
    talk_time: float | None = None  # app_queue's TalkTime
    left_pending: bool = False  # QueueCallerAbandon seen: a QUEUESTATUS may still say timeout
    notified: bool = False  # the agent was told their part ended

    @property
    def waiting(self) -> bool:
        return self.outcome is None and self.left_at is None

    @property
    def talking(self) -> bool:
        return self.outcome == "answered" and self.completed_at is None

    @property
    def wait_s(self) -> float | None:
        end = self.answered_at if self.answered_at is not None else self.left_at
        if self.joined_at is not None and end is not None:
            return round(max(0.0, end - self.joined_at), 3)
        return self.hold_time

    @property
    def talk_s(self) -> float | None:
        if self.answered_at is None:
            return self.talk_time if self.agent is not None else None
        if self.completed_at is None:
            return self.talk_time
        return round(max(0.0, self.completed_at - self.answered_at), 3)

    def snapshot(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "joined_at": self.joined_at,
            "left_at": self.left_at,
            "outcome": self.outcome,
            "reason": self.reason,
            "agent": self.agent,
            "agent_id": self.agent_id,
            "wait_s": self.wait_s,
            "talk_s": self.talk_s,
            "position": self.position,
            "transferred_from": self.transferred_from,
        }


@dataclass(slots=True)
class Hold:
    """A wait for the CTI router (CTI routing mode): from the first ``UserEvent CtiHold`` until an agent
    answers, the caller hangs up, or the router lets the caller go to app_queue (``CtiFallback``).

    Apart from the segments: the rings it brings are hand-off segments of their own, and a ring not
    answered sends the caller back to the same hold (a fresh CtiHold), not to a new one. The KPIs count
    it as a visit of its entry point (docs/kpis.md).
    """

    entry: str | None  # the CtiHold's ``Entry`` if it names one (else the router's: CTI_ENTRY, its default)
    joined_at: float | None
    leg: str | None = None  # Uniqueid of the held channel
    left_at: float | None = None
    outcome: Outcome | None = None
    reason: str | None = None  # unanswered: fallback
    agent_id: str | None = None

    @property
    def wait_s(self) -> float | None:
        if self.joined_at is not None and self.left_at is not None:
            return round(max(0.0, self.left_at - self.joined_at), 3)
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"entry": self.entry, "leg": self.leg, "joined_at": self.joined_at, "left_at": self.left_at,
                "outcome": self.outcome, "reason": self.reason, "agent_id": self.agent_id, "wait_s": self.wait_s}


@dataclass(slots=True)
class Transfer:
    """A transfer away from an agent whose destination is not known yet."""

    from_name: str | None
    from_id: str | None
    at: float | None
    kind: str  # blind, attended


@dataclass(slots=True)
class Call:
    """A call as the caller lives it: every leg that shares one ``Linkedid``."""

    linkedid: str
    legs: dict[str, Leg] = field(default_factory=dict)
    caller_num: str | None = None
    caller_name: str | None = None
    current_queue: str | None = None  # the queue it waits in now
    position: int | None = None
    priority: int | None = None
    arrived_at: float | None = None
    offered_at: float | None = None
    ended_at: float | None = None
    ended: bool = False
    seen_gap: bool = False  # part of its life fell in an AMI outage
    segments: list[Segment] = field(default_factory=list)
    offers: dict[str, Offer] = field(default_factory=dict)
    vars: dict[str, str] = field(default_factory=dict)
    transfer: Transfer | None = None  # a transfer whose destination is still to come
    merged_into: str | None = None  # a consult call an attended transfer folded into another
    holds: list[Hold] = field(default_factory=list)  # CTI routing mode's waits for the router

    # --- derived from the segments ------------------------------------------------------------

    def involves(self, agent_id: str) -> bool:
        """The agent is on it, was on it, or it rings them now: what an agent's token may see and act on."""
        return (any(s.agent_id == agent_id for s in self.segments)
                or any(o.agent_id == agent_id for o in self.offers.values()))

    @property
    def first_queued(self) -> Segment | None:
        return next((s for s in self.segments if s.queue is not None), None)

    @property
    def owner(self) -> Segment | None:
        """The segment of the first agent who answered: first-contact ownership."""
        return next((s for s in self.segments if s.answered_at is not None or s.agent is not None), None)

    @property
    def current(self) -> Segment | None:
        """The open segment: waiting, ringing or talking."""
        if self.segments:
            last = self.segments[-1]
            if last.waiting or last.talking:
                return last
        return None

    @property
    def held(self) -> Hold | None:
        """The router's wait the caller is in now (CTI routing mode)."""
        if self.holds and self.holds[-1].outcome is None:
            return self.holds[-1]
        return None

    @property
    def talking(self) -> Segment | None:
        """The segment whose agent is on the call now."""
        return next((s for s in reversed(self.segments) if s.talking), None)

    @property
    def queue(self) -> str | None:
        """First queue joined."""
        first = self.first_queued
        return first.queue if first else None

    @property
    def queued_at(self) -> float | None:
        first = self.first_queued
        return first.joined_at if first else None

    @property
    def agent(self) -> str | None:
        owner = self.owner
        return owner.agent if owner else None

    @property
    def agent_id(self) -> str | None:
        owner = self.owner
        return owner.agent_id if owner else None

    @property
    def answered_at(self) -> float | None:
        owner = self.owner
        return owner.answered_at if owner else None

    @property
    def outcome(self) -> Outcome | None:
        """Over the whole call; None for a call that never queued nor reached an agent."""
        if not self.segments:
            return None
        if any(s.outcome in ("answered", "transferred") or s.agent is not None for s in self.segments):
            return "answered"
        last = self.segments[-1]
        if last.outcome == "abandoned" or (last.waiting and self.ended):
            return "abandoned"
        return "unanswered"

    @property
    def abandoned_in_ivr(self) -> bool:
        """Ended without a segment (no queue, no agent rang) while an IVR flow ran: see
        :func:`cti.model.ivr.abandoned_in_ivr`. A cheap test first: most calls have no ``CTI_*`` variable."""
        return (self.ended and not self.segments and not self.holds and bool(self.vars)
                and abandoned_in_ivr(self.vars))

    @property
    def final_outcome(self) -> FinalOutcome | None:
        """:attr:`outcome`, with ``abandoned_ivr`` for a call that never left the IVR alive.

        ``outcome`` itself stays the segments' (``cti replay`` and the simulator's records compare it)."""
        outcome = self.outcome
        if outcome is None and self.abandoned_in_ivr:
            return "abandoned_ivr"
        return outcome

    @property
    def wait_s(self) -> float | None:
        """First join to the first answer (or to leaving the last segment)."""
        if not self.segments:
            return None
        first, owner = self.segments[0], self.owner
        end_seg = owner if owner is not None else self.segments[-1]
        end = end_seg.answered_at if owner is not None else end_seg.left_at
        if first.joined_at is not None and end is not None:
            return round(max(0.0, end - first.joined_at), 3)
        stop = self.segments.index(end_seg) + 1
        holds = [s.hold_time for s in self.segments[:stop] if s.hold_time is not None]
        return round(sum(holds), 3) if holds else None

    @property
    def talk_s(self) -> float | None:
        talks = [t for t in (s.talk_s for s in self.segments) if t is not None]
        return round(sum(talks), 3) if talks else None

    def snapshot(self) -> dict[str, Any]:
        talking = self.talking
        outcome = self.final_outcome if self.ended else self.outcome
        return {
            "linkedid": self.linkedid,
            "caller": self.caller_num,
            "caller_name": self.caller_name,
            "queue": self.queue,
            "current_queue": self.current_queue,
            "position": self.position,
            "priority": self.priority,
            "agent": self.agent,
            "agent_id": self.agent_id,
            "current_agent_id": talking.agent_id if talking else None,
            "outcome": outcome if self.ended or outcome == "answered" else None,
            "wait_s": self.wait_s,
            "talk_s": self.talk_s,
            "arrived_at": self.arrived_at,
            "queued_at": self.queued_at,
            "offered_at": self.offered_at,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "ended": self.ended,
            "gap": self.seen_gap,
            "segments": [s.snapshot() for s in self.segments],
            **({"holds": [h.snapshot() for h in self.holds]} if self.holds else {}),
            "ivr": ivr_part(self.vars) if self.vars else None,
        }


@dataclass(slots=True)
class Membership:
    """A member's standing in one queue: app_queue keeps pause and counts per queue."""

    paused: bool = False
    paused_reason: str = ""
    calls_taken: int = 0
    penalty: int | None = None

    def snapshot(self) -> dict[str, Any]:
        return {"paused": self.paused, "paused_reason": self.paused_reason, "calls_taken": self.calls_taken,
                "penalty": self.penalty}


@dataclass(slots=True)
class Member:
    """A queue member (an agent's device in one or more queues)."""

    interface: str
    name: str
    agent_id: str | None
    state_interface: str | None = None
    status: int | None = None  # AST_DEVICE_* as app_queue reports it: one device, so one status
    queues: dict[str, Membership] = field(default_factory=dict)
    call: str | None = None  # Linkedid of the call the member is talking on
    last_call: str | None = None  # for an AgentComplete without channel fields after the hangup
    shown: str | None = None  # the state last marked, and since when
    since: float | None = None

    @property
    def state(self) -> str:
        """The state an agent's screen shows, in the vocabulary CTI mode uses too (docs/events.md): a
        phone that is off or in no queue is logged out; on a call or ringing goes before paused (a
        member paused during a call is still on it); then paused everywhere is not ready."""
        status = self.status or 0
        if not self.queues or status in _GONE:
            return "logged_out"
        if self.call is not None or status in _TALKING:
            return "on_call"
        if status in _RINGING:
            return "offered"
        return "not_ready" if self.paused else "ready"

    def mark(self, ts: float | None) -> None:
        """Remember when the shown state began (call before each snapshot the model pushes)."""
        state = self.state
        if state != self.shown:
            self.shown, self.since = state, ts if ts is not None else self.since

    @property
    def paused(self) -> bool:
        """Paused overall only when paused in every queue it is in: otherwise it still takes calls."""
        return bool(self.queues) and all(m.paused for m in self.queues.values())

    @property
    def paused_reason(self) -> str:
        reasons = {m.paused_reason for m in self.queues.values() if m.paused}
        return reasons.pop() if self.paused and len(reasons) == 1 else ""

    @property
    def calls_taken(self) -> int:
        return sum(m.calls_taken for m in self.queues.values())

    def snapshot(self) -> dict[str, Any]:
        state = self.state
        return {
            "agent_id": self.agent_id,
            "name": self.name,
            "interface": self.interface,
            "status": DEVICE_STATUS.get(self.status or 0, "unknown"),
            "paused": self.paused,
            "paused_reason": self.paused_reason,
            "paused_in": sorted(q for q, m in self.queues.items() if m.paused),
            "queues": sorted(self.queues),
            "memberships": {q: m.snapshot() for q, m in sorted(self.queues.items())},
            "call": self.call,
            "calls_taken": self.calls_taken,
            "mode": "observe",
            "state": state,
            "reason": (self.paused_reason or None) if state == "not_ready" else None,
            "since": self.since,
        }


@dataclass(slots=True)
class Queue:
    """Counts are per visit: a call that visits two queues counts in each with its own outcome."""

    name: str
    waiting: dict[str, int] = field(default_factory=dict)  # Linkedid -> position
    answered: int = 0
    abandoned: int = 0
    unanswered: int = 0
    transferred_in: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "waiting": len(self.waiting),
            "answered": self.answered,
            "abandoned": self.abandoned,
            "unanswered": self.unanswered,
            "transferred_in": self.transferred_in,
        }


#: app_queue's member Status values (enum ast_device_state).
_GONE = frozenset({4, 5})  # invalid, unavailable
_TALKING = frozenset({2, 3, 7, 8})  # in use, busy, ringing while in use, on hold
_RINGING = frozenset({6})
DEVICE_STATUS = {
    0: "unknown",
    1: "not_in_use",
    2: "in_use",
    3: "busy",
    4: "invalid",
    5: "unavailable",
    6: "ringing",
    7: "ringinuse",
    8: "onhold",
}


def call_to_dict(call: Call) -> dict[str, Any]:
    """Everything the model knows of a live call, as JSON-ready data (kept in Redis for restarts)."""
    return asdict(call)


def call_from_dict(data: dict[str, Any]) -> Call:
    """The inverse of :func:`call_to_dict`; raises ``TypeError``/``KeyError`` on data of another shape."""
    fields = dict(data)
    fields["legs"] = {uid: Leg(**leg) for uid, leg in fields.get("legs", {}).items()}
    fields["segments"] = [Segment(**seg) for seg in fields.get("segments", [])]
    offers = {}
    for key, raw in fields.get("offers", {}).items():
        offer = dict(raw)
        offer["exten"] = tuple(offer["exten"]) if offer.get("exten") else None
        offers[key] = Offer(**offer)
    fields["offers"] = offers
    fields["transfer"] = Transfer(**fields["transfer"]) if fields.get("transfer") else None
    fields["holds"] = [Hold(**hold) for hold in fields.get("holds", [])]
    return Call(**fields)
