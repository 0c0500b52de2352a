"""The Redis router store against a real redis-server: reservations are atomic across servers; the
call and agent lifecycles (RONA requeue, abandon, pause, config change) keep their promises; and
boundaries and tie-breaks the random search (test_router_properties.py) seldom lands on are
pinned by hand, each checked against the pure core too."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from cti.router import RouterStore
from routing.config import RoutingConfig, load_routing_config, parse_routing_config
from routing.decide import best_agent_for_call, best_call_for_agent
from routing.model import AgentState, Requirements, WaitingCall
from routing.trace import Decision, Passed

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parent.parent
SKILLS = ["billing", "tech", "general", "net"]
_prefixes = itertools.count()


def new_prefix() -> str:
    """Each test (and each hypothesis example) works under its own keys."""
    return f"test:{next(_prefixes)}:"


async def drop(redis: aioredis.Redis, prefix: str) -> None:
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await redis.unlink(*keys)


@pytest.fixture
def demo() -> RoutingConfig:
    return load_routing_config(ROOT / "config" / "routing.yaml")


@pytest.fixture
async def store(redis_client: aioredis.Redis, demo: RoutingConfig) -> AsyncIterator[RouterStore]:
    prefix = new_prefix()
    s = RouterStore(redis_client, demo, key_prefix=prefix)
    await s.apply_config()
    yield s
    await drop(redis_client, prefix)


def assert_same(got: Decision | None, want: Decision | None) -> None:
    """Same pair, step, wait, score, requirements and preference. The store's passed-over lists are
    the ids its index led to, each with the pure core's reason, in the pure core's order."""
    if want is None or got is None:
        assert got == want
        return
    assert (got.call_id, got.agent_id) == (want.call_id, want.agent_id)
    assert replace(got.trace, agents_passed=(), calls_passed=()) == replace(
        want.trace, agents_passed=(), calls_passed=())
    assert set(got.trace.agents_passed) <= set(want.trace.agents_passed)
    assert got.trace.agents_passed == tuple(sorted(got.trace.agents_passed, key=lambda p: p.id))
    it = iter(want.trace.calls_passed)
    assert all(p in it for p in got.trace.calls_passed), "calls passed over: a subsequence of the pure core's"


async def loaded(redis: aioredis.Redis, prefix: str, config: RoutingConfig, agents: list[AgentState],
                 calls: list[WaitingCall]) -> RouterStore:
    store = RouterStore(redis, config, key_prefix=prefix)
    await store.apply_config()
    for agent in agents:
        await store.put_agent(agent)
    for call in calls:
        assert await store.enqueue(call)
    return store


# ----- atomicity across connections and servers ---------------------------------------------------------

async def test_racing_servers_never_double_assign(redis_url: str, demo: RoutingConfig) -> None:
    """Two stores (two "servers", each with its own connection pool) race both kinds of match over the
    same agents and calls, 60 requests in flight at once, for three rounds."""
    clients = [aioredis.from_url(redis_url, socket_timeout=10) for _ in range(2)]
    prefix = new_prefix()
    servers = [RouterStore(c, demo, key_prefix=prefix) for c in clients]
    rnd = random.Random(13)
    try:
        await servers[0].apply_config()
        agent_ids = [f"agent{i:02d}" for i in range(30)]
        for i, agent_id in enumerate(agent_ids):
            await servers[i % 2].put_agent(AgentState(
                id=agent_id, skills={"billing": 4, "tech_support": 4, "vip_care": 3, "complaint_handling": 4},
                languages=frozenset({"zh", "en"}), groups=frozenset({"front_line"}), status="ready",
                idle_since_ms=rnd.randrange(0, 1000)))
        call_ids = [f"call{i:02d}" for i in range(45)]
        for i, call_id in enumerate(call_ids):
            entry_point = rnd.choice(["billing", "tech_support", "complaints"])
            await servers[i % 2].enqueue(WaitingCall(id=call_id, entry_point=entry_point,
                                                     tier=demo.tier_for(entry_point), enqueued_at_ms=i * 10,
                                                     language="zh"))
        for round_ in range(3):
            now = 100_000 + round_ * 1000
            requests = [servers[k % 2].match_for_agent(rnd.choice(agent_ids), now) if k % 3 else
                        servers[k % 2].match_for_call(rnd.choice(call_ids), now) for k in range(60)]
            decisions = [d for d in await asyncio.gather(*requests) if d is not None]
            assert decisions, "the race matched something"
            pairs = {(d.call_id, d.agent_id) for d in decisions}
            assert len({c for c, _ in pairs}) == len(decisions), "a call went to two agents"
            assert len({a for _, a in pairs}) == len(decisions), "an agent got two calls"
            assert await servers[round_ % 2].reservations() == dict(pairs)
            reserved = {a.id for a in await servers[0].agents() if a.status == "reserved"}
            assert reserved == {a for _, a in pairs}
            for call_id, _ in pairs:  # every offer unanswered: back in the queue, agents free again
                assert await servers[rnd.randrange(2)].requeue(call_id, agent_status="ready")
            assert len(await servers[0].waiting()) == len(call_ids)
    finally:
        await drop(clients[0], prefix)
        for c in clients:
            await c.aclose()


# ----- lifecycles, by hand --------------------------------------------------------------------------------

def _call(call_id: str, entry_point: str = "billing", at: int = 0, lang: str = "zh") -> WaitingCall:
    return WaitingCall(id=call_id, entry_point=entry_point, tier="normal", enqueued_at_ms=at, language=lang)


async def test_rona_requeue_keeps_the_place_and_the_step(store: RouterStore, demo: RoutingConfig) -> None:
    alice = demo.agent_state("alice", status="ready", idle_since_ms=1_000)
    chen = demo.agent_state("chen", status="on_call")
    await store.put_agent(alice)
    await store.put_agent(chen)
    first = _call("1700.1", at=5_000)
    await store.enqueue(first)
    await store.enqueue(_call("1700.2", at=6_000))
    offer = await store.match_for_agent("alice", 40_000)
    assert offer is not None and offer.call_id == "1700.1" and offer.trace.step == 1
    assert await store.requeue("1700.1")
    assert not await store.requeue("1700.1"), "only a reserved call is requeued"
    assert [c.id for c in await store.waiting()] == ["1700.1", "1700.2"]
    assert (await store.waiting())[0] == first, "enqueued_at_ms (and all else) kept"
    alice_now = (await store.agents())[0]
    assert (alice_now.status, alice_now.not_ready_reason) == ("not_ready", "rona")
    assert await store.set_agent_status("chen", "ready", now_ms=70_000)
    again = await store.match_for_agent("chen", 70_000)
    want = best_call_for_agent(replace(chen, status="ready", idle_since_ms=70_000), [first, _call("1700.2", at=6_000)],
                               demo, 70_000)
    assert again is not None and want is not None
    assert_same(again, want)
    assert (again.call_id, again.trace.step, again.trace.wait_ms) == ("1700.1", 2, 65_000)


async def test_a_requeue_that_spares_the_agent_keeps_their_idle_time(store: RouterStore, demo: RoutingConfig) -> None:
    await store.put_agent(demo.agent_state("alice", status="ready", idle_since_ms=300))
    await store.enqueue(_call("c1", at=1_000))
    assert await store.match_for_agent("alice", 2_000) is not None
    assert await store.requeue("c1", agent_status="ready")
    assert (await store.agents())[0] == demo.agent_state("alice", status="ready", idle_since_ms=300)
    again = await store.match_for_call("c1", 3_000)
    assert again is not None and (again.agent_id, again.trace.wait_ms) == ("alice", 2_000)


async def test_an_abandoned_call_is_never_matched(store: RouterStore, demo: RoutingConfig) -> None:
    await store.put_agent(demo.agent_state("alice", status="ready", idle_since_ms=100))
    await store.enqueue(_call("gone"))
    assert await store.remove_call("gone")
    assert not await store.remove_call("gone")
    assert await store.match_for_agent("alice", 10_000) is None
    assert await store.match_for_call("gone", 10_000) is None
    assert await store.waiting() == []
    # Abandoned while ringing: the agent stays reserved (unmatchable) until set ready, idle time kept.
    await store.enqueue(_call("ringing"))
    assert await store.match_for_call("ringing", 10_000) is not None
    assert await store.remove_call("ringing")
    assert await store.reservations() == {}
    await store.enqueue(_call("next"))
    assert await store.match_for_call("next", 11_000) is None
    assert await store.set_agent_status("alice", "ready", now_ms=12_000)
    assert (await store.agents())[0].idle_since_ms == 100
    decision = await store.match_for_call("next", 12_000)
    assert decision is not None and decision.agent_id == "alice"


async def test_an_agent_who_is_not_ready_is_never_matched(store: RouterStore, demo: RoutingConfig) -> None:
    await store.put_agent(demo.agent_state("alice", status="ready", idle_since_ms=100))
    await store.enqueue(_call("c1"))
    assert await store.set_agent_status("alice", "not_ready", now_ms=1_000, reason="lunch")
    for status in ("reserved", "on_call", "wrap_up", "logged_out", "not_ready"):
        assert await store.set_agent_status("alice", status, now_ms=1_000)
        assert await store.match_for_agent("alice", 500_000) is None
        assert await store.match_for_call("c1", 500_000) is None
    assert not await store.set_agent_status("nobody", "ready", now_ms=1_000)
    assert await store.set_agent_status("alice", "ready", now_ms=2_000)
    assert (await store.agents())[0].idle_since_ms == 2_000, "idle since becoming free"
    assert await store.match_for_agent("alice", 2_000) is not None


async def test_escalation_reaches_agents_the_index_did_not_list(store: RouterStore, demo: RoutingConfig) -> None:
    """billing adds the supervisors as overflow at 90 s: only then is the call under group:supervisors."""
    sup = AgentState(id="sup", languages=frozenset({"zh"}), groups=frozenset({"supervisors"}), status="ready")
    await store.put_agent(sup)
    await store.enqueue(_call("c1", at=1_000))
    assert await store.match_for_agent("sup", 90_999) is None
    decision = await store.match_for_agent("sup", 91_000)
    assert decision is not None and decision.trace.step == 3 and decision.trace.requirements.overflow_groups == {
        "supervisors"}


async def test_ids_tie_break_by_bytes(store: RouterStore) -> None:
    for agent_id in ("b", "A", "é"):  # the same idle time: "A" (0x41) < "b" (0x62) < "é" (0xc3 0xa9)
        await store.put_agent(AgentState(id=agent_id, skills={"billing": 3}, languages=frozenset({"zh"}),
                                         status="ready", idle_since_ms=7))
    for call_id in ("é", "a", "B"):
        await store.enqueue(_call(call_id, at=50))
    got = [await store.match_for_call(call_id, 1_000) for call_id in ("é", "a", "B")]
    assert [d.agent_id for d in got if d] == ["A", "b", "é"]
    await store.put_agent(AgentState(id="x", skills={"billing": 3}, languages=frozenset({"zh"}), status="ready"))
    for call_id in ("B", "é", "a"):  # the head of the index moves to a smaller id only on a byte-wise tie-break
        assert await store.requeue(call_id)
    decision = await store.match_for_agent("x", 1_000)
    assert decision is not None and decision.call_id == "B"
    assert decision.trace.calls_passed == ()


async def test_a_new_config_reindexes_the_waiting_calls(store: RouterStore, demo: RoutingConfig) -> None:
    await store.put_agent(demo.agent_state("bob", status="ready"))
    await store.enqueue(_call("c1", lang="en"))
    assert await store.match_for_agent("bob", 1_000) is None, "bob has no billing skill"
    data = demo.model_dump()
    data["entry_points"]["billing"]["requires"] = {"skills": {"network": 2}}
    assert await store.apply_config(parse_routing_config(data)) == 2
    assert [c.id for c in await store.waiting()] == ["c1"]
    decision = await store.match_for_agent("bob", 1_000)
    assert decision is not None and decision.trace.requirements.skills == {"network": 2}


async def test_scripts_refuse_to_run_without_a_config(redis_client: aioredis.Redis, demo: RoutingConfig) -> None:
    store = RouterStore(redis_client, demo, key_prefix=new_prefix())
    with pytest.raises(ResponseError, match="ROUTER no routing config"):
        await store.enqueue(_call("c1"))
    with pytest.raises(ValueError, match=r"levels must be 1\.\.5"):
        await store.put_agent(AgentState(id="x", skills={"billing": 6}))
    with pytest.raises(ValueError, match="at least 1"):
        await store.enqueue(WaitingCall(id="c", entry_point="billing", tier="normal", enqueued_at_ms=0,
                                        requirements=Requirements(skills={"billing": 1}, any_of={"general": 0})))


# ----- boundaries and tie-breaks the random search seldom lands on, pinned by hand ------------------------

def _small(**overrides: Any) -> RoutingConfig:
    return parse_routing_config({
        "skills": dict.fromkeys(SKILLS, ""), "languages": ["zh"], "groups": {"front": "", "sup": ""},
        "tiers": {"gold": {"priority": 200, "service_level": {"percent": 90, "within_s": 10}},
                  "normal": {"priority": 100, "service_level": {"percent": 80, "within_s": 20}}},
        "entry_points": {"billing": {"tier": "normal", "requires": {"skills": {"billing": 1}}},
                         "general": {"tier": "normal", "requires": {"skills": {"general": 1}}}},
        "policy": "strict", "aging": {"max_wait_s": 120},
    } | overrides)


def _ready(agent_id: str, idle: int = 0, groups: frozenset[str] = frozenset(), **skills: int) -> AgentState:
    return AgentState(id=agent_id, skills=skills, groups=groups, status="ready", idle_since_ms=idle)


def _waiting(call_id: str, at: int, tier: str = "normal", entry_point: str = "billing",
             requirements: Requirements | None = None) -> WaitingCall:
    return WaitingCall(id=call_id, entry_point=entry_point, tier=tier, enqueued_at_ms=at, requirements=requirements)


async def _decide(redis: aioredis.Redis, config: RoutingConfig, agents: list[AgentState], calls: list[WaitingCall],
                  *, agent: str | None = None, call: str | None = None, now: int) -> Decision | None:
    """One decision from a fresh store, checked against the pure core on the same state."""
    prefix = new_prefix()
    store = await loaded(redis, prefix, config, agents, calls)
    try:
        if agent is not None:
            got = await store.match_for_agent(agent, now)
            want = best_call_for_agent(next(a for a in agents if a.id == agent), calls, config, now)
        else:
            got = await store.match_for_call(str(call), now)
            want = best_agent_for_call(next(c for c in calls if c.id == call), agents, config, now)
        assert_same(got, want)
        return got
    finally:
        await drop(redis, prefix)


@pytest.mark.parametrize("policy", ["strict", "priority_plus_wait", "sla_deficit"])
async def test_aging_starts_at_exactly_max_wait(redis_client: aioredis.Redis, policy: str) -> None:
    config = _small(policy=policy)
    calls = [_waiting("old", at=0), _waiting("vip", at=119_000, tier="gold")]
    before = await _decide(redis_client, config, [_ready("x", billing=1)], calls, agent="x", now=119_999)
    at = await _decide(redis_client, config, [_ready("x", billing=1)], calls, agent="x", now=120_000)
    assert before is not None and at is not None
    assert (at.call_id, at.score) == ("old", 10**15 + 120_000)
    if policy == "strict":
        assert before.call_id == "vip"


async def test_score_ties_break_by_enqueue_across_keys(redis_client: aioredis.Redis) -> None:
    calls = [_waiting("x", at=100), _waiting("a", at=200, entry_point="general")]
    d = await _decide(redis_client, _small(), [_ready("agent", billing=1, general=1)], calls, agent="agent", now=1000)
    assert d is not None and d.call_id == "x"


async def test_waits_are_clamped_to_max_wait_ms(redis_client: aioredis.Redis) -> None:
    now = 4 * 10**12
    calls = [_waiting("ancient", at=now - 3 * 10**12), _waiting("old", at=now - 6 * 10**11, tier="gold")]
    d = await _decide(redis_client, _small(policy="sla_deficit", aging={}), [_ready("x", billing=1)], calls,
                      agent="x", now=now)
    assert d is not None and (d.call_id, d.trace.wait_ms) == ("old", 6 * 10**11)


@pytest.mark.parametrize(("high", "low"), [("general", "net"), ("net", "general")])
async def test_alternative_path_counts_the_best_level(redis_client: aioredis.Redis, high: str, low: str) -> None:
    """x qualifies on two alternatives, at 5 and 1: their proficiency is 5, which beats y's 4."""
    req = Requirements(skills={"billing": 5}, any_of={"general": 1, "net": 1, "tech": 1})
    agents = [_ready("x", idle=10, **{high: 5, low: 1}), _ready("y", idle=0, tech=4)]
    d = await _decide(redis_client, _small(selection="best_proficiency"), agents, [_waiting("c", 0, requirements=req)],
                      call="c", now=1000)
    assert d is not None and d.agent_id == "x" and d.trace.agents_passed == (), "y (level 4) is never read"


