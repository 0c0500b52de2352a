"""``try_flow``: what ``cti ivr try`` prints, with the shipped hotline as the example."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ivr_flows import load_flow, parse_flow, try_flow
from ivr_flows.tryout import TryResult, parse_keys

HOTLINE = load_flow(Path(__file__).parent.parent / "config" / "ivr" / "hotline.yaml")
OPEN = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)       # Monday 11:00 in Shanghai
EVENING = datetime(2026, 11, 23, 13, 30, tzinfo=UTC)  # Monday 21:30 in Shanghai
HOLIDAY = datetime(2026, 10, 5, 3, 0, tzinfo=UTC)     # National Day week, 11:00

VIP = {"id": "c-1002", "numbers": ["8613900000001"], "name": "Li Na", "company": "Orient Bank",
       "company_tier": "enterprise", "role": "Chief information officer", "vip_tier": 3, "account_manager": "chen"}
REGULAR = {"id": "c-1001", "numbers": ["13800000001"], "name": "Wang Lei", "company": "Huaxin Logistics",
           "vip_tier": 0}
CUSTOMERS: dict[str, Mapping[str, object]] = {"8613900000001": VIP, "13800000001": REGULAR}


def directory(number: str) -> Mapping[str, object] | None:
    return CUSTOMERS.get(number)


def test_vip_caller_skips_the_menu() -> None:
    out = try_flow(HOTLINE, "8613900000001", ["2"], directory, OPEN)
    assert out["end"] == "route"
    assert out["entry_point"] == "vip"
    assert out["requirements"] == {"skills": {}, "language": None, "preferred_agents": ["chen"]}
    assert (out["priority"], out["tier"], out["language"]) == (3, None, "en")  # routing ranks by vars.vip_tier
    assert "main_menu" not in out["path"]
    assert out["path"] == ["welcome", "identify", "language", "hours", "vip_check", "vip"]
    assert out["vars"]["account_manager"] == "chen"
    assert out["prompts"] == ["welcome", "choose_language", "vip_welcome"]


def test_regular_caller_chooses_from_the_menu() -> None:
    out = try_flow(HOTLINE, "13800000001", "1,timeout,3", directory, OPEN)
    assert (out["end"], out["entry_point"], out["priority"], out["language"]) == ("route", "complaints", 0, "zh")
    # the entry point brings its skills (complaint handling): the flow asks for nothing more
    assert out["requirements"] == {"skills": {}, "language": None, "preferred_agents": []}
    assert out["inputs"] == ["language:1", "main_menu:timeout", "main_menu:3"]
    assert out["vars"]["customer_name"] == "Wang Lei"


@pytest.mark.parametrize(("keys", "entry_point"), [
    ("2,1", "billing"), ("2,2", "tech_support"), ("2,3", "complaints"), ("2,9,2", "tech_support"),
    ("2,7,2", "tech_support"), ("1,2", "tech_support"),
])
def test_main_menu_choices(keys: str, entry_point: str) -> None:
    out = try_flow(HOTLINE, "13900009999", keys, directory, OPEN)
    assert (out["end"], out["entry_point"]) == ("route", entry_point)
    assert out["language"] == ("zh" if keys.startswith("1") else "en")
    assert "vip_tier" in out["vars"] and out["vars"]["vip_tier"] == 0


def test_silent_caller_still_reaches_a_person() -> None:
    out = try_flow(HOTLINE, "13900009999", [], directory, OPEN)
    assert (out["end"], out["entry_point"]) == ("route", "billing")
    assert out["inputs"] == ["language:timeout"] * 2 + ["main_menu:timeout"] * 3
    assert out["vars"]["language"] == "zh"


@pytest.mark.parametrize("when", [EVENING, HOLIDAY])
def test_after_hours_offers_a_callback(when: datetime) -> None:
    out = try_flow(HOTLINE, "13800000001", "2,1", directory, when)
    assert out["end"] == "callback"
    assert out["request"] == {"number": "13800000001", "time": when.isoformat(), "reason": "after_hours"}
    assert out["path"][-4:] == ["closed", "can_call_back", "callback_offer", "callback"]
    assert "entry_point" not in out and "requirements" not in out


def test_after_hours_vip_also_gets_the_callback_offer() -> None:
    out = try_flow(HOTLINE, "8613900000001", "1,1", directory, EVENING)
    assert out["end"] == "callback" and out["vars"]["vip_tier"] == 3


def test_after_hours_declined_or_silent_is_a_goodbye() -> None:
    for keys in ("2,2", "2"):
        out = try_flow(HOTLINE, "13800000001", keys, directory, EVENING)
        assert (out["end"], out["reason"]) == ("hangup", "after_hours")
        assert out["path"][-1] == "goodbye"


def test_after_hours_withheld_number_is_not_offered_a_callback() -> None:
    out = try_flow(HOTLINE, "anonymous", "1", directory, EVENING)
    assert out["end"] == "hangup" and "callback_offer" not in out["path"]


def test_hangup_is_abandoned() -> None:
    out = try_flow(HOTLINE, "13800000001", "1,hangup", directory, OPEN)
    assert (out["end"], out["reason"]) == ("abandoned", "caller_hung_up")
    assert out["inputs"] == ["language:1", "main_menu:hangup"]


def test_output_is_json() -> None:
    out = try_flow(HOTLINE, "8613900000001", "1", directory, OPEN)
    assert json.loads(json.dumps(out, ensure_ascii=False)) == out


def test_entries_take_keys_until_hash_or_the_maximum() -> None:
    data: dict[str, Any] = {
        "id": "acct", "languages": ["en"], "start": "c",
        "prompts": {"p": {"file": "p", "text": {"en": "enter your account number"}}},
        "nodes": {
            "c": {"type": "collect", "prompt": "p", "var": "account", "min_length": 4, "max_length": 6,
                  "next": "l", "on_failure": "bye"},
            "l": {"type": "lookup", "by": "account", "value": "${account}", "found": "r", "not_found": "bye"},
            "r": {"type": "route", "entry_point": "billing"},
            "bye": {"type": "hangup"},
        },
    }
    flow = parse_flow(data, source="acct.yaml")
    accounts = {"1234": REGULAR, "123456": VIP}

    def by_account(value: str) -> Mapping[str, object] | None:
        return accounts.get(value)

    def run(keys: str) -> TryResult:
        return try_flow(flow, "13800000001", keys, directory, OPEN, accounts=by_account)

    assert run("1234#")["vars"]["customer_id"] == "c-1001"
    assert run("1,2,3,4,#")["vars"]["account"] == "1234"
    assert run("1234567")["vars"]["account"] == "123456"  # stops at max_length
    assert run("1234,timeout")["end"] == "route"  # silence ends the entry with what was typed
    assert run("12#,12#,12#")["end"] == "hangup"  # too short three times: on_failure
    assert run("12,hangup")["end"] == "abandoned"


def test_parse_keys() -> None:
    assert parse_keys("2, timeout,1#,*") == ["2", "timeout", "1", "#", "*"]
    assert parse_keys(["123", "HANGUP"]) == ["1", "2", "3", "hangup"]
    with pytest.raises(ValueError, match="'x'"):
        parse_keys("1,x")
