"""A call's requirements at a given moment: which escalation step has fired and what it widened.

Pure in ``(call, config, now_ms)``: nothing is copied into the call at enqueue, so a config
edit reaches calls already waiting, and a call requeued after RONA (same ``enqueued_at_ms``)
resumes at the step its wait has reached.
"""

from __future__ import annotations

from dataclasses import dataclass

from routing.config import RoutingConfig
from routing.model import Requirements, WaitingCall

__all__ = ["MAX_WAIT_MS", "Effective", "effective", "next_escalation_ms", "preferred_agent", "wait_ms"]

#: Waits are clamped to this (about 31 years), which keeps every score below 2**53 (README).
MAX_WAIT_MS = 10**12


@dataclass(frozen=True, slots=True)
class Effective:
    """``step`` is how many escalation steps have fired; ``exclusive``: only ``preferred_agent`` may take it."""

    step: int
    wait_ms: int
    requirements: Requirements
    preferred_agent: str | None
    exclusive: bool


def wait_ms(call: WaitingCall, now_ms: int) -> int:
    """How long the call has waited, in 0 .. MAX_WAIT_MS (a clock behind the enqueue counts as 0)."""
    return min(max(now_ms - call.enqueued_at_ms, 0), MAX_WAIT_MS)


def preferred_agent(call: WaitingCall, config: RoutingConfig) -> str | None:
    """The account manager if the config lets it count, else the last agent if recent enough."""
    settings = config.preferred_agent
    if settings.account_manager and call.preferred_agent is not None:
        return call.preferred_agent
    window_ms = settings.last_agent_window_s * 1000
    if (window_ms and call.last_agent is not None and call.last_served_at_ms is not None
            and call.enqueued_at_ms - call.last_served_at_ms <= window_ms):
        return call.last_agent
    return None


def effective(call: WaitingCall, config: RoutingConfig, now_ms: int) -> Effective:
    """Apply, in order, every step of the call's entry point whose ``after_s`` the wait has reached.

    A step fires at exactly ``enqueued_at_ms + after_s * 1000``. Steps accumulate: alternatives and
    overflow groups are added (a skill listed twice keeps the lower level), ``min_level`` caps every
    level the call asks for, the lowest cap so far winning, and ``drop_preferred`` ends the
    preference. Raises KeyError for an entry point the config does not have.
    """
    entry = config.entry_points[call.entry_point]
    base = call.requirements if call.requirements is not None else entry.requires.build()
    waited = wait_ms(call, now_ms)
    fired = [step for step in entry.escalation if waited >= step.after_s * 1000]
    any_of = dict(base.any_of)
    overflow = set(base.overflow_groups)
    cap = 5
    dropped = False
    for step in fired:
        for skill, level in step.any_of.items():
            any_of[skill] = min(level, any_of.get(skill, level))
        overflow.update(step.overflow_groups)
        if step.min_level is not None:
            cap = min(cap, step.min_level)
        dropped = dropped or step.drop_preferred
    requirements = Requirements(
        skills={skill: min(level, cap) for skill, level in base.skills.items()},
        any_of={skill: min(level, cap) for skill, level in any_of.items()},
        language=base.language if base.language is not None else call.language,
        groups=base.groups,
        overflow_groups=frozenset(overflow),
    )
    preferred = None if dropped else preferred_agent(call, config)
    return Effective(
        step=len(fired), wait_ms=waited, requirements=requirements, preferred_agent=preferred,
        exclusive=preferred is not None and entry.wait_for_preferred,
    )


def next_escalation_ms(call: WaitingCall, config: RoutingConfig, now_ms: int) -> int | None:
    """When the call's next step fires (for the escalation tick), None if every step has."""
    for step in config.entry_points[call.entry_point].escalation:
        at = call.enqueued_at_ms + step.after_s * 1000
        if at > now_ms:
            return at
    return None