async def test_an_alternative_met_on_the_way_does_not_end_the_search(redis_client: aioredis.Redis) -> None:
    """p is read among billing-5 agents, lacks tech and qualifies on general 3; q's net 4 is better."""
    req = Requirements(skills={"billing": 5, "tech": 5}, any_of={"general": 1, "net": 1})
    agents = [_ready("p", idle=0, billing=5, general=3), _ready("q", idle=10, net=4)]
    d = await _decide(redis_client, _small(selection="best_proficiency"), agents, [_waiting("c", 0, requirements=req)],
                      call="c", now=1000)
    assert d is not None and d.agent_id == "q" and d.trace.agents_passed == (Passed("p", "outranked"),)


async def test_best_proficiency_reads_past_a_good_agent(redis_client: aioredis.Redis) -> None:
    req = Requirements(skills={"billing": 3, "tech": 3})
    agents = [_ready("p", idle=0, billing=5, tech=3), _ready("q", idle=10, billing=5, tech=5)]
    d = await _decide(redis_client, _small(selection="best_proficiency"), agents, [_waiting("c", 0, requirements=req)],
                      call="c", now=1000)
    assert d is not None and d.agent_id == "q" and d.trace.agents_passed == (Passed("p", "outranked"),)


@pytest.mark.parametrize("first_on", ["billing", "general"])
async def test_idle_ties_break_by_id_across_keys(redis_client: aioredis.Redis, first_on: str) -> None:
    """The same idle time, under different keys (r:skill:billing, r:skill:general): "A" < "a" < "b"."""
    other = "general" if first_on == "billing" else "billing"
    req = Requirements(skills={"billing": 3}, any_of={"general": 1})
    agents = [_ready("b", idle=5, **{other: 3}), _ready("A", idle=5, **{first_on: 3}),
              _ready("a", idle=5, **{other: 4})]
    d = await _decide(redis_client, _small(selection="longest_idle"), agents, [_waiting("c", 0, requirements=req)],
                      call="c", now=1000)
    assert d is not None and d.agent_id == "A"


