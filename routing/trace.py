"""What a decision says about itself: the step that matched, the score, who was passed over and why.

A supervisor asks "why did this caller wait while Bob was free?"; the answer is in here
(``Passed("bob", "level_too_low")``), so the adapter only has to log or show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from routing.model import Requirements

__all__ = ["Decision", "Passed", "Reason", "Trace"]

Reason = Literal[
    # the agent's state
    "logged_out", "not_ready", "reserved", "on_call", "wrap_up",
    # the call's requirements at its current escalation step
    "waiting_for_preferred", "language", "not_in_group", "missing_skill", "level_too_low",
    # eligible, but something ranked higher
    "outranked", "taken",
    # the call names something the config in force does not have
    "unknown_entry_point", "unknown_tier",
]


@dataclass(frozen=True, slots=True)
class Passed:
    """An agent (or a call) that was considered and not chosen."""

    id: str
    reason: Reason


@dataclass(frozen=True, slots=True)
class Trace:
    """``step`` is the latest escalation step that had fired (0 = none, as queued).

    ``agents_passed`` is every other agent considered for the call (sorted by id);
    ``calls_passed`` every other call considered for the agent (in rank order) when the decision
    was made from the agent's side. ``score`` is the chosen call's (README: score formulas).
    """

    step: int
    wait_ms: int
    score: int
    requirements: Requirements
    preferred_agent: str | None
    waits_for_preferred: bool
    agents_passed: tuple[Passed, ...] = ()
    calls_passed: tuple[Passed, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """Offer ``call_id`` to ``agent_id``: the store reserves the pair, the adapter rings the agent."""

    call_id: str
    agent_id: str
    trace: Trace

    @property
    def score(self) -> int:
        return self.trace.score
