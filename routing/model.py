"""The snapshots routing decides over: an agent, a waiting call, what a call asks of an agent.

Plain frozen dataclasses, built by whoever holds the state (the Redis store, a test): the core
never fetches anything. Times are integer milliseconds on one clock, chosen by the caller.
Mappings and sets inside are treated as immutable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["AgentState", "AgentStatus", "Requirements", "WaitingCall"]

AgentStatus = Literal["logged_out", "ready", "not_ready", "reserved", "on_call", "wrap_up"]


@dataclass(frozen=True, slots=True)
class Requirements:
    """What an agent needs to take a call.

    An agent qualifies on skills by holding every one of ``skills`` at its minimum level, or any one
    of ``any_of`` (alternatives to ``skills``: with ``skills`` empty there is no skill condition at
    all, so widening can never narrow). ``groups``, when not empty, limits that to members of one of
    them. A member of an ``overflow_groups`` group qualifies whatever their skills and groups.
    ``language``, when set, binds every path, overflow included.
    """

    skills: Mapping[str, int] = field(default_factory=dict)
    any_of: Mapping[str, int] = field(default_factory=dict)
    language: str | None = None
    groups: frozenset[str] = frozenset()
    overflow_groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class AgentState:
    """``idle_since_ms`` is when a ready agent last became free: the longest idle goes first."""

    id: str
    skills: Mapping[str, int] = field(default_factory=dict)
    languages: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    status: AgentStatus = "logged_out"
    idle_since_ms: int = 0
    not_ready_reason: str | None = None


@dataclass(frozen=True, slots=True)
class WaitingCall:
    """A queued call. It keeps ``enqueued_at_ms`` across a RONA requeue, so it keeps its place.

    ``requirements`` is None for the entry point's, read from the config in force at each
    decision (an admin edit reaches calls already waiting); the IVR sets it only to ask for more.
    ``language`` is the caller's choice, used when the requirements name none.
    ``preferred_agent`` is the account manager (or whoever the IVR names); ``last_agent`` counts
    only if ``last_served_at_ms`` falls within the config's ``last_agent_window_s`` of enqueueing.
    """

    id: str
    entry_point: str
    tier: str
    enqueued_at_ms: int
    language: str | None = None
    requirements: Requirements | None = None
    preferred_agent: str | None = None
    last_agent: str | None = None
    last_served_at_ms: int | None = None
