"""Domain events: what the call model tells the rest of the server.

The reducer turns AMI events into these. ``data`` is a JSON-ready snapshot taken
when the event was made, so a consumer may keep it across awaits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["CALL_ANSWERED", "CALL_ENDED", "CALL_FINISHED", "CALL_OFFERED", "CALL_QUEUED", "DomainEvent"]

CALL_ARRIVED: Final = "call.arrived"
CALL_QUEUED: Final = "call.queued"
CALL_HELD: Final = "call.held"  # CTI routing mode: the caller waits for the router (UserEvent CtiHold)
CALL_OFFERED: Final = "call.offered"
CALL_OFFER_WITHDRAWN: Final = "call.offer_withdrawn"
CALL_ANSWERED: Final = "call.answered"
CALL_LEFT_QUEUE: Final = "call.left_queue"
CALL_UPDATED: Final = "call.updated"  # the customer record arrived late (Redis was away)
CALL_ENDED: Final = "call.ended"  # an agent's part of a call is over (pushed to that agent)
CALL_FINISHED: Final = "call.finished"  # the whole call is over: one per call, for KPIs and replay
AGENT_STATE: Final = "agent.state"


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """``agent`` is the configured agent id the event is for (its push channel), or None."""

    type: str
    linkedid: str | None
    ts: float | None
    data: dict[str, Any] = field(default_factory=dict)
    agent: str | None = None
