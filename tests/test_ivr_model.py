"""Flow files: what loads, what fails and how the error names the file and the key path."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from ivr_flows import FlowError, load_flow, load_flows, parse_flow
from ivr_flows.model import MenuNode
from ivr_flows.schedule import Schedule

MINIMAL: dict[str, Any] = {"languages": ["zh", "en"], "start": "bye", "nodes": {"bye": {"type": "hangup"}}}


def fails(data: Any, *fragments: str) -> str:
    with pytest.raises(FlowError) as info:
        parse_flow(data, source="x.yaml", default_id="x")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    return message


def test_minimal_flow_and_defaults() -> None:
    flow = parse_flow(MINIMAL, source="x.yaml", default_id="x")
    assert (flow.id, flow.language, flow.answer, flow.source) == ("x", "zh", True, "x.yaml")
    assert len(flow.version) == 12


def test_version_is_a_digest_of_the_content() -> None:
    a = parse_flow(MINIMAL, source="a.yaml", default_id="x")
    b = parse_flow(MINIMAL, source="elsewhere/b.yaml", default_id="x")
    c = parse_flow({**MINIMAL, "languages": ["en", "zh"]}, source="a.yaml", default_id="x")
    assert a.version == b.version != c.version
    assert parse_flow({**MINIMAL, "version": 3}, source="a.yaml", default_id="x").version == "3"


@pytest.mark.parametrize(("data", "fragments"), [
    ({**MINIMAL, "nodes": {"bye": {"type": "hangupp"}}}, ("x.yaml: 1 invalid setting(s)", "nodes.bye", "hangupp")),
    ({**MINIMAL, "nodes": {"m": {"type": "menu", "prompt": "p", "options": {1: "a"}, "default": "a",
                                 "timeout_ms": 10}}}, ("nodes.m.menu.timeout_ms", "greater than or equal to 500")),
    ({**MINIMAL, "nodes": {"m": {"type": "menu", "prompt": "p", "options": {"12": "a"}, "default": "a"}}},
     ("nodes.m.menu.options", "a menu key is one of")),
    ({**MINIMAL, "nodes": {"m": {"type": "menu", "prompt": "p", "options": {1: "a"}}}}, ("nodes.m.menu.default",)),
    ({**MINIMAL, "nodes": {"c": {"type": "collect", "prompt": "p", "var": "x", "next": "a", "on_failure": "a",
                                 "pattern": "[0-9"}}}, ("nodes.c.collect.pattern", "not a regular expression")),
    ({**MINIMAL, "nodes": {"c": {"type": "collect", "prompt": "p", "var": "x", "next": "a", "on_failure": "a",
                                 "terminator": "*"}}}, ("nodes.c.collect.terminator",)),
    ({**MINIMAL, "nodes": {"c": {"type": "collect", "prompt": "p", "var": "x", "next": "a", "on_failure": "a",
                                 "min_length": 9, "max_length": 4}}}, ("min_length is above max_length",)),
    ({**MINIMAL, "nodes": {"l": {"type": "lookup", "by": "account", "found": "a", "not_found": "a"}}},
     ("a lookup by account needs value",)),
    ({**MINIMAL, "nodes": {"c": {"type": "condition", "branches": [{"if": {"var": "x"}, "next": "a"}],
                                 "else": "a"}}}, ("nodes.c.condition.branches.0.if", "exactly one of eq")),
    ({**MINIMAL, "nodes": {"c": {"type": "condition", "branches": [{"if": {"open": "o", "var": "x", "eq": 1},
                                                                    "next": "a"}], "else": "a"}}},
     ("a test is exactly one of",)),
    ({**MINIMAL, "nodes": {"t": {"type": "transfer", "number": "123&PJSIP/evil"}}}, ("nodes.t.transfer.number",)),
    ({**MINIMAL, "nodes": {"v": {"type": "voicemail", "mailbox": "1,evil"}}}, ("nodes.v.voicemail.mailbox",)),
    ({**MINIMAL, "nodes": {"bye": {"type": "hangup", "color": "red"}}}, ("nodes.bye.hangup.color", "Extra inputs")),
    ({**MINIMAL, "prompts": {"p": {"file": "a b"}}}, ("prompts.p.file",)),
    ({**MINIMAL, "prompts": {"p": {"file": "x/{language}/p"}}}, ("only placeholder", "{lang}")),
    ({**MINIMAL, "prompts": {"p": {"file": "../../etc/p"}}}, ("no '..'",)),
    ({**MINIMAL, "default_language": "fr"}, ("default_language 'fr' is not in languages",)),
    ({**MINIMAL, "nodes": {"bad id": {"type": "hangup"}}}, ("nodes.bad id",)),
    ({**MINIMAL, "schedules": {"o": {"timezone": "Mars/Olympus", "weekly": {}}}},
     ("schedules.o.timezone", "unknown timezone")),
    ({**MINIMAL, "schedules": {"o": {"timezone": "UTC", "weekly": {"mon-fry": "08:00-18:00"}}}},
     ("schedules.o.weekly", "days are mon")),
    ({**MINIMAL, "schedules": {"o": {"timezone": "UTC", "weekly": {"mon": "20:00-08:00"}}}},
     ("runs forward within one day",)),
    ({**MINIMAL, "schedules": {"o": {"timezone": "UTC", "weekly": {}, "holidays": ["2026-13-01"]}}},
     ("schedules.o.holidays", "YYYY-MM-DD")),
    ({**MINIMAL, "nodes": {}}, ("nodes",)),
    ([1, 2], ("top level must be a mapping",)),
])
def test_errors_name_the_file_and_key_path(data: Any, fragments: tuple[str, ...]) -> None:
    fails(data, "x.yaml", *fragments)


def test_several_errors_at_once() -> None:
    message = fails({"start": "a", "nodes": {"a": {"type": "play", "next": "b"}}}, "2 invalid setting(s)")
    assert "  languages: Field required" in message and "  nodes.a.play.prompt: Field required" in message


def test_menu_options_accept_yaml_int_keys_and_bare_targets() -> None:
    flow = parse_flow({**MINIMAL, "nodes": {"m": {"type": "menu", "prompt": "p", "default": "bye",
                                                  "options": {1: "bye", "#": {"next": "bye", "set": {"x": 1}}}},
                                            "bye": {"type": "hangup"}}}, source="x.yaml", default_id="x")
    menu = flow.nodes["m"]
    assert isinstance(menu, MenuNode)
    assert set(menu.options) == {"1", "#"} and menu.options["#"].set == {"x": 1}
    assert menu.prompt == ("p",)


def test_load_flow_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "sales.yaml"
    path.write_text("languages: [en]\nstart: bye\nnodes:\n  bye: {type: hangup}\n", encoding="utf-8")
    flow = load_flow(path)
    assert flow.id == "sales" and flow.source == str(path)


def test_load_flow_errors(tmp_path: Path) -> None:
    with pytest.raises(FlowError, match="cannot read"):
        load_flow(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [\n", encoding="utf-8")
    with pytest.raises(FlowError, match=r"bad\.yaml: not valid YAML"):
        load_flow(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(FlowError, match="top level must be a mapping, not NoneType"):
        load_flow(empty)


def test_load_flows_collects_every_error_and_duplicate_ids(tmp_path: Path) -> None:
    good = "languages: [en]\nstart: bye\nnodes:\n  bye: {type: hangup}\n"
    (tmp_path / "a.yaml").write_text(good, encoding="utf-8")
    (tmp_path / "b.yaml").write_text("id: a\n" + good, encoding="utf-8")
    (tmp_path / "c.yaml").write_text("languages: []\n" + good.split("\n", 1)[1], encoding="utf-8")
    with pytest.raises(FlowError) as info:
        load_flows(tmp_path)
    message = str(info.value)
    assert "b.yaml: flow id 'a' is also the id of" in message and "c.yaml: 1 invalid setting(s)" in message
    (tmp_path / "b.yaml").unlink()
    (tmp_path / "c.yaml").unlink()
    assert list(load_flows(tmp_path)) == ["a"]


def test_shipped_flows_load() -> None:
    flows = load_flows(Path(__file__).parent.parent / "config" / "ivr")
    assert "hotline" in flows
    hotline = flows["hotline"]
    assert hotline.languages == ["zh", "en"] and hotline.language == "zh"
    assert hotline.schedules["office"].timezone == "Asia/Shanghai"


# --- schedules --------------------------------------------------------------------------------


def schedule(**extra: Any) -> Schedule:
    return Schedule.model_validate({"timezone": "Asia/Shanghai", "weekly": {"mon-fri": "08:00-20:00"}} | extra)


def test_schedule_is_evaluated_in_its_timezone() -> None:
    s = schedule()
    assert s.is_open(datetime(2026, 11, 23, 0, 0, tzinfo=UTC))      # 08:00 in Shanghai
    assert not s.is_open(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))  # 20:00 in Shanghai
    assert s.is_open(datetime(2026, 11, 22, 16, 30, tzinfo=UTC)) is False  # 00:30 Monday
    with pytest.raises(ValueError, match="timezone-aware"):
        s.is_open(datetime(2026, 11, 23, 9, 0))


def test_schedule_days_spans_and_wrapping_ranges() -> None:
    s = Schedule.model_validate({"timezone": "UTC", "weekly": {
        "fri-mon": "10:00-12:00, 14:00-24:00", "wed": "00:00-01:00"}})
    assert s.is_open(datetime(2026, 11, 22, 23, 59, tzinfo=UTC))  # Sunday, inside 14:00-24:00
    assert s.is_open(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))   # Monday
    assert not s.is_open(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
    assert not s.is_open(datetime(2026, 11, 24, 11, 0, tzinfo=UTC))  # Tuesday: closed
    assert s.is_open(datetime(2026, 11, 25, 0, 30, tzinfo=UTC))


def test_holidays_and_workdays() -> None:
    s = schedule(holidays=[date(2026, 1, 1), "2026-02-15..2026-02-23"], workdays=["2026-02-14"])
    assert s.is_holiday(datetime(2026, 2, 20, 3, 0, tzinfo=UTC))
    assert not s.is_open(datetime(2026, 2, 20, 3, 0, tzinfo=UTC))
    assert not s.is_open(datetime(2026, 1, 1, 3, 0, tzinfo=UTC))
    assert s.is_open(datetime(2026, 2, 14, 3, 0, tzinfo=UTC))  # a Saturday worked in exchange
    assert not s.is_open(datetime(2026, 2, 14, 13, 0, tzinfo=UTC))  # ... with Monday's hours
    # the holiday follows Shanghai's date: 2025-12-31 17:00 UTC is already New Year's Day there
    assert s.is_holiday(datetime(2025, 12, 31, 17, 0, tzinfo=UTC))
