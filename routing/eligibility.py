"""Whether an agent may take a call with given requirements, and which index keys find them.

The checks run in a fixed order so the first failing one is the reason a trace reports:
status, then language, then groups, then skills (an overflow group overrides the last two).
"""

from __future__ import annotations

from dataclasses import dataclass

from routing.model import AgentState, AgentStatus, Requirements
from routing.trace import Reason

__all__ = [
    "ALTERNATIVE",
    "OVERFLOW",
    "SKILLS",
    "Match",
    "agent_index_keys",
    "index_keys",
    "match",
    "status_reason",
]

#: How an agent qualified, best first: ``best_proficiency`` prefers a higher path.
SKILLS, ALTERNATIVE, OVERFLOW = 2, 1, 0

_STATUS_REASON: dict[AgentStatus, Reason] = {
    "logged_out": "logged_out", "not_ready": "not_ready", "reserved": "reserved",
    "on_call": "on_call", "wrap_up": "wrap_up",
}


@dataclass(frozen=True, slots=True)
class Match:
    """``proficiency``: the sum of the agent's levels in the required skills (path SKILLS), their best
    level among the alternatives they meet (ALTERNATIVE), or 0 (OVERFLOW)."""

    path: int
    proficiency: int


def status_reason(agent: AgentState) -> Reason | None:
    """None when the agent can be offered a call now."""
    return None if agent.status == "ready" else _STATUS_REASON[agent.status]


def match(agent: AgentState, req: Requirements) -> Match | Reason:
    """How the agent meets ``req``, or why not. Status is not looked at (see :func:`status_reason`)."""
    if req.language is not None and req.language not in agent.languages:
        return "language"
    problem: Reason
    if req.groups and not req.groups & agent.groups:
        problem = "not_in_group"
    else:
        on_skills = _skill_match(agent, req)
        if isinstance(on_skills, Match):
            return on_skills
        problem = on_skills
    if req.overflow_groups & agent.groups:
        return Match(OVERFLOW, 0)
    return problem


def _skill_match(agent: AgentState, req: Requirements) -> Match | Reason:
    missing = too_low = False
    total = 0
    for skill, need in req.skills.items():
        have = agent.skills.get(skill)
        if have is None:
            missing = True
        elif have < need:
            too_low = True
        else:
            total += have
    if not missing and not too_low:
        return Match(SKILLS, total)
    alternatives = [have for skill, need in req.any_of.items() if (have := agent.skills.get(skill, 0)) >= need]
    if alternatives:
        return Match(ALTERNATIVE, max(alternatives))
    return "missing_skill" if missing else "level_too_low"


def index_keys(req: Requirements) -> frozenset[str]:
    """Keys a store can index a waiting call under (per tier): every agent :func:`match` accepts holds
    at least one of them in :func:`agent_index_keys`. A pre-filter only: the check still decides."""
    keys = {f"group:{group}" for group in req.overflow_groups}
    if req.skills:
        keys.add(f"skill:{min(req.skills)}")  # a SKILLS-path agent holds them all; one key is enough
        keys.update(f"skill:{skill}" for skill in req.any_of)
    else:
        keys.add("any")
    return frozenset(keys)


def agent_index_keys(agent: AgentState) -> frozenset[str]:
    """Keys an agent is found under: ``any``, each skill, each group."""
    return frozenset({"any", *(f"skill:{s}" for s in agent.skills), *(f"group:{g}" for g in agent.groups)})
