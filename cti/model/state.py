"""The live state the reducer keeps: calls with their legs, queue members, queues.

Plain mutable records owned by :class:`cti.model.reducer.CallModel`; nothing
outside the reducer writes them. ``Call.snapshot()`` is what leaves the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["answered", "abandoned", "unanswered"]


@dataclass(slots=True)
class Leg:
    """One channel of a call (a ``Uniqueid``)."""

    uniqueid: str
    channel: str
    caller_num: str | None = None
    caller_name: str | None = None


@dataclass(slots=True)
class Offer:
    """The call ringing one queue member (an ``AgentCalled`` not yet resolved)."""

    interface: str
    member_name: str
    agent_id: str | None
    queue: str
    at: float | None


@dataclass(slots=True)
class Call:
    """A call as the caller lives it: every leg that shares one ``Linkedid``."""

    linkedid: str
    legs: dict[str, Leg] = field(default_factory=dict)
    caller_num: str | None = None
    caller_name: str | None = None
    queue: str | None = None  # first queue joined
    current_queue: str | None = None  # the queue it waits in now
    position: int | None = None
    priority: int | None = None
    arrived_at: float | None = None
    queued_at: float | None = None
    offered_at: float | None = None
    answered_at: float | None = None
    left_queue_at: float | None = None
    completed_at: float | None = None  # the agent's part ended (AgentComplete)
    ended_at: float | None = None
    agent: str | None = None  # MemberName as Asterisk reported it
    agent_id: str | None = None
    agent_interface: str | None = None
    hold_time: float | None = None  # app_queue's own HoldTime, for captures without Timestamp
    talk_time: float | None = None  # app_queue's own TalkTime
    abandoned: bool = False
    ended: bool = False
    seen_gap: bool = False  # part of its life fell in an AMI outage
    offers: dict[str, Offer] = field(default_factory=dict)
    vars: dict[str, str] = field(default_factory=dict)

    @property
    def outcome(self) -> Outcome | None:
        """None for a call that never joined a queue (internal, outbound, IVR only)."""
        if self.answered_at is not None or self.agent is not None:
            return "answered"
        if self.abandoned:
            return "abandoned"
        if self.queue is not None:
            # Left the queue with no agent and without hanging up in it (timeout,
            # empty queue), or ended during an outage while still waiting.
            return "abandoned" if self.current_queue is not None else "unanswered"
        return None

    @property
    def wait_s(self) -> float | None:
        """Queue join to answer or leaving; from timestamps, else app_queue's HoldTime."""
        end = self.answered_at if self.answered_at is not None else self.left_queue_at
        if self.queued_at is not None and end is not None:
            return round(max(0.0, end - self.queued_at), 3)
        return self.hold_time

    @property
    def talk_s(self) -> float | None:
        if self.answered_at is None:
            return self.talk_time if self.agent is not None else None
        end = self.completed_at if self.completed_at is not None else self.ended_at
        if end is None:
            return self.talk_time
        return round(max(0.0, end - self.answered_at), 3)

    def snapshot(self) -> dict[str, Any]:
        return {
            "linkedid": self.linkedid,
            "caller": self.caller_num,
            "caller_name": self.caller_name,
            "queue": self.queue,
            "position": self.position,
            "priority": self.priority,
            "agent": self.agent,
            "agent_id": self.agent_id,
            "outcome": self.outcome if self.ended else None,
            "wait_s": self.wait_s,
            "talk_s": self.talk_s,
            "arrived_at": self.arrived_at,
            "queued_at": self.queued_at,
            "offered_at": self.offered_at,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "ended": self.ended,
            "gap": self.seen_gap,
        }


@dataclass(slots=True)
class Member:
    """A queue member (an agent's device in one or more queues)."""

    interface: str
    name: str
    agent_id: str | None
    state_interface: str | None = None
    status: int | None = None  # AST_DEVICE_* as app_queue reports it
    paused: bool = False
    paused_reason: str = ""
    queues: set[str] = field(default_factory=set)
    call: str | None = None  # Linkedid of the call the member is talking on
    calls_taken: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "name": self.name,
            "interface": self.interface,
            "status": DEVICE_STATUS.get(self.status or 0, "unknown"),
            "paused": self.paused,
            "paused_reason": self.paused_reason,
            "queues": sorted(self.queues),
            "call": self.call,
            "calls_taken": self.calls_taken,
        }


@dataclass(slots=True)
class Queue:
    name: str
    waiting: dict[str, int] = field(default_factory=dict)  # Linkedid -> position
    answered: int = 0
    abandoned: int = 0
    unanswered: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "waiting": len(self.waiting),
            "answered": self.answered,
            "abandoned": self.abandoned,
            "unanswered": self.unanswered,
        }


#: app_queue's member Status values (enum ast_device_state).
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
