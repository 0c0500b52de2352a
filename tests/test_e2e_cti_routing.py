"""CTI routing mode end to end (``cti simulate``, :mod:`cti.router.simulate`): the simulator playing
extensions_cti.conf, several routing servers on one real redis-server, each with its own AMI connection,
call model, controller and Redis connection, on accelerated simulated time. What is checked comes from the
simulator's own records of every call, not from the servers: no call answered twice, no agent rung or
talking for two callers at once, every call answered, abandoned by its caller or handed to the fallback
Queue() (none lost), including a run where one server dies in the middle of an offer.

No assertion here is about wall-clock time. VIP tiers' service level at or above the normal tier's is the
benchmark's claim (``cti simulate``), not asserted: it depends on the draw and on the box.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from cti.logs import configure_logging
from cti.router.simulate import (
    DEFAULT_ROUTING,
    ScaledClock,
    Workload,
    double_assignments,
    format_summary,
    simulate,
    summarize,
)
from routing.config import load_routing_config
from routing.eligibility import Match, match
from routing.escalation import effective
from routing.model import WaitingCall


@pytest.fixture
def quiet() -> Iterator[None]:
    """The servers log every routing step at info: at warning, as ``cti simulate`` runs them."""
    configure_logging("json", "WARNING", cache=False)
    yield  # conftest puts structlog's defaults back


def _assert_sound(summary: dict[str, Any]) -> None:
    report = format_summary(summary)
    assert summary["double_assignments"] == 0, report
    assert summary["lost_calls"] == 0, report
    assert summary["still_in_pbx"] == 0, report
    assert summary["answered"] + summary["abandoned"] + summary["fallback"] == summary["calls"], report
    for name, row in {**summary["tiers"], **summary["entry_points"]}.items():
        assert row["lost"] == 0, name
        assert row["answered"] + row["abandoned"] + row["fallback"] == row["offered"], name
    assert summary["routing_counters"]["redis_errors"] == 0, report


# ----- the workload and the summary, without a run -------------------------------------------------


def test_the_generated_agents_can_serve_every_entry_point_in_every_language() -> None:
    config = load_routing_config(DEFAULT_ROUTING)
    work = Workload.draw(config, calls=500, agents=40, vip_share=0.1, seed=1, mean_talk_s=30, mean_patience_s=120,
                         ring_s=3, load=0.9, calls_per_minute=None, local=True)
    assert [a.id for a in work.agents][:2] == ["agent001", "agent002"] and len(work.agents) == 40
    assert set(work.routing.agents) == {a.id for a in work.agents}
    assert work.vip_tiers == ("vip_platinum", "vip_gold", "vip_silver") and work.normal_tier == "normal"
    states = [work.routing.agent_state(a.id, status="ready") for a in work.agents]
    for entry in config.entry_points:
        for language in config.languages:
            call = WaitingCall(id="c", entry_point=entry, tier="normal", enqueued_at_ms=0, language=language)
            req = effective(call, work.routing, 0).requirements
            assert any(isinstance(match(agent, req), Match) for agent in states), (entry, language)
    callers = work.callers
    assert len(callers) == 500 and all(b.at_s >= a.at_s for a, b in itertools.pairwise(callers))
    vips = [c for c in callers if c.tier in work.vip_tiers]
    assert 20 <= len(vips) <= 80  # a tenth of 500, give or take the draw
    assert {c.entry for c in callers if c.tier == "normal"} == {"billing", "tech_support", "complaints"}


def _record(linkedid: str, rings: list[dict[str, Any]], *, outcome: str | None = "answered", talk_s: float = 20.0,
            tier: str = "normal", hold_s: float | None = 5.0) -> dict[str, Any]:
    answered = [r for r in rings if r["outcome"] == "answer"]
    segments = [{"queue": None, "joined_at": r["at"], "left_at": r["at"] + r["ring_s"],
                 "talk_s": talk_s if r["outcome"] == "answer" else None} for r in rings]
    return {"linkedid": linkedid, "segments": segments,
            "cti": {"entry": "billing", "tier": tier, "outcome": outcome, "enqueued_at": 100.0, "hold_s": hold_s,
                    "rings": rings, "answered_by": answered[0]["agent"] if answered else None}}


def _ring(agent: str, at: float, outcome: str = "answer", ring_s: float = 3.0) -> dict[str, Any]:
    return {"agent": agent, "endpoint": f"Local/{agent}@sim-agents/n", "at": at, "outcome": outcome,
            "ring_s": ring_s}


def test_double_assignments_are_overlapping_rings_or_talks_of_one_agent_or_two_answers() -> None:
    one_after_another = [_record("a", [_ring("agent001", 100.0)]),  # rings 100-103, talks until 123
                         _record("b", [_ring("agent001", 123.0)])]
    assert double_assignments(one_after_another)["agent_overlaps"] == 0
    while_talking = [_record("a", [_ring("agent001", 100.0)]),
                     _record("b", [_ring("agent001", 110.0, outcome="busy", ring_s=0.0)])]
    found = double_assignments(while_talking)
    assert found["agent_overlaps"] == 1 and "agent001" in found["examples"][0]
    two_answers = [_record("a", [_ring("agent001", 100.0), _ring("agent002", 130.0)])]
    assert double_assignments(two_answers)["calls_answered_twice"] == 1


def test_the_summary_counts_service_level_against_each_calls_tier() -> None:
    config = load_routing_config(DEFAULT_ROUTING)
    work = Workload.draw(config, calls=0, agents=4, vip_share=0.1, seed=1, mean_talk_s=30, mean_patience_s=120,
                         ring_s=3, load=0.9, calls_per_minute=None, local=True)
    records = [
        _record("1", [_ring("agent001", 100.0)], tier="vip_platinum", hold_s=9.0),  # within 10 s
        _record("2", [_ring("agent002", 100.0)], tier="vip_platinum", hold_s=12.0),  # not within 10 s
        _record("3", [_ring("agent003", 100.0)], hold_s=12.0),  # normal: within 20 s
        _record("4", [], outcome="abandoned_hold", hold_s=30.0),
        _record("5", [], outcome="fallback", hold_s=300.0),
        _record("6", [], outcome=None, hold_s=None),  # ended without a cause
    ]
    summary = summarize(records, work, still_live=["7: hold when the run stopped"], placed=7)
    platinum, normal = summary["tiers"]["vip_platinum"], summary["tiers"]["normal"]
    assert (platinum["offered"], platinum["answered"], platinum["service_level"]) == (2, 2, 0.5)
    assert platinum["target"] == {"percent": 90, "within_s": 10}
    assert (normal["offered"], normal["answered"], normal["abandoned"], normal["fallback"]) == (4, 1, 1, 1)
    assert normal["service_level"] == 0.25 and normal["lost"] == 1
    assert (summary["lost_calls"], summary["fallback"], summary["calls"]) == (2, 1, 7)
    assert summary["lost_examples"][0].startswith("7: hold")
    assert "vip_platinum" in format_summary(summary)


# ----- real runs -------------------------------------------------------------------------------------


@pytest.mark.network
async def test_two_servers_route_300_callers_without_double_assignments_or_lost_calls(
        redis_url: str, quiet: None) -> None:
    summary = await simulate(calls=300, agents=30, vip_share=0.1, seed=7, servers=2, redis_url=redis_url)
    _assert_sound(summary)
    assert summary["answered"] > summary["abandoned"]
    assert {s["name"] for s in summary["servers"]} == {"s1", "s2"}
    assert all(s["offered"] > 0 for s in summary["servers"]), format_summary(summary)  # both route
    # Every answer the simulator saw, one server settled (and counted) once.
    assert summary["routing_counters"]["answered"] == summary["answered"], format_summary(summary)


@pytest.mark.network
@pytest.mark.timeout(600)  # 60-120 s of real work, 2 minutes on a slow, busy 2-core box: a bound, not a target
async def test_2000_callers_50_agents_two_servers_one_killed_mid_offer(redis_url: str, quiet: None) -> None:
    """The done-when run: 2,000 calls, 50 agents, two servers, the first one killed half-way through, between
    the Setvars and the Redirect of an offer; the other carries on, the reservation left behind included."""
    summary = await simulate(calls=2000, agents=50, vip_share=0.1, seed=1, servers=2, kill_server_at=1000,
                             redis_url=redis_url)
    _assert_sound(summary)
    dead, alive = summary["servers"]
    assert dead["killed_after_calls"] == 1000 and alive["killed_after_calls"] is None
    assert dead["orphan"] is not None, format_summary(summary)  # it died in the middle of an offer
    assert dead["orphan_outcome"] in ("answered", "abandoned", "fallback"), format_summary(summary)
    if dead["orphan_outcome"] == "answered":  # its reservation had to be taken back first
        assert alive["offer_expired"] + alive.get("stuck_reserved", 0) >= 1, format_summary(summary)
    assert alive["answered"] > 0


def test_the_clock_stands_still_while_the_process_stalls_and_keeps_its_rate_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    wall = [1000.0]
    monkeypatch.setattr("cti.router.simulate.time.perf_counter", lambda: wall[0])
    clock = ScaledClock(60.0, max_step_s=0.05)
    start = clock()
    wall[0] += 0.01
    assert clock() == pytest.approx(start + 0.6)
    wall[0] += 2.0  # nobody read the clock for 2 s: a stall, counted as 50 ms
    assert clock() == pytest.approx(start + 0.6 + 3.0)
    assert clock.frozen_s == pytest.approx(1.95)
    clock.set_rate(30.0)
    wall[0] += 0.01
    assert clock() == pytest.approx(start + 3.6 + 0.3)
    clock.set_rate(600.0)  # never above speed
    assert clock.rate == 60.0
