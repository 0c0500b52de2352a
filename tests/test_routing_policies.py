"""Each scoring policy against hand-computed scores (routing/README.md: "Call score, per policy")."""

from __future__ import annotations

from routing.decide import best_call_for_agent
from routing.model import WaitingCall
from routing.score import AGED_BASE, call_score
from tests.test_routing_decide import agent, call, make_config

NOW = 200_000
ANYONE = agent("anyone", billing=5, tech=5, complaints=5)


def _order(policy: str, calls: list[WaitingCall], **overrides: object) -> list[tuple[str, int]]:
    """The calls as ANYONE would take them, one after the other, with each score."""
    config = make_config(policy=policy, **overrides)
    taken: list[tuple[str, int]] = []
    waiting = list(calls)
    while (d := best_call_for_agent(ANYONE, waiting, config, NOW)) is not None:
        taken.append((d.call_id, d.score))
        waiting = [c for c in waiting if c.id != d.call_id]
    return taken


def test_strict_is_tier_priority_then_arrival() -> None:
    calls = [call("normal_old", at=NOW - 100_000), call("gold_new", tier="vip_gold", at=NOW - 1_000),
             call("plat", tier="vip_platinum", at=NOW - 500), call("gold_old", tier="vip_gold", at=NOW - 2_000)]
    assert _order("strict", calls) == [("plat", 300), ("gold_old", 200), ("gold_new", 200), ("normal_old", 100)]


def test_priority_plus_wait_adds_a_capped_boost() -> None:
    # score = priority*1000 + min(wait_ms*per_s, cap*1000), per_s 1, cap 90
    calls = [call("normal_60s", at=NOW - 60_000), call("silver_5s", tier="vip_silver", at=NOW - 5_000),
             call("normal_95s", at=NOW - 95_000), call("gold_1s", tier="vip_gold", at=NOW - 1_000)]
    assert _order("priority_plus_wait", calls) == [
        ("gold_1s", 201_000),      # 200000 + 1000: a gap of 100 > cap 90, no normal call overtakes it
        ("normal_95s", 190_000),   # 100000 + min(95000, 90000)
        ("normal_60s", 160_000),   # 100000 + 60000: overtook the silver call (gap 50 < 60 s of boost)
        ("silver_5s", 155_000),    # 150000 + 5000
    ]


def test_priority_plus_wait_boost_rate() -> None:
    # per_s 3: 40 s adds 120 points, capped at 100.
    calls = [call("normal_40s", at=NOW - 40_000), call("gold_0s", tier="vip_gold", at=NOW),
             call("normal_20s", at=NOW - 20_000)]
    assert _order("priority_plus_wait", calls, wait_boost={"per_s": 3, "cap": 100}) == [
        ("normal_40s", 200_000), ("gold_0s", 200_000), ("normal_20s", 160_000)]  # tie -> earlier enqueue


def test_sla_deficit_ranks_by_share_of_the_target_used() -> None:
    # score = wait_ms // within_s: permille of the tier's answer-time target
    calls = [call("normal_15s", at=NOW - 15_000), call("gold_10s", tier="vip_gold", at=NOW - 10_000),
             call("plat_7s", tier="vip_platinum", at=NOW - 7_000), call("plat_12s", tier="vip_platinum",
                                                                      at=NOW - 12_345)]
    assert _order("sla_deficit", calls) == [
        ("plat_12s", 1_234),   # 12345 // 10: behind its 10 s target
        ("normal_15s", 750),   # 15000 // 20
        ("plat_7s", 700),      # 7000 // 10
        ("gold_10s", 666),     # 10000 // 15
    ]


def test_aging_puts_a_call_at_the_bound_ahead_under_every_policy() -> None:
    for policy in ("strict", "priority_plus_wait", "sla_deficit"):
        calls = [call("normal_120s", at=NOW - 120_000), call("plat_fresh", tier="vip_platinum", at=NOW - 1)]
        assert _order(policy, calls)[0] == ("normal_120s", AGED_BASE + 120_000), policy
        calls = [call("normal_119s", at=NOW - 119_999), call("plat_fresh", tier="vip_platinum", at=NOW - 1)]
        assert _order(policy, calls)[0][0] == ("normal_119s" if policy == "sla_deficit" else "plat_fresh"), policy


def test_aged_calls_go_oldest_first_whatever_their_tier() -> None:
    calls = [call("plat_130s", tier="vip_platinum", at=NOW - 130_000), call("normal_150s", at=NOW - 150_000)]
    assert _order("strict", calls) == [("normal_150s", AGED_BASE + 150_000), ("plat_130s", AGED_BASE + 130_000)]


def test_without_aging_strict_starves_the_lower_tier() -> None:
    calls = [call("normal_1h", at=NOW - 3_600_000), call("gold_fresh", tier="vip_gold", at=NOW)]
    assert _order("strict", calls, aging={"max_wait_s": None})[0] == ("gold_fresh", 200)


def test_last_tie_break_is_the_call_id() -> None:
    calls = [call("b", at=0), call("a", at=0), call("c", at=0)]
    assert [c for c, _ in _order("strict", calls)] == ["a", "b", "c"]


def test_score_values_stay_exact_for_lua() -> None:
    config = make_config(policy="priority_plus_wait", wait_boost={"per_s": 1000, "cap": 1_000_000},
                         aging={"max_wait_s": None})
    tier = config.tiers["vip_platinum"]
    huge = call_score(tier, 10**12, config)
    assert huge == 300_000 + 1_000_000_000 and huge < AGED_BASE < 2**53
    aged = make_config(policy="strict")
    assert call_score(tier, 10**12, aged) == AGED_BASE + 10**12 < 2**53
