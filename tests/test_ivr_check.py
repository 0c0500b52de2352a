"""The flow validator: one small broken flow per problem kind, and the shipped flows are sound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ivr_flows import Flow, check_flow, load_flow, parse_flow
from ivr_flows.check import Problem

CONFIG = Path(__file__).parent.parent / "config" / "ivr"
ENTRY_POINTS = {"billing", "tech_support", "complaints", "vip"}
SKILLS = {"billing", "tech_support", "complaints"}
BYE = {"type": "hangup"}


def make(nodes: dict[str, Any], **extra: Any) -> Flow:
    data: dict[str, Any] = {"languages": ["zh", "en"], "start": next(iter(nodes)),
                            "prompts": {"p": {"file": "p", "text": {"zh": "您好", "en": "hello"}}}, "nodes": nodes}
    return parse_flow(data | extra, source="broken.yaml", default_id="broken")


def kinds(problems: list[Problem]) -> list[tuple[str | None, str]]:
    return [(p.node, p.kind) for p in problems]


def test_a_sound_flow_has_no_problems() -> None:
    flow = make({"m": {"type": "menu", "prompt": "p", "options": {1: "r"}, "default": "bye"},
                 "r": {"type": "route", "entry_point": "billing", "requirements": {"skills": {"billing": 1}}},
                 "bye": BYE})
    assert check_flow(flow, entry_points=ENTRY_POINTS, prompt_dir=None, skills=SKILLS) == []


def test_unknown_node() -> None:
    flow = make({"m": {"type": "menu", "prompt": "p", "options": {1: "biling"}, "default": "bye"},
                 "bye": BYE}, start="welcome")
    problems = check_flow(flow, entry_points=None, prompt_dir=None)
    assert kinds(problems)[:2] == [(None, "unknown_node"), ("m", "unknown_node")]
    assert "start names node 'welcome'" in problems[0].message
    assert "option 1 names node 'biling'" in problems[1].message
    assert problems[1].file == "broken.yaml" and problems[1].severity == "error"
    assert str(problems[1]).startswith("broken.yaml: node m: error: option 1 names node 'biling'")


def test_unreachable_node_is_a_warning() -> None:
    flow = make({"a": BYE, "orphan": {"type": "play", "prompt": "p", "next": "a"}})
    problems = check_flow(flow, entry_points=None, prompt_dir=None)
    assert kinds(problems) == [("orphan", "unreachable_node")]
    assert problems[0].severity == "warning"


def test_loop_without_exit() -> None:
    """Every exit of the menu, its default included, leads back into the loop: no ending can be reached."""
    flow = make({"m": {"type": "menu", "prompt": "p", "options": {1: "again"}, "default": "again"},
                 "again": {"type": "play", "prompt": "p", "next": "m"}})
    problems = check_flow(flow, entry_points=None, prompt_dir=None)
    assert kinds(problems) == [("m", "loop_without_exit")]
    assert "loop m -> again -> m" in problems[0].message


def test_a_menu_whose_retries_exit_is_not_a_dead_loop() -> None:
    """Options that all loop back are fine when the default (after max_retries) leads out."""
    flow = make({"m": {"type": "menu", "prompt": "p", "options": {1: "again", 9: "m"}, "default": "bye"},
                 "again": {"type": "play", "prompt": "p", "next": "m"}, "bye": BYE})
    assert check_flow(flow, entry_points=None, prompt_dir=None) == []


def test_a_self_loop_without_exit() -> None:
    flow = make({"start": {"type": "play", "prompt": "p", "next": "m"},
                 "m": {"type": "menu", "prompt": "p", "options": {1: "m"}, "default": "m"}})
    problems = check_flow(flow, entry_points=None, prompt_dir=None)
    assert kinds(problems) == [("m", "loop_without_exit")]
    assert "m leads to itself" in problems[0].message


def test_collect_and_lookup_exits_count() -> None:
    flow = make({
        "c": {"type": "collect", "prompt": "p", "var": "acct", "next": "l", "on_failure": "c"},
        "l": {"type": "lookup", "by": "account", "value": "${acct}", "found": "c", "not_found": "c"},
    })
    assert kinds(check_flow(flow, entry_points=None, prompt_dir=None)) == [("c", "loop_without_exit")]
    fixed = make({
        "c": {"type": "collect", "prompt": "p", "var": "acct", "next": "l", "on_failure": "bye"},
        "l": {"type": "lookup", "by": "account", "value": "${acct}", "found": "c", "not_found": "c"}, "bye": BYE,
    })
    assert check_flow(fixed, entry_points=None, prompt_dir=None) == []


def test_loop_without_input() -> None:
    """A branch leads out, but nothing in the loop changes between turns: it spins until the step limit."""
    flow = make({"s": {"type": "set", "vars": {"n": 1}, "next": "c"},
                 "c": {"type": "condition", "branches": [{"if": {"var": "n", "eq": 2}, "next": "bye"}], "else": "s"},
                 "bye": BYE})
    problems = check_flow(flow, entry_points=None, prompt_dir=None)
    assert kinds(problems) == [("s", "loop_without_input")]
    assert "waits for no key" in problems[0].message


def test_missing_prompt() -> None:
    flow = make({"m": {"type": "menu", "prompt": ["p", "menu"], "invalid_prompt": "oops", "options": {1: "bye"},
                       "default": "bye"}, "bye": {"type": "hangup", "prompt": "goodbye"}})
    problems = check_flow(flow, entry_points=None, prompt_dir=None)
    assert kinds(problems) == [("m", "missing_prompt"), ("m", "missing_prompt"), ("bye", "missing_prompt")]
    assert [p.message.split("'")[1] for p in problems] == ["menu", "oops", "goodbye"]


def test_missing_translation_is_a_warning() -> None:
    flow = make({"a": {"type": "hangup", "prompt": ["p", "q"]}},
                prompts={"p": {"file": {"zh": "p-zh"}, "text": {"zh": "你好", "en": "hi"}},
                         "q": {"file": "q", "text": {"zh": "再见"}}})
    problems = check_flow(flow, entry_points=None, prompt_dir=None)
    assert kinds(problems) == [("a", "missing_translation"), ("a", "missing_translation")]
    assert {p.severity for p in problems} == {"warning"}
    assert "no en file" in problems[0].message and "no en text" in problems[1].message


def test_missing_audio_is_a_warning(tmp_path: Path) -> None:
    flow = make({"a": {"type": "hangup", "prompt": ["p", "q"]}},
                prompts={"p": {"file": "ivr/{lang}/p", "text": {"zh": "你好", "en": "hi"}},
                         "q": {"file": "ivr/q", "text": {"zh": "再见", "en": "bye"}},
                         "unused": {"file": "ivr/unused", "text": {"zh": "-", "en": "-"}}})
    (tmp_path / "ivr" / "zh").mkdir(parents=True)
    (tmp_path / "ivr" / "zh" / "p.wav").write_bytes(b"")
    (tmp_path / "ivr" / "q.ulaw").write_bytes(b"")
    problems = check_flow(flow, entry_points=None, prompt_dir=tmp_path)
    assert kinds(problems) == [("a", "missing_audio")]
    assert "ivr/en/p" in problems[0].message and problems[0].severity == "warning"
    (tmp_path / "ivr" / "en").mkdir()
    (tmp_path / "ivr" / "en" / "p.gsm").write_bytes(b"")
    assert check_flow(flow, entry_points=None, prompt_dir=tmp_path) == []


def test_unknown_entry_point() -> None:
    flow = make({"r": {"type": "route", "entry_point": "sales"}})
    problems = check_flow(flow, entry_points=ENTRY_POINTS, prompt_dir=None)
    assert kinds(problems) == [("r", "unknown_entry_point")]
    assert "'sales'" in problems[0].message and "billing" in problems[0].message
    assert check_flow(flow, entry_points=None, prompt_dir=None) == []  # not checked without a routing config
    cb = make({"cb": {"type": "callback", "entry_point": "sales"}})
    assert kinds(check_flow(cb, entry_points=ENTRY_POINTS, prompt_dir=None)) == [("cb", "unknown_entry_point")]


def test_unknown_skill() -> None:
    flow = make({"s": {"type": "set", "requirements": {"skills": {"french": 1}}, "next": "r"},
                 "r": {"type": "route", "entry_point": "billing", "requirements": {"skills": {"biling": 1}}}})
    assert kinds(check_flow(flow, entry_points=None, prompt_dir=None, skills=SKILLS)) == [
        ("s", "unknown_skill"), ("r", "unknown_skill")]


def test_unknown_tier() -> None:
    flow = make({"s": {"type": "set", "tier": "gold", "next": "r"},
                 "r": {"type": "route", "entry_point": "billing", "tier": "normal"}})
    problems = check_flow(flow, entry_points=None, prompt_dir=None, tiers={"normal", "vip_gold"})
    assert kinds(problems) == [("s", "unknown_tier")]
    assert "'gold'" in problems[0].message and "vip_gold" in problems[0].message


def test_unknown_language() -> None:
    flow = make({"m": {"type": "menu", "prompt": "p", "options": {1: {"next": "s", "set": {"language": "fr"}}},
                       "default": "s"},
                 "s": {"type": "set", "vars": {"language": "de"}, "next": "t"},
                 "t": {"type": "set", "vars": {"language": "${chosen}"}, "next": "bye"}, "bye": BYE})
    assert kinds(check_flow(flow, entry_points=None, prompt_dir=None)) == [
        ("m", "unknown_language"), ("s", "unknown_language")]


def test_unknown_schedule() -> None:
    flow = make({"c": {"type": "condition", "branches": [
        {"if": {"any": [{"open": "office"}, {"not": {"holiday": "office"}}]}, "next": "bye"}], "else": "bye"},
        "bye": BYE})
    assert kinds(check_flow(flow, entry_points=None, prompt_dir=None)) == [
        ("c", "unknown_schedule"), ("c", "unknown_schedule")]


@pytest.mark.parametrize("path", sorted(CONFIG.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_flows_are_sound(path: Path) -> None:
    flow = load_flow(path)
    assert check_flow(flow, entry_points=ENTRY_POINTS, prompt_dir=None, skills=SKILLS) == []


def test_shipped_hotline_reports_its_missing_audio(tmp_path: Path) -> None:
    """We ship no recordings: pointed at an empty sounds directory, every used file is a warning."""
    problems = check_flow(load_flow(CONFIG / "hotline.yaml"), entry_points=ENTRY_POINTS, prompt_dir=tmp_path)
    assert problems and {p.kind for p in problems} == {"missing_audio"}
    assert all(p.file.endswith("hotline.yaml") for p in problems)
