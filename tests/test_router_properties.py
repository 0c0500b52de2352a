"""The store decides as the pure core: random configs (within the validated bounds), agents and
calls are loaded into a real Redis, then match_for_agent / match_for_call run next to
best_call_for_agent / best_agent_for_call on the same state, as time moves on and reservations,
readiness, pauses, RONA requeues and abandons change it on both sides alike."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.config import RoutingConfig, parse_routing_config
from routing.decide import best_agent_for_call, best_call_for_agent
from routing.model import AgentState, Requirements, WaitingCall
from tests.test_router_store import SKILLS, assert_same, drop, loaded, new_prefix

pytestmark = pytest.mark.network

NOW = 10_000_000
GROUPS = ["front", "vip", "sup"]
# Ids whose byte order differs from any locale's collation ("B" < "a" < "b" < "é"), and prefixes.
AGENT_IDS = ["a", "B", "b", "é", "a1", "Z9"]
CALL_IDS = ["c1", "C1", "c10", "c2", "é", "Ω", "z", "A", "c", "cc"]

levels = st.integers(1, 5)
skill_levels = st.dictionaries(st.sampled_from(SKILLS), levels, max_size=3)
group_lists = st.lists(st.sampled_from(GROUPS), max_size=2, unique=True)


@st.composite
def configs(draw: st.DrawFn) -> RoutingConfig:
    tier_names = draw(st.lists(st.sampled_from(["gold", "silver", "normal"]), min_size=1, max_size=3, unique=True))
    tiers = {name: {"priority": draw(st.sampled_from([0, 100, 150, 200, 10**6])),
                    "service_level": {"percent": 80, "within_s": draw(st.sampled_from([1, 7, 20, 3600]))}}
             for name in tier_names}
    entry_points: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(["billing", "tech", "vip", "open"]), min_size=1, max_size=3,
                              unique=True)):
        skills = draw(skill_levels)
        requires: dict[str, Any] = {"skills": skills, "groups": draw(st.lists(st.sampled_from(GROUPS), max_size=1)),
                                    "overflow_groups": draw(group_lists),
                                    "language": draw(st.sampled_from([None, None, "zh", "en"]))}
        if skills:
            requires["any_of"] = draw(skill_levels)
        steps = []
        for after_s in sorted(draw(st.sets(st.sampled_from([1, 20, 30, 60, 90, 120]), max_size=3))):
            step: dict[str, Any] = {"after_s": after_s, "min_level": draw(st.none() | levels),
                                    "overflow_groups": draw(group_lists), "drop_preferred": draw(st.booleans())}
            if skills:
                step["any_of"] = draw(skill_levels)
            if step["min_level"] is None and not step["overflow_groups"] and not step.get("any_of"):
                step["drop_preferred"] = True
            steps.append(step)
        entry_points[name] = {
            "tier": draw(st.sampled_from(tier_names)), "requires": requires, "escalation": steps,
            "wait_for_preferred": draw(st.booleans()) and any(s["drop_preferred"] for s in steps),
        }
    return parse_routing_config({
        "skills": dict.fromkeys(SKILLS, ""), "languages": ["zh", "en"], "groups": dict.fromkeys(GROUPS, ""),
        "tiers": tiers, "entry_points": entry_points,
        "policy": draw(st.sampled_from(["strict", "priority_plus_wait", "sla_deficit"])),
        "selection": draw(st.sampled_from(["best_proficiency", "longest_idle"])),
        "wait_boost": {"per_s": draw(st.sampled_from([0, 1, 7, 1000])), "cap": draw(st.sampled_from([0, 90, 10**6]))},
        "aging": {"max_wait_s": draw(st.sampled_from([None, 1, 60, 120, 86_400]))},
        "preferred_agent": {"account_manager": draw(st.booleans()),
                            "last_agent_window_s": draw(st.sampled_from([0, 3600]))},
    }, source="hypothesis")


def agents_for(ids: list[str]) -> st.SearchStrategy[list[AgentState]]:
    one = st.builds(
        AgentState, id=st.just("_"),
        skills=st.dictionaries(st.sampled_from(SKILLS), levels, max_size=3),
        languages=st.sampled_from([frozenset({"zh", "en"}), frozenset({"zh"}), frozenset({"en"}), frozenset()]),
        groups=st.frozensets(st.sampled_from(GROUPS), max_size=2),
        status=st.sampled_from(["ready", "ready", "ready", "not_ready", "on_call", "reserved", "logged_out"]),
        idle_since_ms=st.sampled_from([0, 500, 500, 1000]) | st.integers(0, NOW),
    )
    return st.tuples(*(one for _ in ids)).map(lambda agents: [replace(a, id=i) for a, i in zip(agents, ids,
                                                                                              strict=True)])


@st.composite
def calls_for(draw: st.DrawFn, config: RoutingConfig, ids: list[str]) -> list[WaitingCall]:
    # Waits on this config's step and aging boundaries, repeated so that scores and enqueue times tie.
    bounds = {0, *(s.after_s * 1000 for ep in config.entry_points.values() for s in ep.escalation)}
    if config.aging.max_wait_s is not None:
        bounds.add(config.aging.max_wait_s * 1000)
    waits = st.sampled_from(sorted({b + d for b in bounds for d in (-1, 0, 0)})) | st.integers(-1000, 200_000)
    override = st.builds(
        lambda skills, any_of, groups, overflow, lang: Requirements(
            skills=skills, any_of=any_of if skills else {}, groups=frozenset(groups),
            overflow_groups=frozenset(overflow), language=lang),
        st.dictionaries(st.sampled_from(SKILLS), st.integers(1, 7), max_size=2), skill_levels,
        group_lists, group_lists, st.sampled_from([None, "zh", "en"]))
    agent = st.none() | st.sampled_from([*AGENT_IDS, "ghost"]) | st.sampled_from(AGENT_IDS)
    calls = []
    for call_id in ids:
        at = NOW - draw(waits)
        calls.append(WaitingCall(
            id=call_id, entry_point=draw(st.sampled_from([*config.entry_points, "ghost"])),
            tier=draw(st.sampled_from([*config.tiers, *config.tiers, "ghost"])), enqueued_at_ms=at,
            language=draw(st.sampled_from(["zh", "zh", "en", None])),
            requirements=draw(st.none() | st.none() | override),
            preferred_agent=draw(agent), last_agent=draw(agent),
            last_served_at_ms=at - draw(st.sampled_from([0, 3_600_000, 3_600_001])),
        ))
    return calls


@st.composite
def states(draw: st.DrawFn) -> tuple[RoutingConfig, list[AgentState], list[WaitingCall]]:
    config = draw(configs())
    agent_ids = draw(st.lists(st.sampled_from(AGENT_IDS), min_size=1, max_size=6, unique=True))
    call_ids = draw(st.lists(st.sampled_from(CALL_IDS), max_size=10, unique=True))
    return config, draw(agents_for(agent_ids)), draw(calls_for(config, call_ids))


def waiting_order(calls: dict[str, WaitingCall]) -> list[WaitingCall]:
    """The order of RouterStore.waiting(): enqueue time, then id byte-wise (a sorted set's order)."""
    return sorted(calls.values(), key=lambda c: (c.enqueued_at_ms, c.id.encode()))


PROPERTY = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# Time moves on between decisions, across steps and the aging bound, so the store's lazy
# re-indexing (esc) is exercised too.
steps_ms = st.sampled_from([0, 0, 0, 1, 999, 10_000, 30_000, 60_000])


@PROPERTY
@given(state=states(), data=st.data())
async def test_match_for_agent_decides_as_best_call_for_agent(
        redis_client: aioredis.Redis, state: tuple[RoutingConfig, list[AgentState], list[WaitingCall]],
        data: st.DataObject) -> None:
    config, agent_list, call_list = state
    prefix = new_prefix()
    store = await loaded(redis_client, prefix, config, agent_list, call_list)
    try:
        agents, waiting = {a.id: a for a in agent_list}, {c.id: c for c in call_list}
        now = NOW
        for agent_id in data.draw(st.permutations(list(agents))):
            now += data.draw(steps_ms)
            want = best_call_for_agent(agents[agent_id], list(waiting.values()), config, now)
            assert_same(await store.match_for_agent(agent_id, now), want)
            if want is not None:
                agents[agent_id] = replace(agents[agent_id], status="reserved")
                del waiting[want.call_id]
        assert await store.waiting() == waiting_order(waiting)
        assert await store.agents() == sorted(agents.values(), key=lambda a: a.id)
    finally:
        await drop(redis_client, prefix)


@PROPERTY
@given(state=states(), data=st.data())
async def test_match_for_call_decides_as_best_agent_for_call(
        redis_client: aioredis.Redis, state: tuple[RoutingConfig, list[AgentState], list[WaitingCall]],
        data: st.DataObject) -> None:
    config, agent_list, call_list = state
    prefix = new_prefix()
    store = await loaded(redis_client, prefix, config, agent_list, call_list)
    try:
        agents, waiting = {a.id: a for a in agent_list}, {c.id: c for c in call_list}
        now = NOW
        for call_id in data.draw(st.permutations(list(waiting))):
            now += data.draw(steps_ms)
            want = best_agent_for_call(waiting[call_id], list(agents.values()), config, now)
            assert_same(await store.match_for_call(call_id, now), want)
            if want is not None:
                agents[want.agent_id] = replace(agents[want.agent_id], status="reserved")
                del waiting[call_id]
        assert await store.waiting() == waiting_order(waiting)
    finally:
        await drop(redis_client, prefix)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(state=states(), data=st.data())
async def test_lifecycles_keep_deciding_as_the_pure_core(
        redis_client: aioredis.Redis, state: tuple[RoutingConfig, list[AgentState], list[WaitingCall]],
        data: st.DataObject) -> None:
    """Matches from both sides mixed with pauses, readiness, RONA requeues and abandons, each
    mirrored on plain snapshots: after every step the store decides as the pure core does."""
    config, agent_list, call_list = state
    prefix = new_prefix()
    store = await loaded(redis_client, prefix, config, agent_list, call_list)
    try:
        agents, waiting = {a.id: a for a in agent_list}, {c.id: c for c in call_list}
        offers: dict[str, str] = {}  # call -> agent, both reserved for each other
        held: dict[str, str] = {}  # agent -> the call their reservation is for
        now = NOW
        for _ in range(12):
            now += data.draw(steps_ms)
            op = data.draw(st.sampled_from(["agent", "agent", "call", "call", "ready", "pause", "requeue",
                                            "abandon"]))
            if op == "agent":
                agent_id = data.draw(st.sampled_from(sorted(agents)))
                want = best_call_for_agent(agents[agent_id], list(waiting.values()), config, now)
                assert_same(await store.match_for_agent(agent_id, now), want)
            elif op == "call" and waiting:
                call_id = data.draw(st.sampled_from(sorted(waiting)))
                want = best_agent_for_call(waiting[call_id], list(agents.values()), config, now)
                assert_same(await store.match_for_call(call_id, now), want)
            elif op in ("ready", "pause"):
                agent_id = data.draw(st.sampled_from(sorted(agents)))
                a = agents[agent_id]
                if op == "ready":
                    idle = a.idle_since_ms if a.status in ("ready", "reserved") else now
                    agents[agent_id] = replace(a, status="ready", idle_since_ms=idle, not_ready_reason=None)
                else:
                    agents[agent_id] = replace(a, status="not_ready", not_ready_reason="break")
                held.pop(agent_id, None)
                assert await store.set_agent_status(agent_id, agents[agent_id].status, now_ms=now,
                                                    reason=agents[agent_id].not_ready_reason)
                continue
            elif op == "requeue" and offers:
                call_id = data.draw(st.sampled_from(sorted(offers)))
                agent_id = offers.pop(call_id)
                waiting[call_id] = next(c for c in call_list if c.id == call_id)
                if held.get(agent_id) == call_id:
                    del held[agent_id]
                    agents[agent_id] = replace(agents[agent_id], status="not_ready",
                                               not_ready_reason=config.reservation.rona_not_ready_reason)
                assert await store.requeue(call_id)
                continue
            elif op == "abandon" and (waiting or offers):
                call_id = data.draw(st.sampled_from(sorted([*waiting, *offers])))
                waiting.pop(call_id, None)
                if (agent_id := offers.pop(call_id, None)) is not None and held.get(agent_id) == call_id:
                    del held[agent_id]
                assert await store.remove_call(call_id)
                assert await store.match_for_call(call_id, now) is None
                continue
            else:
                continue
            if want is not None:
                agents[want.agent_id] = replace(agents[want.agent_id], status="reserved")
                del waiting[want.call_id]
                offers[want.call_id] = want.agent_id
                held[want.agent_id] = want.call_id
        assert await store.waiting() == waiting_order(waiting)
        assert await store.agents() == sorted(agents.values(), key=lambda a: a.id)
        assert await store.reservations() == offers
    finally:
        await drop(redis_client, prefix)


