"""Decisions with hand-checked outcomes: preferred agent, eligibility reasons, match_all, traces."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from routing.config import RoutingConfig, load_routing_config, parse_routing_config
from routing.decide import best_agent_for_call, best_call_for_agent, explain_call, match_all
from routing.model import AgentState, Requirements, WaitingCall
from routing.trace import Passed

_BASE: dict[str, Any] = {
    "skills": {"billing": "", "tech": "", "complaints": "", "general": ""},
    "languages": ["zh", "en"],
    "groups": {"front": "", "vip_desk": "", "overflow": ""},
    "tiers": {
        "vip_platinum": {"priority": 300, "customer_vip_tier": 3, "service_level": {"percent": 90, "within_s": 10}},
        "vip_gold": {"priority": 200, "customer_vip_tier": 2, "service_level": {"percent": 90, "within_s": 15}},
        "vip_silver": {"priority": 150, "customer_vip_tier": 1, "service_level": {"percent": 85, "within_s": 20}},
        "normal": {"priority": 100, "service_level": {"percent": 80, "within_s": 20}},
    },
    "entry_points": {
        "billing": {"tier": "normal", "requires": {"skills": {"billing": 3}}, "escalation": [
            {"after_s": 30, "min_level": 2},
            {"after_s": 60, "any_of": {"general": 3}},
            {"after_s": 90, "overflow_groups": ["overflow"]},
        ]},
        "tech": {"tier": "normal", "requires": {"skills": {"tech": 3}}},
        "complaints": {"tier": "normal", "requires": {"skills": {"complaints": 4}, "language": "zh"},
                       "escalation": [{"after_s": 45, "min_level": 3}]},
        "vip": {"tier": "vip_gold", "requires": {"skills": {"billing": 2}, "groups": ["vip_desk"]},
                "wait_for_preferred": True, "escalation": [
                    {"after_s": 20, "drop_preferred": True},
                    {"after_s": 40, "overflow_groups": ["overflow"]},
                ]},
    },
    "policy": "strict",
    "wait_boost": {"per_s": 1, "cap": 90},
    "aging": {"max_wait_s": 120},
    "selection": "best_proficiency",
    "preferred_agent": {"account_manager": True, "last_agent_window_s": 3600},
}


def make_config(**overrides: Any) -> RoutingConfig:
    """The test config; each keyword replaces a top-level key (entry_points are merged by name)."""
    data = copy.deepcopy(_BASE)
    for key, value in overrides.items():
        if key == "entry_points":
            data["entry_points"] |= value
        else:
            data[key] = value
    return parse_routing_config(data, source="test")


def agent(id: str, status: str = "ready", idle: int = 0, langs: str = "zh en", groups: str = "",
          **skills: int) -> AgentState:
    return AgentState(id=id, skills=skills, languages=frozenset(langs.split()), groups=frozenset(groups.split()),
                      status=status, idle_since_ms=idle)  # type: ignore[arg-type]


def call(id: str, entry_point: str = "billing", tier: str = "normal", at: int = 0, lang: str = "zh",
         **kw: Any) -> WaitingCall:
    return WaitingCall(id=id, entry_point=entry_point, tier=tier, enqueued_at_ms=at, language=lang, **kw)


def test_every_reason_an_agent_is_passed_over() -> None:
    config = make_config()
    agents = [
        agent("a_best", idle=50, billing=5),
        agent("b_outranked", idle=10, billing=3),
        agent("c_low", billing=2),
        agent("d_missing", tech=5),
        agent("e_lang", langs="en", billing=5),
        agent("f_paused", status="not_ready", billing=5),
        agent("g_wrapup", status="wrap_up", billing=5),
        agent("h_reserved", status="reserved", billing=5),
        agent("i_oncall", status="on_call", billing=5),
        agent("j_out", status="logged_out", billing=5),
    ]
    decision = best_agent_for_call(call("c1"), agents, config, now_ms=1_000)
    assert decision is not None and decision.agent_id == "a_best" and decision.call_id == "c1"
    assert decision.trace.agents_passed == (
        Passed("b_outranked", "outranked"), Passed("c_low", "level_too_low"), Passed("d_missing", "missing_skill"),
        Passed("e_lang", "language"), Passed("f_paused", "not_ready"), Passed("g_wrapup", "wrap_up"),
        Passed("h_reserved", "reserved"), Passed("i_oncall", "on_call"), Passed("j_out", "logged_out"),
    )
    assert decision.trace.step == 0 and decision.trace.wait_ms == 1_000 and decision.score == 100


def test_a_missing_skill_is_reported_over_a_low_level() -> None:
    own = Requirements(skills={"billing": 3, "tech": 3})
    trace = explain_call(call("c", requirements=own), [agent("half", billing=1)], make_config(), 0)
    assert trace.agents_passed == (Passed("half", "missing_skill"),)


def test_groups_alternatives_and_overflow_paths() -> None:
    config = make_config()
    vip = call("v", entry_point="vip", tier="vip_gold")
    outsider = agent("outsider", billing=5)
    assert explain_call(vip, [outsider], config, 0).agents_passed == (Passed("outsider", "not_in_group"),)
    assert best_agent_for_call(vip, [outsider, agent("desk", groups="vip_desk", billing=2)], config, 0) is not None
    # billing at 60 s: general>=2 (capped) is an alternative; at 90 s the overflow group takes it on language alone.
    generalist, spare = agent("generalist", general=2), agent("spare", groups="overflow")
    assert best_agent_for_call(call("c"), [generalist, spare], config, 59_999) is None
    d60 = best_agent_for_call(call("c"), [generalist, spare], config, 60_000)
    assert d60 is not None and d60.agent_id == "generalist" and d60.trace.step == 2
    d90 = best_agent_for_call(call("c"), [spare], config, 90_000)
    assert d90 is not None and d90.agent_id == "spare" and d90.trace.step == 3
    assert best_agent_for_call(call("c", lang="en"), [agent("zh_only", langs="zh", groups="overflow")],
                               config, 90_000) is None, "overflow still needs the language"


def test_best_proficiency_prefers_the_skills_path_then_levels_then_idle() -> None:
    config = make_config()
    at60 = 60_000  # billing>=2 or general>=2
    agents = [agent("alt5", idle=0, general=5), agent("skill2", idle=9, billing=2),
              agent("skill4", idle=5, billing=4), agent("skill4_older", idle=3, billing=4)]
    d = best_agent_for_call(call("c"), agents, config, at60)
    assert d is not None and d.agent_id == "skill4_older"
    d = best_agent_for_call(call("c"), agents[:2], config, at60)
    assert d is not None and d.agent_id == "skill2", "holding the skill beats a better alternative"
    idle_config = make_config(selection="longest_idle")
    d = best_agent_for_call(call("c"), agents, idle_config, at60)
    assert d is not None and d.agent_id == "alt5"
    twins = [agent("b", idle=7, billing=4), agent("a", idle=7, billing=4)]
    d = best_agent_for_call(call("c"), twins, config, 0)
    assert d is not None and d.agent_id == "a", "last tie-break: agent id"


def test_preferred_agent_first_even_over_better_agents() -> None:
    config = make_config()
    agents = [agent("expert", idle=0, billing=5), agent("am", idle=99, billing=3)]
    d = best_agent_for_call(call("c", preferred_agent="am"), agents, config, 0)
    assert d is not None and d.agent_id == "am" and d.trace.preferred_agent == "am"
    # Not ready or not eligible: billing does not wait, the next best agent takes it.
    busy = [agents[0], agent("am", status="on_call", billing=3)]
    d = best_agent_for_call(call("c", preferred_agent="am"), busy, config, 0)
    assert d is not None and d.agent_id == "expert" and not d.trace.waits_for_preferred
    weak = [agents[0], agent("am", billing=1)]
    d = best_agent_for_call(call("c", preferred_agent="am"), weak, config, 0)
    assert d is not None and d.agent_id == "expert"


def test_a_vip_waits_for_the_preferred_agent_until_the_step_drops_it() -> None:
    config = make_config()
    vip = call("v", entry_point="vip", tier="vip_gold", preferred_agent="chen")
    other = agent("dana", groups="vip_desk", billing=5)
    chen_busy = agent("chen", status="on_call", groups="vip_desk", billing=5)
    trace = explain_call(vip, [other, chen_busy], config, 19_999)
    assert trace.waits_for_preferred and trace.agents_passed == (
        Passed("chen", "on_call"), Passed("dana", "waiting_for_preferred"))
    assert best_agent_for_call(vip, [other, chen_busy], config, 19_999) is None
    assert best_call_for_agent(other, [vip], config, 19_999) is None
    d = best_call_for_agent(other, [vip], config, 20_000)
    assert d is not None and d.agent_id == "dana" and d.trace.step == 1 and d.trace.preferred_agent is None
    # The preferred agent, once free, gets it while it is held for them.
    chen = agent("chen", groups="vip_desk", billing=2)
    d = best_agent_for_call(vip, [other, chen], config, 5_000)
    assert d is not None and d.agent_id == "chen"


def test_last_agent_within_the_window_is_preferred() -> None:
    config = make_config()
    agents = [agent("expert", billing=5), agent("last", billing=3)]
    recent = call("c", at=10_000_000, last_agent="last", last_served_at_ms=10_000_000 - 3_600_000)
    d = best_agent_for_call(recent, agents, config, 10_000_000)
    assert d is not None and d.agent_id == "last"
    stale = call("c", at=10_000_000, last_agent="last", last_served_at_ms=10_000_000 - 3_600_001)
    d = best_agent_for_call(stale, agents, config, 10_000_000)
    assert d is not None and d.agent_id == "expert"


def test_agent_side_scores_calls_of_every_entry_point_it_serves() -> None:
    config = make_config()
    both = agent("both", billing=4, tech=4, complaints=2)
    calls = [call("bill", at=0), call("tech_gold", entry_point="tech", tier="vip_gold", at=5_000),
             call("compl", entry_point="complaints", at=0), call("ghost", entry_point="gone"),
             call("odd", tier="vip_diamond")]
    d = best_call_for_agent(both, calls, config, 10_000)
    assert d is not None and d.call_id == "tech_gold" and d.score == 200
    assert d.trace.calls_passed == (Passed("bill", "outranked"), Passed("compl", "level_too_low"),
                                    Passed("ghost", "unknown_entry_point"), Passed("odd", "unknown_tier"))
    assert best_call_for_agent(agent("paused", status="not_ready", billing=5), calls, config, 10_000) is None
    with pytest.raises(KeyError, match="unknown entry point"):
        explain_call(calls[3], [both], config, 0)


def test_match_all_pairs_in_rank_order_without_reuse() -> None:
    config = make_config()
    agents = [agent("x", idle=1, billing=5, tech=5), agent("y", idle=2, billing=3), agent("z", status="on_call")]
    calls = [call("n1", at=0), call("n2", at=1), call("gold", tier="vip_gold", at=2), call("t", entry_point="tech")]
    decisions = match_all(calls, agents, config, now_ms=10_000)
    assert [(d.call_id, d.agent_id) for d in decisions] == [("gold", "x"), ("n1", "y")]
    assert Passed("x", "taken") in decisions[1].trace.agents_passed
    # n2 and t wait: nobody left who can take them.
    with pytest.raises(ValueError, match="two agents share the id 'x'"):
        match_all(calls, [*agents, agent("x")], config, 0)
    with pytest.raises(ValueError, match="two calls share the id 'n1'"):
        best_call_for_agent(agents[0], [calls[0], calls[0]], config, 0)


def test_match_all_skips_a_call_nobody_can_take() -> None:
    config = make_config()
    calls = [call("gold_compl", entry_point="complaints", tier="vip_gold"), call("bill")]
    decisions = match_all(calls, [agent("a", billing=3)], config, 0)
    assert [(d.call_id, d.agent_id) for d in decisions] == [("bill", "a")]


def test_the_shipped_hotline_routes_a_platinum_caller_to_their_account_manager_first() -> None:
    config = load_routing_config(Path(__file__).resolve().parents[1] / "config" / "routing.yaml")
    t0 = 1_700_000_000_000
    li_na = WaitingCall(id="1700.7", entry_point="vip", tier=config.tier_for("vip", vip_tier=3), enqueued_at_ms=t0,
                        language="zh", preferred_agent="chen")  # config/customers.yaml: c-1002
    wang = WaitingCall(id="1700.5", entry_point="billing", tier=config.tier_for("billing", 0),
                       enqueued_at_ms=t0 - 30_000, language="zh")
    alice = config.agent_state("alice", status="ready", idle_since_ms=t0 - 60_000)
    assert li_na.tier == "vip_platinum"
    # Held for Chen: Alice takes the normal billing caller meanwhile.
    d = best_call_for_agent(alice, [li_na, wang], config, t0 + 10_000)
    assert d is not None and d.call_id == "1700.5"
    assert d.trace.calls_passed == (Passed("1700.7", "waiting_for_preferred"),)
    # Preference dropped at 20 s, but only Chen has vip_care; at 40 s billing>=4 will do.
    assert best_call_for_agent(alice, [li_na], config, t0 + 39_999) is None
    d = best_call_for_agent(alice, [li_na, wang], config, t0 + 40_000)
    assert d is not None and d.call_id == "1700.7" and d.trace.step == 2
    assert d.score == 340_000  # 300*1000 + min(40000*1, 90*1000)
    # Had Chen been free, match_all gives Li Na to Chen and the billing caller to Alice.
    chen = config.agent_state("chen", status="ready", idle_since_ms=t0)
    pairs = match_all([li_na, wang], [alice, chen, config.agent_state("bob", status="logged_out")], config, t0 + 1_000)
    assert [(p.call_id, p.agent_id) for p in pairs] == [("1700.7", "chen"), ("1700.5", "alice")]