async def test_a_lower_level_can_tie_on_proficiency_and_win_on_idle(redis_client: aioredis.Redis) -> None:
    """p (billing 5 + tech 4) and q (billing 4 + tech 5) both have 9; q has waited longer."""
    req = Requirements(skills={"billing": 3, "tech": 3})
    agents = [_ready("p", idle=10, billing=5, tech=4), _ready("q", idle=0, billing=4, tech=5)]
    d = await _decide(redis_client, _small(selection="best_proficiency"), agents, [_waiting("c", 0, requirements=req)],
                      call="c", now=1000)
    assert d is not None and d.agent_id == "q"


@pytest.mark.parametrize("selection", ["best_proficiency", "longest_idle"])
async def test_an_alternative_at_exactly_its_level_qualifies(redis_client: aioredis.Redis, selection: str) -> None:
    req = Requirements(skills={"billing": 5}, any_of={"general": 2})
    d = await _decide(redis_client, _small(selection=selection), [_ready("a", general=2)],
                      [_waiting("c", 0, requirements=req)], call="c", now=1000)
    assert d is not None and d.agent_id == "a"


@pytest.mark.parametrize("idler", ["general", "net"])
async def test_equal_alternatives_go_to_the_longest_idle(redis_client: aioredis.Redis, idler: str) -> None:
    req = Requirements(skills={"billing": 5}, any_of={"general": 1, "net": 1})
    agents = [_ready("a", idle=0 if idler == "general" else 10, general=3),
              _ready("b", idle=0 if idler == "net" else 10, net=3)]
    d = await _decide(redis_client, _small(selection="best_proficiency"), agents, [_waiting("c", 0, requirements=req)],
                      call="c", now=1000)
    assert d is not None and d.agent_id == ("a" if idler == "general" else "b")


