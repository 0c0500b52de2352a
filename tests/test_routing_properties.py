"""Invariants of the routing core on random agents and calls, checked against oracles written from
routing/README.md rather than from the code (eligibility, score, call order)."""

from __future__ import annotations

import random
from dataclasses import replace
from itertools import product

from hypothesis import given, settings
from hypothesis import strategies as st

from routing.config import RoutingConfig
from routing.decide import best_agent_for_call, best_call_for_agent, match_all
from routing.eligibility import agent_index_keys, index_keys
from routing.escalation import effective
from routing.model import AgentState, Requirements, WaitingCall
from tests.test_routing_decide import make_config

NOW = 10_000_000
SKILLS = ["billing", "tech", "complaints", "general"]
GROUPS = ["front", "vip_desk", "overflow"]
TIERS = ["vip_platinum", "vip_gold", "vip_silver", "normal"]
ENTRY_POINTS = ["billing", "tech", "complaints", "vip"]
AGENT_IDS = [f"a{i}" for i in range(6)]

CONFIGS = {
    (policy, selection, aging): make_config(policy=policy, selection=selection, aging={"max_wait_s": aging})
    for policy, selection, aging in product(("strict", "priority_plus_wait", "sla_deficit"),
                                            ("best_proficiency", "longest_idle"), (120, None))
}
FAST = settings(max_examples=120, deadline=None)

# Waits cluster on the boundaries of the test config's steps and aging bound, so they get hit.
boundary_waits = st.sampled_from([0, 1, 19_999, 20_000, 29_999, 30_000, 40_000, 45_000, 60_000, 89_999, 90_000,
                                  119_999, 120_000, 150_000])
waits = st.one_of(boundary_waits, st.integers(0, 200_000))
levels = st.dictionaries(st.sampled_from(SKILLS), st.sampled_from([1, 2, 3, 4, 5, 5]), max_size=3)
# Mostly capable agents and plain calls, so that several calls compete for one agent.
agent_levels = st.dictionaries(st.sampled_from(SKILLS), st.sampled_from([2, 3, 4, 5, 5]), min_size=1, max_size=4)

agent_specs = st.fixed_dictionaries({
    "skills": agent_levels,
    "languages": st.sampled_from([frozenset({"zh", "en"}), frozenset({"zh", "en"}), frozenset({"zh"}),
                                  frozenset({"en"}), frozenset()]),
    "groups": st.frozensets(st.sampled_from(GROUPS), max_size=2),
    "status": st.sampled_from(["ready", "ready", "ready", "not_ready", "on_call", "wrap_up", "reserved",
                               "logged_out"]),
    "idle_since_ms": st.sampled_from([0, 1_000, 2_000]) | st.integers(0, NOW),
})
requirement_overrides = st.none() | st.none() | st.none() | st.builds(
    lambda skills, any_of, groups: Requirements(skills=skills, any_of=any_of if skills else {},
                                                groups=groups),
    levels, levels, st.frozensets(st.sampled_from(GROUPS), max_size=1))
call_specs = st.fixed_dictionaries({
    "entry_point": st.sampled_from(ENTRY_POINTS),
    "tier": st.sampled_from(TIERS),
    "wait": waits,
    "language": st.sampled_from(["zh", "zh", "en", None]),
    "requirements": requirement_overrides,
    "preferred_agent": st.none() | st.none() | st.sampled_from([*AGENT_IDS, "expert"]),
    "last_agent": st.none() | st.none() | st.sampled_from([*AGENT_IDS, "expert"]),
    "last_served_ago_ms": st.sampled_from([0, 3_600_000, 3_600_001]),
})


#: Always there and eligible for almost everything, so that many calls compete for one agent.
EXPERT = AgentState(id="expert", skills=dict.fromkeys(SKILLS, 5), languages=frozenset({"zh", "en"}),
                    groups=frozenset({"front", "vip_desk"}), status="ready", idle_since_ms=500)


def _agents(specs: list[dict[str, object]]) -> list[AgentState]:
    return [EXPERT, *(AgentState(id=AGENT_IDS[i], **spec) for i, spec in enumerate(specs))]  # type: ignore[arg-type]


def _calls(specs: list[dict[str, object]]) -> list[WaitingCall]:
    out = []
    for i, spec in enumerate(specs):
        at = NOW - int(spec["wait"])  # type: ignore[call-overload]
        out.append(WaitingCall(
            id=f"c{i:02d}", entry_point=str(spec["entry_point"]), tier=str(spec["tier"]), enqueued_at_ms=at,
            language=spec["language"], requirements=spec["requirements"],  # type: ignore[arg-type]
            preferred_agent=spec["preferred_agent"], last_agent=spec["last_agent"],  # type: ignore[arg-type]
            last_served_at_ms=at - int(spec["last_served_ago_ms"]),  # type: ignore[call-overload]
        ))
    return out


