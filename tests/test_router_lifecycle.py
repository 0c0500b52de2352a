"""The router store's conditional steps after a match (the CTI routing mode controller's), against a
real redis-server: each acts once however many servers ask, and only from the state it expects.
And the pure agent state machine they follow."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from cti.router import RouterStore
from cti.router.agent_state import MANUAL, STATUSES, TRANSITIONS, AgentStateError, check, sources
from routing.config import RoutingConfig, load_routing_config
from routing.model import AgentState, WaitingCall

ROOT = Path(__file__).resolve().parent.parent
_prefixes = itertools.count()


@pytest.fixture
def demo() -> RoutingConfig:
    return load_routing_config(ROOT / "config" / "routing.yaml")


@pytest.fixture
async def store(redis_client: aioredis.Redis, demo: RoutingConfig) -> AsyncIterator[RouterStore]:
    prefix = f"test:life:{next(_prefixes)}:"
    s = RouterStore(redis_client, demo, key_prefix=prefix)
    await s.apply_config()
    yield s
    keys = [k async for k in redis_client.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis_client.unlink(*keys)


def _call(call_id: str, at: int = 0) -> WaitingCall:
    return WaitingCall(id=call_id, entry_point="billing", tier="normal", enqueued_at_ms=at, language="zh")


async def _offered(store: RouterStore, demo: RoutingConfig, call_id: str = "c1", agent: str = "alice",
                   at: int = 1_000) -> None:
    await store.put_agent(demo.agent_state(agent, status="ready", idle_since_ms=100))
    assert await store.enqueue(_call(call_id), channel=f"Local/s@cti-entry-{call_id};2")
    decision = await store.match_for_call(call_id, at)
    assert decision is not None and decision.agent_id == agent


# ----- settle ---------------------------------------------------------------------------------------------

@pytest.mark.network
async def test_settle_says_where_the_call_was_and_acts_once(store: RouterStore, demo: RoutingConfig) -> None:
    await store.enqueue(_call("waiting"))
    first = await store.settle("waiting", agent_status="ready", now_ms=1)
    assert (first.state, first.agent, first.named) == ("waiting", None, False)
    assert (await store.settle("waiting", agent_status="ready", now_ms=1)).state is None, "only once"

    await _offered(store, demo, "offered")
    assert await store.call_channel("offered") == "Local/s@cti-entry-offered;2"
    gone = await store.settle("offered", agent="alice", agent_status="ready", now_ms=5_000)
    assert (gone.state, gone.agent, gone.named) == ("offered", "alice", True)
    assert await store.call_channel("offered") is None
    alice = await store.agent("alice")
    assert alice is not None and (alice.status, alice.idle_since_ms) == ("ready", 100), "a void offer keeps idle"

    await store.enqueue(_call("ringing"))
    assert (await store.match_for_call("ringing", 6_000)) is not None
    assert await store.mark_dialed("ringing", "alice")
    assert not await store.mark_dialed("ringing", "alice"), "once"
    answered = await store.settle("ringing", agent="alice", agent_status="on_call", keep_call=True, now_ms=7_000)
    assert (answered.state, answered.agent, answered.named) == ("ringing", "alice", True)
    assert await store.reservations() == {}
    # on_call about that call: only a wrap-up for the same call moves her
    for call_id, moves in (("other", False), ("ringing", True)):
        step = await store.transition("alice", "wrap_up", expect={"on_call"}, expect_call=call_id, now_ms=8_000)
        assert step.changed is moves


@pytest.mark.network
async def test_settle_for_another_agent_voids_the_offer(store: RouterStore, demo: RoutingConfig) -> None:
    await _offered(store, demo)
    settled = await store.settle("c1", agent="bob", agent_status="on_call", now_ms=2_000)
    assert (settled.state, settled.agent, settled.named) == ("offered", "alice", False)
    assert (await store.agent("alice")).status == "ready"  # type: ignore[union-attr]


@pytest.mark.network
async def test_requeue_only_for_the_agent_it_is_reserved_for(store: RouterStore, demo: RoutingConfig) -> None:
    await _offered(store, demo)
    assert not await store.requeue("c1", agent="bob")
    assert await store.requeue("c1", agent="alice", reason="no_answer")
    alice = await store.agent("alice")
    assert alice is not None and (alice.status, alice.not_ready_reason) == ("not_ready", "no_answer")


# ----- agents ---------------------------------------------------------------------------------------------

@pytest.mark.network
async def test_transition_from_the_expected_statuses_only(store: RouterStore, demo: RoutingConfig) -> None:
    assert (await store.transition("nobody", "ready", expect={"not_ready"}, now_ms=1)).before is None
    await store.put_agent(demo.agent_state("bob", status="not_ready", not_ready_reason="lunch"))
    refused = await store.transition("bob", "logged_out", expect={"ready"}, now_ms=1)
    assert (refused.changed, refused.before) == (False, "not_ready")
    moved = await store.transition("bob", "ready", expect={"not_ready", "logged_out"}, now_ms=900)
    assert (moved.changed, moved.before) == (True, "not_ready")
    bob = await store.agent("bob")
    assert bob is not None and (bob.status, bob.idle_since_ms, bob.not_ready_reason) == ("ready", 900, None)
    assert await store.ready_count() == 1
    with pytest.raises(ValueError, match="expect at least one status"):
        await store.transition("bob", "ready", expect=(), now_ms=1)


@pytest.mark.network
async def test_wrap_ups_end_at_their_deadline_for_one_caller(store: RouterStore, demo: RoutingConfig) -> None:
    for agent in ("alice", "bob"):
        await store.put_agent(demo.agent_state(agent, status="on_call"))
        assert (await store.transition(agent, "wrap_up", expect={"on_call"}, now_ms=0, call=f"{agent}-call",
                                       wrap_until_ms=10_000 if agent == "alice" else 20_000)).changed
    assert await store.end_wrap_ups(9_999) == []
    assert await store.end_wrap_ups(10_000) == ["alice"]
    assert await store.end_wrap_ups(10_000) == [], "once"
    alice = await store.agent("alice")
    assert alice is not None and (alice.status, alice.idle_since_ms) == ("ready", 10_000)
    # Bob ends his wrap-up by hand: the deadline goes with it.
    assert (await store.transition("bob", "not_ready", expect={"wrap_up"}, now_ms=15_000, reason="break")).changed
    assert await store.end_wrap_ups(30_000) == []
    assert (await store.agent("bob")).status == "not_ready"  # type: ignore[union-attr]


@pytest.mark.network
async def test_init_agent_keeps_what_the_store_has(store: RouterStore, demo: RoutingConfig) -> None:
    assert await store.init_agent(demo.agent_state("alice", status="ready"), now_ms=500)
    assert (await store.agent("alice")).idle_since_ms == 500  # type: ignore[union-attr]
    await store.set_agent_status("alice", "on_call", now_ms=600)
    richer = demo.agent_state("alice", status="ready")
    assert not await store.init_agent(richer, now_ms=700)
    alice = await store.agent("alice")
    assert alice is not None and (alice.status, alice.idle_since_ms) == ("on_call", 500)
    # a ready agent takes a new profile into the ready sets
    await store.put_agent(demo.agent_state("bob", status="ready", idle_since_ms=1))
    bob_with_billing = AgentState(id="bob", skills={"billing": 5}, languages=frozenset({"zh"}), status="ready")
    assert not await store.init_agent(bob_with_billing, now_ms=2)
    await store.enqueue(_call("c1"))
    decision = await store.match_for_call("c1", 10)
    assert decision is not None and decision.agent_id == "bob"


# ----- stale offers ---------------------------------------------------------------------------------------

@pytest.mark.network
async def test_expire_offers_requeues_only_undialled_old_ones(store: RouterStore, demo: RoutingConfig) -> None:
    await _offered(store, demo, "old", "alice", at=1_000)
    await _offered(store, demo, "dialled", "chen", at=1_000)
    assert await store.mark_dialed("dialled", "chen")
    assert await store.expire_offers(999) == []
    assert await store.expire_offers(1_000) == [("old", "alice")]
    assert await store.expire_offers(1_000) == [], "once"
    assert [c.id for c in await store.waiting()] == ["old"]
    assert await store.reservations() == {"dialled": "chen"}
    alice = await store.agent("alice")
    assert alice is not None and (alice.status, alice.idle_since_ms) == ("ready", 100)


# ----- the state machine (pure) ---------------------------------------------------------------------------

def test_the_manual_steps_are_legal_steps_and_never_leave_an_offer_or_a_call() -> None:
    assert set(TRANSITIONS) == set(STATUSES) == set(MANUAL)
    for status, nxt in MANUAL.items():
        assert nxt <= TRANSITIONS[status]
        assert nxt <= {"ready", "not_ready", "logged_out"}
    assert MANUAL["reserved"] == MANUAL["on_call"] == frozenset()
    assert sources("ready", manual=True) == {"logged_out", "ready", "not_ready", "wrap_up"}
    assert sources("on_call") == {"reserved", "ready"}  # ready: a call outside routing (reconcile.py)
    assert sources("wrap_up") == {"on_call"}


def test_check_names_the_agent_the_status_and_what_is_allowed() -> None:
    check("alice", {"reserved"}, "on_call")
    with pytest.raises(AgentStateError, match=r"agent 'alice' is on_call: cannot go ready \(from on_call: wrap_up\)"):
        check("alice", {"on_call"}, "ready")
    with pytest.raises(AgentStateError, match="only as the call goes on"):
        check("alice", {"reserved"}, "logged_out", manual=True)
