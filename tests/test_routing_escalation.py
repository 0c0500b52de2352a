"""Escalation steps fire at exactly their ms, accumulate, and only widen; the preferred agent resolves."""

from __future__ import annotations

import pytest

from routing.escalation import effective, next_escalation_ms, preferred_agent, wait_ms
from routing.model import Requirements, WaitingCall
from tests.test_routing_decide import make_config

T0 = 1_700_000_000_000  # a realistic epoch-ms enqueue time


def _call(**kw: object) -> WaitingCall:
    fields: dict[str, object] = {"id": "c1", "entry_point": "billing", "tier": "normal", "enqueued_at_ms": T0,
                                 "language": "zh"}
    return WaitingCall(**(fields | kw))  # type: ignore[arg-type]


# billing: billing>=3; 30 s min_level 2; 60 s any_of general>=3; 90 s overflow group `overflow`.
@pytest.mark.parametrize(("offset_ms", "step", "skills", "any_of", "overflow"), [
    (0, 0, {"billing": 3}, {}, set()),
    (29_999, 0, {"billing": 3}, {}, set()),
    (30_000, 1, {"billing": 2}, {}, set()),
    (59_999, 1, {"billing": 2}, {}, set()),
    (60_000, 2, {"billing": 2}, {"general": 2}, set()),  # the step's general>=3 is capped by the earlier min_level 2
    (89_999, 2, {"billing": 2}, {"general": 2}, set()),
    (90_000, 3, {"billing": 2}, {"general": 2}, {"overflow"}),
    (10**9, 3, {"billing": 2}, {"general": 2}, {"overflow"}),
])
def test_steps_fire_exactly_at_their_boundary(offset_ms: int, step: int, skills: dict[str, int],
                                               any_of: dict[str, int], overflow: set[str]) -> None:
    eff = effective(_call(), make_config(), T0 + offset_ms)
    assert eff.step == step and eff.wait_ms == offset_ms
    assert eff.requirements == Requirements(skills=skills, any_of=any_of, language="zh",
                                            overflow_groups=frozenset(overflow))


def test_next_escalation_is_the_next_boundary() -> None:
    config = make_config()
    assert next_escalation_ms(_call(), config, T0) == T0 + 30_000
    assert next_escalation_ms(_call(), config, T0 + 30_000) == T0 + 60_000
    assert next_escalation_ms(_call(), config, T0 + 90_000) is None
    assert next_escalation_ms(_call(entry_point="tech"), config, T0) is None


def test_a_clock_behind_the_enqueue_counts_as_no_wait() -> None:
    assert wait_ms(_call(), T0 - 5_000) == 0
    assert effective(_call(), make_config(), T0 - 5_000).step == 0


def test_ivr_requirements_replace_the_entry_points_and_still_escalate() -> None:
    own = Requirements(skills={"billing": 5, "complaints": 4}, language="en")
    eff = effective(_call(requirements=own), make_config(), T0 + 30_000)
    assert eff.requirements.skills == {"billing": 2, "complaints": 2}
    assert eff.requirements.language == "en", "the requirements' language wins over the caller's"


def test_a_lower_level_in_a_later_step_wins_a_merge() -> None:
    config = make_config(entry_points={"billing": {
        "tier": "normal", "requires": {"skills": {"billing": 4}, "any_of": {"general": 4}},
        "escalation": [{"after_s": 10, "any_of": {"general": 3, "tech": 5}}, {"after_s": 20, "any_of": {"tech": 2}}],
    }})
    assert effective(_call(), config, T0 + 10_000).requirements.any_of == {"general": 3, "tech": 5}
    assert effective(_call(), config, T0 + 20_000).requirements.any_of == {"general": 3, "tech": 2}


def test_the_config_in_force_applies_to_calls_already_waiting() -> None:
    before = effective(_call(), make_config(), T0 + 45_000)
    edited = make_config(entry_points={"billing": {"tier": "normal", "requires": {"skills": {"billing": 1}}}})
    after = effective(_call(), edited, T0 + 45_000)
    assert before.requirements.skills == {"billing": 2} and after.requirements.skills == {"billing": 1}


def test_preferred_agent_account_manager_then_recent_last_agent() -> None:
    config = make_config()  # last_agent_window_s: 3600
    assert preferred_agent(_call(preferred_agent="chen", last_agent="bob", last_served_at_ms=T0), config) == "chen"
    assert preferred_agent(_call(last_agent="bob", last_served_at_ms=T0 - 3_600_000), config) == "bob"
    assert preferred_agent(_call(last_agent="bob", last_served_at_ms=T0 - 3_600_001), config) is None
    assert preferred_agent(_call(last_agent="bob"), config) is None
    no_am = make_config(preferred_agent={"account_manager": False, "last_agent_window_s": 0})
    assert preferred_agent(_call(preferred_agent="chen", last_agent="bob", last_served_at_ms=T0), no_am) is None


def test_preference_holds_until_the_dropping_step() -> None:
    config = make_config()  # vip: wait_for_preferred, drop at 20 s
    call = _call(entry_point="vip", tier="vip_gold", preferred_agent="chen")
    held = effective(call, config, T0 + 19_999)
    assert held.preferred_agent == "chen" and held.exclusive
    dropped = effective(call, config, T0 + 20_000)
    assert dropped.preferred_agent is None and not dropped.exclusive and dropped.step == 1
    # Billing favours the preferred agent but does not hold the call for them.
    favoured = effective(_call(preferred_agent="chen"), config, T0)
    assert favoured.preferred_agent == "chen" and not favoured.exclusive