states = st.tuples(st.sampled_from(list(CONFIGS)), st.lists(agent_specs, max_size=5),
                   st.lists(call_specs, max_size=12))


# ----- oracles, from the README -------------------------------------------------------------------------

def eligible(agent: AgentState, call: WaitingCall, config: RoutingConfig, now: int) -> bool:
    eff = effective(call, config, now)
    req = eff.requirements
    if agent.status != "ready" or (eff.exclusive and agent.id != eff.preferred_agent):
        return False
    if req.language is not None and req.language not in agent.languages:
        return False
    if agent.groups & req.overflow_groups:
        return True
    if req.groups and not agent.groups & req.groups:
        return False
    if all(agent.skills.get(s, 0) >= need for s, need in req.skills.items()):
        return True
    return any(agent.skills.get(s, 0) >= need for s, need in req.any_of.items())


def waited(call: WaitingCall, now: int) -> int:
    return max(now - call.enqueued_at_ms, 0)


def aged(call: WaitingCall, config: RoutingConfig, now: int) -> bool:
    bound = config.aging.max_wait_s
    return bound is not None and waited(call, now) >= bound * 1000


def score(call: WaitingCall, config: RoutingConfig, now: int) -> int:
    tier, wait = config.tiers[call.tier], waited(call, now)
    if aged(call, config, now):
        return 10**15 + wait
    if config.policy == "strict":
        return tier.priority
    if config.policy == "priority_plus_wait":
        return tier.priority * 1000 + min(wait * config.wait_boost.per_s, config.wait_boost.cap * 1000)
    return wait // tier.service_level.within_s


def rank(call: WaitingCall, config: RoutingConfig, now: int) -> tuple[int, int, str]:
    return (-score(call, config, now), call.enqueued_at_ms, call.id)


def agent_order(agent: AgentState, req: Requirements, preferred: str | None, config: RoutingConfig
                ) -> tuple[int | str, ...]:
    """For an eligible agent: (preferred, -path, -proficiency, idle, id) or (preferred, idle, id)."""
    in_group = not req.groups or bool(agent.groups & req.groups)
    if in_group and all(agent.skills.get(s, 0) >= need for s, need in req.skills.items()):
        path, proficiency = 2, sum(agent.skills[s] for s in req.skills)
    elif in_group and (alts := [agent.skills.get(s, 0) for s, need in req.any_of.items()
                                if agent.skills.get(s, 0) >= need]):
        path, proficiency = 1, max(alts)
    else:
        path, proficiency = 0, 0
    first = 0 if agent.id == preferred else 1
    if config.selection == "longest_idle":
        return (first, agent.idle_since_ms, agent.id)
    return (first, -path, -proficiency, agent.idle_since_ms, agent.id)


def _priority(call: WaitingCall, config: RoutingConfig) -> int:
    return config.tiers[call.tier].priority


# ----- properties ---------------------------------------------------------------------------------------

@FAST
@given(states)
def test_a_free_agent_takes_the_best_eligible_call(state: tuple[tuple[str, str, int | None], list, list]) -> None:
    key, agent_list, call_list = state
    config, agents, calls = CONFIGS[key], _agents(agent_list), _calls(call_list)
    for agent in agents:
        ok = [c for c in calls if eligible(agent, c, config, NOW)]
        d = best_call_for_agent(agent, calls, config, NOW)
        if not ok:
            assert d is None
            continue
        assert d is not None and d.agent_id == agent.id
        chosen = next(c for c in calls if c.id == d.call_id)
        assert chosen in ok, "never an ineligible pair"
        assert d.score == score(chosen, config, NOW)
        assert rank(chosen, config, NOW) == min(rank(c, config, NOW) for c in ok)
        for other in ok:
            if other is chosen:
                continue
            # Aging: a call past the bound is passed over only by an older call past the bound.
            if aged(other, config, NOW):
                assert aged(chosen, config, NOW)
                assert (chosen.enqueued_at_ms, chosen.id) < (other.enqueued_at_ms, other.id)
            # A higher tier is not passed over, as far as aging (and, for priority_plus_wait, the cap) allows.
            gap = _priority(other, config) - _priority(chosen, config)
            if not aged(chosen, config, NOW):
                if config.policy == "strict":
                    assert gap <= 0
                elif config.policy == "priority_plus_wait" and gap > config.wait_boost.cap:
                    raise AssertionError(f"{other.id} (+{gap}) passed over for {chosen.id}")
            # FIFO within a tier: same entry point, tier and requirements, no preferred agent.
            if (other.entry_point, other.tier, other.language, other.requirements) == (
                    chosen.entry_point, chosen.tier, chosen.language, chosen.requirements) and not any(
                    effective(c, config, NOW).preferred_agent for c in (chosen, other)):
                assert (chosen.enqueued_at_ms, chosen.id) < (other.enqueued_at_ms, other.id)