async def test_overflow_groups_are_read_even_after_an_overflow_agent_turned_up(redis_client: aioredis.Redis) -> None:
    """p is read among the billing agents but is not in front, so only overflows; q overflows too, idler."""
    req = Requirements(skills={"billing": 3}, groups=frozenset({"front"}), overflow_groups=frozenset({"sup"}))
    sup = frozenset({"sup"})
    agents = [_ready("p", idle=10, groups=sup, billing=4), _ready("q", idle=0, groups=sup)]
    d = await _decide(redis_client, _small(selection="best_proficiency"), agents, [_waiting("c", 0, requirements=req)],
                      call="c", now=1000)
    assert d is not None and d.agent_id == "q"


@pytest.mark.parametrize("selection", ["best_proficiency", "longest_idle"])
async def test_agents_who_left_ready_are_not_read(redis_client: aioredis.Redis, selection: str) -> None:
    """Four agents who went on a call (a whole first read of the ready set) ahead of "e" and "f"."""
    prefix = new_prefix()
    config = _small(selection=selection)
    store = await loaded(redis_client, prefix, config, [_ready(f"a{i}", idle=i, billing=3) for i in range(4)]
                         + [_ready("e", idle=4, billing=3), _ready("f", idle=5, billing=3)], [])
    try:
        for i in range(4):
            await store.set_agent_status(f"a{i}", "on_call", now_ms=100)
        for call_id in ("c1", "c2"):
            await store.enqueue(_waiting(call_id, 0))
        first, second = await store.match_for_call("c1", 1000), await store.match_for_call("c2", 1000)
        assert first is not None and second is not None
        assert (first.agent_id, second.agent_id) == ("e", "f")
        assert first.trace.agents_passed == second.trace.agents_passed == ()
    finally:
        await drop(redis_client, prefix)


async def test_calls_passed_over_say_why(redis_client: aioredis.Redis) -> None:
    calls = [_waiting("c1", 0, requirements=Requirements(skills={"billing": 3})),
             _waiting("c2", 10, requirements=Requirements(skills={"billing": 1, "tech": 3})),
             _waiting("c3", 20, requirements=Requirements(skills={"billing": 1}))]
    d = await _decide(redis_client, _small(), [_ready("x", billing=1)], calls, agent="x", now=1000)
    assert d is not None and d.call_id == "c3"
    assert d.trace.calls_passed == (Passed("c1", "level_too_low"), Passed("c2", "missing_skill"))
