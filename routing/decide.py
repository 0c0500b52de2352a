"""Who gets which call now: from a call's side, from an agent's side, and for everyone at once.

One ordering serves all three, so they agree (``match_all`` with one agent is
``best_call_for_agent``; with one call, ``best_agent_for_call``):

* calls rank by :func:`routing.score.call_key`: score, then earlier enqueue, then call id;
* for a call, eligible agents rank by :func:`agent_key`: the preferred agent first (while the
  call's step keeps the preference), then under ``best_proficiency`` the better qualification
  path and the higher proficiency, then the longest idle (smaller ``idle_since_ms``), then agent id.

An agent is eligible for a call when they are ready, the call is not held for another
(preferred) agent, and :func:`routing.eligibility.match` accepts them under the call's
requirements at ``now_ms``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass

from routing.config import RoutingConfig
from routing.eligibility import Match, match, status_reason
from routing.escalation import Effective, effective
from routing.model import AgentState, WaitingCall
from routing.score import call_key, call_score
from routing.trace import Decision, Passed, Reason, Trace

__all__ = ["agent_key", "best_agent_for_call", "best_call_for_agent", "explain_call", "match_all"]


@dataclass(frozen=True, slots=True)
class _Ranked:
    call: WaitingCall
    eff: Effective
    score: int

    @property
    def key(self) -> tuple[int, int, str]:
        return call_key(self.score, self.call.enqueued_at_ms, self.call.id)


def _rank(call: WaitingCall, config: RoutingConfig, now_ms: int) -> _Ranked | Reason:
    if call.entry_point not in config.entry_points:
        return "unknown_entry_point"
    tier = config.tiers.get(call.tier)
    if tier is None:
        return "unknown_tier"
    eff = effective(call, config, now_ms)
    return _Ranked(call, eff, call_score(tier, eff.wait_ms, config))


def _ranked(calls: Iterable[WaitingCall], config: RoutingConfig, now_ms: int
            ) -> tuple[list[_Ranked], list[Passed]]:
    """Calls in rank order, and those that cannot be ranked (the config lost their entry point or tier)."""
    ranked: list[_Ranked] = []
    unknown: list[Passed] = []
    for call in calls:
        result = _rank(call, config, now_ms)
        if isinstance(result, _Ranked):
            ranked.append(result)
        else:
            unknown.append(Passed(call.id, result))
    ranked.sort(key=lambda r: r.key)
    return ranked, unknown


def _verdict(agent: AgentState, eff: Effective) -> Match | Reason:
    reason = status_reason(agent)
    if reason is not None:
        return reason
    if eff.exclusive and agent.id != eff.preferred_agent:
        return "waiting_for_preferred"
    return match(agent, eff.requirements)


def agent_key(agent: AgentState, how: Match, eff: Effective, config: RoutingConfig) -> tuple[int | str, ...]:
    """Sort ascending: the first is the agent a call goes to."""
    preferred = 0 if agent.id == eff.preferred_agent else 1
    if config.selection == "best_proficiency":
        return (preferred, -how.path, -how.proficiency, agent.idle_since_ms, agent.id)
    return (preferred, agent.idle_since_ms, agent.id)


def _trace(r: _Ranked, agents_passed: Iterable[Passed] = (), calls_passed: Iterable[Passed] = ()) -> Trace:
    return Trace(
        step=r.eff.step, wait_ms=r.eff.wait_ms, score=r.score, requirements=r.eff.requirements,
        preferred_agent=r.eff.preferred_agent, waits_for_preferred=r.eff.exclusive,
        agents_passed=tuple(sorted(agents_passed, key=lambda p: p.id)), calls_passed=tuple(calls_passed),
    )


def _pick_agent(r: _Ranked, agents: Iterable[AgentState], config: RoutingConfig,
                taken: Set[str] = frozenset()) -> tuple[str | None, Trace]:
    best: tuple[tuple[int | str, ...], AgentState] | None = None
    passed: list[Passed] = []
    for agent in agents:
        verdict: Match | Reason = "taken" if agent.id in taken else _verdict(agent, r.eff)
        if not isinstance(verdict, Match):
            passed.append(Passed(agent.id, verdict))
            continue
        key = agent_key(agent, verdict, r.eff, config)
        if best is None or key < best[0]:
            if best is not None:
                passed.append(Passed(best[1].id, "outranked"))
            best = (key, agent)
        else:
            passed.append(Passed(agent.id, "outranked"))
    return (None if best is None else best[1].id), _trace(r, passed)


def _unique(items: Iterable[AgentState | WaitingCall], kind: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ValueError(f"two {kind} share the id {item.id!r}")
        seen.add(item.id)


def explain_call(call: WaitingCall, agents: Sequence[AgentState], config: RoutingConfig, now_ms: int) -> Trace:
    """The trace :func:`best_agent_for_call` would carry, also when no agent is eligible (why it waits).

    Raises KeyError when the config has no such entry point or tier.
    """
    r = _rank(call, config, now_ms)
    if not isinstance(r, _Ranked):
        raise KeyError(f"call {call.id!r}: {r.replace('_', ' ')}")
    _unique(agents, "agents")
    return _pick_agent(r, agents, config)[1]


def best_agent_for_call(call: WaitingCall, agents: Sequence[AgentState], config: RoutingConfig,
                        now_ms: int) -> Decision | None:
    """The agent a newly queued (or newly escalated) call goes to, if any is eligible."""
    r = _rank(call, config, now_ms)
    if not isinstance(r, _Ranked):
        return None
    _unique(agents, "agents")
    agent_id, trace = _pick_agent(r, agents, config)
    return None if agent_id is None else Decision(call.id, agent_id, trace)


def best_call_for_agent(agent: AgentState, calls: Sequence[WaitingCall], config: RoutingConfig,
                        now_ms: int) -> Decision | None:
    """The call a newly free agent takes: the highest-ranked call, over every entry point, they are
    eligible for. ``calls_passed`` lists every other call, in rank order, with why."""
    if status_reason(agent) is not None:
        return None
    _unique(calls, "calls")
    ranked, unknown = _ranked(calls, config, now_ms)
    chosen: _Ranked | None = None
    passed: list[Passed] = []
    for r in ranked:
        verdict = _verdict(agent, r.eff)
        if not isinstance(verdict, Match):
            passed.append(Passed(r.call.id, verdict))
        elif chosen is None:
            chosen = r
        else:
            passed.append(Passed(r.call.id, "outranked"))
    if chosen is None:
        return None
    return Decision(chosen.call.id, agent.id, _trace(chosen, calls_passed=[*passed, *unknown]))


def match_all(calls: Sequence[WaitingCall], agents: Sequence[AgentState], config: RoutingConfig,
              now_ms: int) -> list[Decision]:
    """Pair as many calls with agents as the ranking allows, each agent and call at most once.

    Greedy on the globally best pair: of all (call, agent) pairs still open with the agent eligible,
    the best is the one whose call ranks first, and for that call the agent that ranks first. Call
    scores do not depend on the assignment, so this is: calls in rank order, each taking its best
    agent among those not yet taken (a call with none is skipped, not blocking the calls after it).
    Priority before throughput: a top call may take the only agent a lower call could have had.
    Decisions come in rank order; an agent taken by an earlier decision is passed over as ``taken``.
    """
    _unique(calls, "calls")
    _unique(agents, "agents")
    ranked, _ = _ranked(calls, config, now_ms)
    taken: set[str] = set()
    decisions: list[Decision] = []
    for r in ranked:
        if len(taken) == len(agents):
            break
        agent_id, trace = _pick_agent(r, agents, config, taken)
        if agent_id is not None:
            taken.add(agent_id)
            decisions.append(Decision(r.call.id, agent_id, trace))
    return decisions