@FAST
@given(states)
def test_a_call_goes_to_an_eligible_agent_preferred_first(state: tuple[tuple[str, str, int | None], list, list]
                                                          ) -> None:
    key, agent_list, call_list = state
    config, agents, calls = CONFIGS[key], _agents(agent_list), _calls(call_list)
    for call in calls:
        ok = [a for a in agents if eligible(a, call, config, NOW)]
        d = best_agent_for_call(call, agents, config, NOW)
        if not ok:
            assert d is None
            continue
        assert d is not None and d.call_id == call.id and any(a.id == d.agent_id for a in ok)
        eff = effective(call, config, NOW)
        assert d.agent_id == min(ok, key=lambda a: agent_order(a, eff.requirements, eff.preferred_agent, config)).id
        if any(a.id == eff.preferred_agent for a in ok):
            assert d.agent_id == eff.preferred_agent
        passed = {p.id for p in d.trace.agents_passed}
        assert passed == {a.id for a in agents} - {d.agent_id}, "every other agent is accounted for"


@FAST
@given(states, st.randoms(use_true_random=False))
def test_match_all_is_a_valid_greedy_matching(state: tuple[tuple[str, str, int | None], list, list],
                                              rnd: random.Random) -> None:
    key, agent_list, call_list = state
    config, agents, calls = CONFIGS[key], _agents(agent_list), _calls(call_list)
    decisions = match_all(calls, agents, config, NOW)
    by_id = {c.id: c for c in calls}
    agent_by_id = {a.id: a for a in agents}
    assert len({d.agent_id for d in decisions}) == len(decisions), "no agent gets two calls"
    assert len({d.call_id for d in decisions}) == len(decisions), "no call gets two agents"
    for d in decisions:
        assert eligible(agent_by_id[d.agent_id], by_id[d.call_id], config, NOW)
    assert [rank(by_id[d.call_id], config, NOW) for d in decisions] == sorted(
        rank(by_id[d.call_id], config, NOW) for d in decisions)
    # Greedy leaves no open pair: every unmatched call has no eligible agent left.
    free = [a for a in agents if a.id not in {d.agent_id for d in decisions}]
    for call in calls:
        if call.id not in {d.call_id for d in decisions}:
            assert not any(eligible(a, call, config, NOW) for a in free)
    # Deterministic whatever the input order (every tie is broken explicitly).
    shuffled_calls, shuffled_agents = list(calls), list(agents)
    rnd.shuffle(shuffled_calls)
    rnd.shuffle(shuffled_agents)
    assert match_all(shuffled_calls, shuffled_agents, config, NOW) == decisions
    # One agent: the same as the agent's own decision; one call: the same as the call's.
    for agent in agents:
        alone = match_all(calls, [agent], config, NOW)
        single = best_call_for_agent(agent, calls, config, NOW)
        assert [(d.call_id, d.agent_id) for d in alone] == ([] if single is None else [(single.call_id, agent.id)])
    for call in calls:
        alone = match_all([call], agents, config, NOW)
        one = best_agent_for_call(call, agents, config, NOW)
        assert alone == ([] if one is None else [one])


@FAST
@given(states, st.integers(0, 200_000))
def test_waiting_only_widens_and_index_keys_find_every_eligible_agent(
        state: tuple[tuple[str, str, int | None], list, list], later_ms: int) -> None:
    key, agent_list, call_list = state
    config, agents, calls = CONFIGS[key], _agents(agent_list), _calls(call_list)
    for call in calls:
        req = effective(call, config, NOW).requirements
        for agent in agents:
            if eligible(agent, call, config, NOW):
                assert eligible(agent, call, config, NOW + later_ms), "escalation never narrows"
                assert index_keys(req) & agent_index_keys(agent), "the store's pre-filter keeps every candidate"


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(ENTRY_POINTS), st.integers(0, 10**12), st.data())
def test_each_step_fires_exactly_at_its_ms(entry_point: str, enqueued_at_ms: int, data: st.DataObject) -> None:
    config = CONFIGS[("strict", "best_proficiency", 120)]
    steps = config.entry_points[entry_point].escalation
    call = WaitingCall(id="c", entry_point=entry_point, tier="normal", enqueued_at_ms=enqueued_at_ms)
    for k, step in enumerate(steps, start=1):
        at = enqueued_at_ms + step.after_s * 1000
        assert effective(call, config, at - 1).step == k - 1
        assert effective(call, config, at).step == k
    assert effective(call, config, enqueued_at_ms + data.draw(st.integers(0, 10**6))).step <= len(steps)
    again = replace(call, id="requeued")  # RONA requeue keeps enqueued_at_ms, so it keeps its step
    assert effective(again, config, enqueued_at_ms + 45_000) == effective(call, config, enqueued_at_ms + 45_000)
