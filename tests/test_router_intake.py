"""How a held caller's CTI_* variables and directory record become the call routing queues (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cti.router.intake import waiting_call
from routing.config import RoutingConfig, load_routing_config
from routing.model import Requirements

ROOT = Path(__file__).resolve().parent.parent
AGENTS = frozenset({"alice", "bob", "chen"})


@pytest.fixture(scope="module")
def demo() -> RoutingConfig:
    return load_routing_config(ROOT / "config" / "routing.yaml")


def test_the_hotline_vip_route(demo: RoutingConfig) -> None:
    """What config/ivr/hotline.yaml's `vip` route leaves on the channel, for a gold customer of Chen's."""
    variables = {"CTI_OUTCOME": "route", "CTI_ENTRY": "vip", "CTI_PRIORITY": "2", "CTI_TIER": "",
                 "CTI_REQUIREMENTS": '{"language":null,"preferred_agents":["chen"],"skills":{}}', "CTI_LANGUAGE": "zh"}
    intake = waiting_call("1.2", demo, now_ms=5, entry="vip", variables=variables,
                          customer={"id": "c9", "account_manager": "chen", "vip_tier": 3}, agents=AGENTS)
    call = intake.call
    assert (call.entry_point, call.tier, call.language, call.preferred_agent, call.requirements) == (
        "vip", "vip_platinum", "zh", "chen", None), "no skills named: the entry point's requirements apply"
    assert (call.id, call.enqueued_at_ms, intake.ignored) == ("1.2", 5, ())


def test_skills_from_the_ivr_replace_the_entry_points(demo: RoutingConfig) -> None:
    variables = {"CTI_REQUIREMENTS": '{"skills":{"network":2,"billing":9,"astrology":1},"language":"en"}',
                 "CTI_LANGUAGE": "zh"}
    intake = waiting_call("1.2", demo, now_ms=0, entry="tech_support", variables=variables, customer=None,
                          agents=AGENTS)
    assert intake.call.requirements == Requirements(skills={"network": 2}, language="en")
    assert intake.call.language == "en"
    assert sorted(intake.ignored) == ["skill 'astrology': not in the routing config",
                                      "skill 'billing': level 9 is not 1..5"]


def test_what_routing_cannot_use_is_left_out_and_said(demo: RoutingConfig) -> None:
    variables = {"CTI_ENTRY": "sales", "CTI_TIER": "diamond", "CTI_REQUIREMENTS": "{not json", "CTI_LANGUAGE": "fr"}
    intake = waiting_call("1.2", demo, now_ms=0, entry="", variables=variables,
                          customer={"account_manager": "zed", "vip_tier": True}, agents=AGENTS)
    call = intake.call
    assert (call.entry_point, call.tier, call.language, call.preferred_agent) == ("billing", "normal", None, None)
    assert intake.ignored == ("CTI_ENTRY 'sales': no such entry point", "CTI_TIER 'diamond': no such tier",
                              "CTI_REQUIREMENTS: not JSON", "language 'fr': not in the routing config",
                              "preferred agent 'zed': not a configured agent")


def test_the_ctihold_entry_wins_and_a_known_tier_is_kept(demo: RoutingConfig) -> None:
    intake = waiting_call("1.2", demo, now_ms=0, entry="complaints", variables={"CTI_ENTRY": "billing",
                          "CTI_TIER": "vip_silver"}, customer={"vip_tier": 3}, agents=AGENTS)
    assert (intake.call.entry_point, intake.call.tier) == ("complaints", "vip_silver")
