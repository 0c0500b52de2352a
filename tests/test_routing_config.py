"""The routing config: the shipped file loads, and a bad one names the file, the key path and why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from routing.config import RoutingConfigError, load_routing_config, parse_routing_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "config" / "routing.yaml"

GOOD = """
skills: {billing: bills, complaint_handling: complaints, general: anything}
languages: [zh, en]
groups: {overflow: supervisors}
tiers:
  vip_gold: {priority: 200, customer_vip_tier: 2, service_level: {percent: 90, within_s: 10}}
  normal: {priority: 100, service_level: {percent: 80, within_s: 20}}
entry_points:
  billing:
    tier: normal
    requires: {skills: {billing: 3}}
    escalation:
      - {after_s: 30, min_level: 2}
      - {after_s: 60, any_of: {general: 2}, overflow_groups: [overflow]}
"""


def test_shipped_config_loads_and_is_the_bilingual_hotline() -> None:
    config = load_routing_config(SHIPPED)
    assert set(config.entry_points) == {"billing", "tech_support", "complaints", "vip"}
    assert config.languages == ["zh", "en"]
    assert "complaint_handling" in config.entry_points["complaints"].requires.skills
    vip_tiers = [name for name in config.tiers if "vip" in name]
    assert {"vip_platinum", "vip_gold"} <= set(vip_tiers) and "normal" in config.tiers
    # The directory's vip_tier 0..3 lands on a tier; the VIP line is never below vip_gold.
    assert [config.tier_for("billing", v) for v in range(4)] == ["normal", "vip_silver", "vip_gold", "vip_platinum"]
    assert config.tier_for("vip", 0) == config.tier_for("vip", 1) == "vip_gold"
    assert config.tier_for("vip", 3) == "vip_platinum"
    # The agents of config/cti.yaml have profiles.
    cti = yaml.safe_load((ROOT / "config" / "cti.yaml").read_text())
    assert set(config.agents) == {a["id"] for a in cti["agents"]}
    assert config.wrapup_s_for("complaints") == 30 and config.wrapup_s_for("billing") == config.wrapup_s


def test_agent_state_from_profile() -> None:
    config = load_routing_config(SHIPPED)
    chen = config.agent_state("chen", status="ready", idle_since_ms=5)
    assert chen.skills["vip_care"] == 5 and "vip_desk" in chen.groups and chen.languages == {"zh", "en"}
    assert config.agent_state("nobody", status="ready").skills == {}


def _error(text: str, tmp_path: Path) -> str:
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    with pytest.raises(RoutingConfigError) as info:
        load_routing_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return message


@pytest.mark.parametrize(("change", "where", "why"), [
    (("billing: 3}}", "biling: 3}}"), "entry_points.billing.requires.skills.biling", "unknown skill 'biling'"),
    (("tier: normal", "tier: gold"), "entry_points.billing.tier", "unknown tier 'gold' (known: normal, vip_gold)"),
    (("    tier: normal\n", ""), "entry_points.billing.tier", "Field required"),
    (("billing: 3}}", "billing: 6}}"), "entry_points.billing.requires.skills.billing", "less than or equal to 5"),
    (("min_level: 2", "min_level: 0"), "entry_points.billing.escalation.0.min_level", "greater than or equal to 1"),
    (("general: 2}", "genral: 2}"), "entry_points.billing.escalation.1.any_of.genral", "unknown skill 'genral'"),
    (("[overflow]", "[overfl0w]"), "entry_points.billing.escalation.1.overflow_groups.0", "unknown group 'overfl0w'"),
    (("after_s: 60", "after_s: 30"), "entry_points.billing.escalation.1.after_s", "must be later than"),
    (("{after_s: 30, min_level: 2}", "{after_s: 30}"), "entry_points.billing.escalation.0", "changes nothing"),
    (("tier: normal", "tier: normal\n    wait_for_preferred: true"), "entry_points.billing.wait_for_preferred",
     "drop_preferred"),
    (("{skills: {billing: 3}}", "{skills: {billing: 3}, language: fr}"), "entry_points.billing.requires.language",
     "unknown language 'fr'"),
    (("{skills: {billing: 3}}", "{any_of: {billing: 3}}"), "entry_points.billing.requires.any_of",
     "alternatives to `skills`"),
    (("customer_vip_tier: 2", "customer_vip_tier: 4"), "tiers.vip_gold.customer_vip_tier", "less than or equal to 3"),
    (("service_level: {percent: 90", "service_level: {percent: 90.5"), "tiers.vip_gold.service_level.percent",
     "valid integer"),
    (("tiers:", "polcy: strict\ntiers:"), "polcy", "Extra inputs are not permitted"),
])
def test_errors_name_the_key_path(tmp_path: Path, change: tuple[str, str], where: str, why: str) -> None:
    old, new = change
    assert old in GOOD
    message = _error(GOOD.replace(old, new, 1), tmp_path)
    assert f"  {where}: " in message and why in message, message


def test_every_broken_reference_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("normal: {priority: 100", "normal: {priority: 100, customer_vip_tier: 2") + """
agents:
  alice: {skills: {billing: 4, karate: 2}, languages: [zh, de], groups: [overflow, night]}
reservation: {rona_not_ready_reason: asleep}
"""
    message = _error(text, tmp_path)
    assert "5 invalid setting(s)" in message
    for where in ("agents.alice.skills.karate", "agents.alice.languages.1", "agents.alice.groups.1",
                  "reservation.rona_not_ready_reason", "tiers.normal.customer_vip_tier"):
        assert f"  {where}: " in message


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(RoutingConfigError, match="cannot read"):
        load_routing_config(tmp_path / "missing.yaml")
    assert "not valid YAML" in _error("skills: [unclosed\n", tmp_path)
    assert "top level must be a mapping" in _error("- a\n", tmp_path)
    assert "skills: Field required" in _error("", tmp_path)
    with pytest.raises(RoutingConfigError, match=r"^admin edit: "):
        parse_routing_config({"skills": {}}, source="admin edit")


def test_a_mapping_validates_like_the_file() -> None:
    config = parse_routing_config(yaml.safe_load(GOOD))
    assert config.policy == "priority_plus_wait" and config.aging.max_wait_s is None
    assert config.entry_points["billing"].requires.build().skills == {"billing": 3}
