"""The interpreter, node type by node type: the commands each emits and where each input leads."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from ivr_flows import (
    Answer,
    Digits,
    Disconnect,
    End,
    Exec,
    Flow,
    GetData,
    Hangup,
    Lookup,
    LookupResult,
    Play,
    Session,
    SetVariable,
    Timeout,
    UnexpectedInput,
    WaitForDigit,
    parse_flow,
    start,
    step,
)
from ivr_flows.commands import Command
from ivr_flows.interpreter import MAX_VISITS

NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)  # a Monday, 11:00 in Shanghai
KEYS = "0123456789*#"


def make(nodes: dict[str, Any], **extra: Any) -> Flow:
    """A flow with a prompt for every name used, in zh and en."""
    names = {"hello", "menu", "bad", "silence", "bye", "enter", "wrong", "hold", "closed"}
    data: dict[str, Any] = {
        "id": "t",
        "languages": ["zh", "en"],
        "start": next(iter(nodes)),
        "prompts": {n: {"file": f"t/{{lang}}/{n}", "text": {"zh": n, "en": n}} for n in names},
        "nodes": nodes,
    }
    data.update(extra)
    return parse_flow(data, source="t.yaml")


def begin(flow: Flow, caller: str = "13800000001") -> tuple[Session, list[Command]]:
    return start(flow, {"agi_callerid": caller, "agi_dnid": "4000"}, NOW)


def plays(commands: list[Command]) -> list[str]:
    return [c.file for c in commands if isinstance(c, Play)]


def cti(commands: list[Command]) -> dict[str, str]:
    return {c.name: c.value for c in commands if isinstance(c, SetVariable) and c.name.startswith("CTI_")}


def end_of(commands: list[Command]) -> End:
    assert isinstance(commands[-1], End)
    return commands[-1]


BYE = {"type": "hangup", "prompt": "bye"}
ROUTE = {"type": "route", "entry_point": "billing"}


# --- start, play, hangup ----------------------------------------------------------------------


def test_start_answers_sets_the_language_and_plays() -> None:
    flow = make({"hi": {"type": "play", "prompt": ["hello", "hold"], "next": "bye"}, "bye": BYE})
    session, commands = begin(flow)
    assert commands[:2] == [Answer(), SetVariable("CHANNEL(language)", "zh")]
    assert commands[2:4] == [Play("t/zh/hello", "", "hello"), Play("t/zh/hold", "", "hold")]
    assert plays(commands) == ["t/zh/hello", "t/zh/hold", "t/zh/bye"]
    assert isinstance(commands[-2], Disconnect)
    end = end_of(commands)
    assert (end.kind, end.reason) == ("hangup", "flow")
    assert session.done and session.path == ("hi", "bye")
    assert session.vars["caller"] == "13800000001" and session.vars["called"] == "4000"


def test_flow_without_answer() -> None:
    _, commands = begin(make({"bye": BYE}, answer=False))
    assert Answer() not in commands


def test_unknown_caller_id_is_empty() -> None:
    session, _ = start(make({"bye": BYE}), {"agi_callerid": "unknown"}, NOW)
    assert session.vars["caller"] == ""


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone"):
        start(make({"bye": BYE}), {}, datetime(2026, 1, 1))


def test_outcome_variables_come_before_the_goodbye() -> None:
    """If the caller hangs up during the goodbye, the adapter stops there: the CTI_* variables are already set."""
    _, commands = begin(make({"bye": BYE}))
    first_var = next(i for i, c in enumerate(commands) if isinstance(c, SetVariable) and c.name == "CTI_OUTCOME")
    assert first_var < commands.index(Play("t/zh/bye", "", "bye"))
    assert cti(commands)["CTI_OUTCOME"] == "hangup"
    assert cti(commands)["CTI_IVR_PATH"] == "bye"


# --- menu -------------------------------------------------------------------------------------


MENU: dict[str, Any] = {
    "type": "menu", "prompt": "menu", "options": {1: "a", 2: {"next": "b", "set": {"language": "en"}}},
    "invalid_prompt": "bad", "timeout_prompt": "silence", "max_retries": 2, "timeout_ms": 3000, "default": "d",
}
A_B_D = {"a": {**ROUTE, "entry_point": "a"}, "b": {**ROUTE, "entry_point": "b"}, "d": {**ROUTE, "entry_point": "d"}}


def test_menu_prompt_is_interruptible_and_waits() -> None:
    session, commands = begin(make({"m": MENU, **A_B_D}))
    assert commands[-2:] == [Play("t/zh/menu", KEYS, "menu"), WaitForDigit(3000)]
    assert session.waiting == "digit" and session.node == "m"


def test_menu_option_leads_on() -> None:
    session, _ = begin(make({"m": MENU, **A_B_D}))
    session, commands = step(session, Digits("1"))
    assert end_of(commands).entry_point == "a"
    assert [str(i) for i in session.inputs] == ["m:1"]
    assert session.path == ("m", "a")


def test_menu_option_sets_variables_and_the_language() -> None:
    flow = make({"m": {**MENU, "options": {2: {"next": "hi", "set": {"language": "en"}}}},
                 "hi": {"type": "play", "prompt": "hello", "next": "a"}, **A_B_D})
    session, _ = begin(flow)
    session, commands = step(session, Digits("2"))
    assert SetVariable("CHANNEL(language)", "en") in commands
    assert plays(commands) == ["t/en/hello"]
    assert session.vars["language"] == "en"
    assert cti(commands)["CTI_LANGUAGE"] == "en"


def test_menu_invalid_and_timeout_retry_then_default() -> None:
    session, _ = begin(make({"m": MENU, **A_B_D}))
    session, commands = step(session, Digits("7"))
    assert plays(commands) == ["t/zh/bad", "t/zh/menu"]
    assert commands[0] == Play("t/zh/bad", KEYS, "bad")  # a key during "wrong choice" counts as the next try
    session, commands = step(session, Timeout())
    assert plays(commands) == ["t/zh/silence", "t/zh/menu"]
    assert session.attempt == 2
    session, commands = step(session, Digits("#"))
    assert end_of(commands).entry_point == "d"
    assert [str(i) for i in session.inputs] == ["m:7", "m:timeout", "m:#"]
    assert session.path == ("m", "d")  # retries do not repeat the node in the path


def test_menu_without_retries_goes_straight_to_default() -> None:
    session, _ = begin(make({"m": {**MENU, "max_retries": 0}, **A_B_D}))
    _, commands = step(session, Timeout())
    assert end_of(commands).entry_point == "d"


def test_menu_takes_the_first_key_and_empty_digits_as_silence() -> None:
    session, _ = begin(make({"m": MENU, **A_B_D}))
    after, commands = step(session, Digits("12"))
    assert end_of(commands).entry_point == "a"
    after, _ = step(session, Digits(""))
    assert [str(i) for i in after.inputs] == ["m:timeout"]


def test_menu_repeat_option_reenters_with_fresh_retries() -> None:
    flow = make({"m": {**MENU, "options": {1: "a", 9: "m"}}, **A_B_D})
    session, _ = begin(flow)
    session, _ = step(session, Timeout())
    assert session.attempt == 1
    session, commands = step(session, Digits("9"))
    assert session.attempt == 0 and plays(commands) == ["t/zh/menu"]
    assert session.path == ("m", "m")


# --- collect ----------------------------------------------------------------------------------


COLLECT: dict[str, Any] = {
    "type": "collect", "prompt": "enter", "var": "account", "min_length": 6, "max_length": 8,
    "pattern": "[1-9][0-9]*", "invalid_prompt": "wrong", "timeout_prompt": "silence", "max_retries": 1,
    "timeout_ms": 6000, "next": "ok", "on_failure": "fail",
}
OK_FAIL = {"ok": {**ROUTE, "entry_point": "ok"}, "fail": BYE}


def test_collect_asks_with_get_data() -> None:
    session, commands = begin(make({"c": COLLECT, **OK_FAIL}))
    assert commands[-1] == GetData("t/zh/enter", 6000, 8, "enter")
    assert session.waiting == "entry"


def test_collect_valid_entry_sets_the_variable() -> None:
    session, _ = begin(make({"c": COLLECT, **OK_FAIL}))
    session, commands = step(session, Digits("1234567"))
    assert end_of(commands).entry_point == "ok"
    assert session.vars["account"] == "1234567"
    assert [str(i) for i in session.inputs] == ["c:1234567"]


@pytest.mark.parametrize("entry", ["12345", "123456789", "0123456", "12*4567"])
def test_collect_invalid_entry_asks_again_then_fails(entry: str) -> None:
    session, _ = begin(make({"c": COLLECT, **OK_FAIL}))
    session, commands = step(session, Digits(entry))
    assert commands == [Play("t/zh/wrong", "", "wrong"), GetData("t/zh/enter", 6000, 8, "enter")]
    session, commands = step(session, Timeout())
    assert end_of(commands).kind == "hangup"
    assert "account" not in session.vars
    assert [str(i) for i in session.inputs] == [f"c:{entry}", "c:timeout"]


def test_collect_timeout_plays_the_timeout_prompt_and_hash_alone_is_recorded() -> None:
    session, _ = begin(make({"c": COLLECT, **OK_FAIL}))
    after, commands = step(session, Timeout())
    assert plays(commands) == ["t/zh/silence"]
    after, commands = step(session, Digits(""))
    assert plays(commands) == ["t/zh/wrong"]
    assert [str(i) for i in after.inputs] == ["c:#"]


def test_collect_without_pattern_takes_digits_only_and_strips_the_terminator() -> None:
    flow = make({"c": {**COLLECT, "pattern": None, "min_length": 1}, **OK_FAIL})
    session, _ = begin(flow)
    after, commands = step(session, Digits("42#"))
    assert after.vars["account"] == "42" and end_of(commands).entry_point == "ok"
    after, commands = step(session, Digits("4*2"))
    assert not after.done


def test_collect_masked_entry_is_not_recorded() -> None:
    session, _ = begin(make({"c": {**COLLECT, "mask": True}, **OK_FAIL}))
    session, commands = step(session, Digits("9876543"))
    assert [str(i) for i in session.inputs] == ["c:***"]
    assert "9876543" not in cti(commands)["CTI_IVR_INPUTS"]
    assert session.vars["account"] == "9876543"  # the flow can still use it


def test_collect_empty_entry_when_allowed() -> None:
    session, _ = begin(make({"c": {**COLLECT, "min_length": 0, "pattern": None}, **OK_FAIL}))
    session, commands = step(session, Timeout())
    assert end_of(commands).entry_point == "ok" and session.vars["account"] == ""


# --- lookup -----------------------------------------------------------------------------------


RECORD = {"id": "c-1002", "numbers": ["8613900000001"], "name": "Li Na", "company": "Orient Bank",
          "company_tier": "enterprise", "role": "CIO", "vip_tier": 3, "account_manager": "chen", "notes": "x"}
LOOKUP = {"type": "lookup", "found": "yes", "not_found": "no"}
YES_NO = {"yes": {**ROUTE, "entry_point": "yes"}, "no": {**ROUTE, "entry_point": "no"}}


def test_lookup_by_caller() -> None:
    session, commands = begin(make({"l": LOOKUP, **YES_NO}), caller="8613900000001")
    assert commands[-1] == Lookup("number", "8613900000001")
    assert session.waiting == "lookup"
    session, commands = step(session, LookupResult(RECORD))
    assert end_of(commands).entry_point == "yes"
    assert {k: session.vars[k] for k in ("customer_id", "customer_name", "company", "company_tier", "role",
                                         "vip_tier", "account_manager")} == {
        "customer_id": "c-1002", "customer_name": "Li Na", "company": "Orient Bank", "company_tier": "enterprise",
        "role": "CIO", "vip_tier": 3, "account_manager": "chen"}
    assert "notes" not in session.vars and "numbers" not in session.vars
    assert cti(commands)["CTI_CUSTOMER"] == "c-1002"


def test_lookup_not_found_and_failed() -> None:
    session, _ = begin(make({"l": LOOKUP, **YES_NO}))
    _, commands = step(session, LookupResult(None))
    assert end_of(commands).entry_point == "no"
    _, commands = step(session, Timeout())  # the directory did not answer in time
    assert end_of(commands).entry_point == "no"


def test_lookup_without_caller_number_skips_the_directory() -> None:
    _, commands = begin(make({"l": LOOKUP, **YES_NO}), caller="")
    assert not any(isinstance(c, Lookup) for c in commands)
    assert end_of(commands).entry_point == "no"


def test_lookup_by_entered_account() -> None:
    flow = make({"c": {**COLLECT, "next": "l"}, "l": {**LOOKUP, "by": "account", "value": "${account}"},
                 **OK_FAIL, **YES_NO})
    session, _ = begin(flow)
    session, commands = step(session, Digits("1234567"))
    assert commands[-1] == Lookup("account", "1234567")


@pytest.mark.parametrize(("tier", "expected"), [(7, 3), (-1, 0), ("2", 2), ("x", 0), (None, 0)])
def test_lookup_vip_tier_is_clamped(tier: object, expected: int) -> None:
    session, _ = begin(make({"l": LOOKUP, **YES_NO}))
    session, _ = step(session, LookupResult({**RECORD, "vip_tier": tier}))
    assert session.vars["vip_tier"] == expected


def test_lookup_record_with_control_characters_cannot_break_a_channel_variable() -> None:
    session, _ = begin(make({"l": LOOKUP, **YES_NO}))
    _, commands = step(session, LookupResult({**RECORD, "id": "c-1\r\nHANGUP"}))
    assert cti(commands)["CTI_CUSTOMER"] == "c-1HANGUP"


# --- condition --------------------------------------------------------------------------------


OFFICE = {"timezone": "Asia/Shanghai", "weekly": {"mon-fri": "08:00-20:00"},
          "holidays": ["2026-10-01..2026-10-07"], "workdays": ["2026-10-10"]}


def hours_flow() -> Flow:
    return make({"h": {"type": "condition", "branches": [{"if": {"open": "office"}, "next": "yes"}], "else": "no"},
                 **YES_NO}, schedules={"office": OFFICE})


@pytest.mark.parametrize(("when", "open_"), [
    (datetime(2026, 11, 23, 0, 0, tzinfo=UTC), True),     # Mon 08:00 Shanghai
    (datetime(2026, 11, 22, 23, 59, tzinfo=UTC), False),  # Mon 07:59
    (datetime(2026, 11, 23, 11, 59, tzinfo=UTC), True),   # Mon 19:59
    (datetime(2026, 11, 23, 12, 0, tzinfo=UTC), False),   # Mon 20:00
    (datetime(2026, 11, 28, 3, 0, tzinfo=UTC), False),    # Saturday
    (datetime(2026, 10, 2, 3, 0, tzinfo=UTC), False),     # National Day, a Friday
    (datetime(2026, 10, 10, 3, 0, tzinfo=UTC), True),     # Saturday worked in exchange
])
def test_condition_business_hours(when: datetime, open_: bool) -> None:
    _, commands = start(hours_flow(), {}, when)
    assert end_of(commands).entry_point == ("yes" if open_ else "no")


@pytest.mark.parametrize(("test", "variables", "expected"), [
    ({"var": "vip_tier", "ge": 1}, {"vip_tier": 2}, True),
    ({"var": "vip_tier", "ge": 1}, {"vip_tier": 0}, False),
    ({"var": "vip_tier", "ge": 1}, {"vip_tier": "unknown"}, False),
    ({"var": "vip_tier", "lt": 1}, {}, True),  # vip_tier starts at 0
    ({"var": "company", "eq": "Orient Bank"}, {"company": "Orient Bank"}, True),
    ({"var": "company", "ne": "Orient Bank"}, {"company": None}, True),
    ({"var": "vip_tier", "eq": "2"}, {"vip_tier": 2}, True),
    ({"var": "role", "in": ["CIO", "CTO"]}, {"role": "CTO"}, True),
    ({"var": "caller", "matches": r"\+?86.*"}, {"caller": "8613900000001"}, True),
    ({"var": "company", "is_set": True}, {"company": ""}, False),
    ({"var": "company", "is_set": False}, {}, True),
    ({"all": [{"var": "vip_tier", "ge": 1}, {"open": "office"}]}, {"vip_tier": 1}, True),
    ({"any": [{"var": "vip_tier", "ge": 3}, {"holiday": "office"}]}, {"vip_tier": 1}, False),
    ({"not": {"open": "office"}}, {}, False),
])
def test_condition_tests(test: dict[str, Any], variables: dict[str, Any], expected: bool) -> None:
    flow = make({"s": {"type": "set", "vars": variables, "next": "c"},
                 "c": {"type": "condition", "branches": [{"if": test, "next": "yes"}], "else": "no"}, **YES_NO},
                schedules={"office": OFFICE})
    _, commands = begin(flow)
    assert end_of(commands).entry_point == ("yes" if expected else "no")


def test_condition_first_true_branch_wins() -> None:
    flow = make({"c": {"type": "condition", "branches": [
        {"if": {"var": "caller", "is_set": True}, "next": "yes"},
        {"if": {"var": "caller", "is_set": True}, "next": "no"}], "else": "no"}, **YES_NO})
    _, commands = begin(flow)
    assert end_of(commands).entry_point == "yes"


def test_step_time_is_used_for_later_conditions() -> None:
    """A call that waits in a menu past closing time is tested at the time of the step."""
    flow = make({"m": {**MENU, "options": {1: "h"}}, "h": {"type": "condition", "branches": [
        {"if": {"open": "office"}, "next": "yes"}], "else": "no"}, **YES_NO, "d": BYE},
        schedules={"office": OFFICE})
    session, _ = start(flow, {}, datetime(2026, 11, 23, 11, 59, 50, tzinfo=UTC))
    _, commands = step(session, Digits("1"), now=datetime(2026, 11, 23, 12, 0, 20, tzinfo=UTC))
    assert end_of(commands).entry_point == "no"
    _, commands = step(session, Digits("1"))
    assert end_of(commands).entry_point == "yes"


# --- set and route ----------------------------------------------------------------------------


def test_set_variables_requirements_and_priority() -> None:
    flow = make({
        "l": LOOKUP,
        "yes": {"type": "set", "vars": {"tier": "${vip_tier}", "label": "VIP ${vip_tier} of ${company}"},
                "requirements": {"skills": {"billing": 2}, "language": "${language}",
                                 "preferred_agents": ["${account_manager}", "${nobody}", "bad id!"]},
                "priority": "${vip_tier}", "next": "r"},
        "r": {"type": "route", "entry_point": "vip", "requirements": {"skills": {"billing": 3, "vip": 1},
                                                                      "preferred_agents": ["lee", "chen"]}},
        "no": BYE,
    })
    session, _ = begin(flow, caller="8613900000001")
    session, commands = step(session, LookupResult(RECORD))
    assert session.vars["tier"] == 3 and session.vars["label"] == "VIP 3 of Orient Bank"
    end = end_of(commands)
    assert (end.kind, end.entry_point, end.priority) == ("route", "vip", 3)
    assert end.requirements.as_dict() == {"skills": {"billing": 3, "vip": 1}, "language": "zh",
                                          "preferred_agents": ["chen", "lee"]}
    assert end.vars["customer_id"] == "c-1002"
    assert cti(commands) | {"CTI_FLOW": "-"} == {
        "CTI_FLOW": "-", "CTI_OUTCOME": "route", "CTI_ENTRY": "vip", "CTI_PRIORITY": "3",
        "CTI_REQUIREMENTS": '{"language":"zh","preferred_agents":["chen","lee"],"skills":{"billing":3,"vip":1}}',
        "CTI_LANGUAGE": "zh", "CTI_CUSTOMER": "c-1002", "CTI_IVR_PATH": "l,yes,r",
    }


def test_route_priority_and_prompt() -> None:
    flow = make({"r": {"type": "route", "entry_point": "billing", "priority": 7, "prompt": "hold"}})
    _, commands = begin(flow)
    end = end_of(commands)
    assert end.priority == 7 and end.requirements.as_dict() == {"skills": {}, "language": None,
                                                                 "preferred_agents": []}
    assert commands[-2] == Play("t/zh/hold", "", "hold")
    assert not any(isinstance(c, Disconnect) for c in commands)  # the dialplan goes on to cti-hold
    assert "CTI_REQUIREMENTS" not in cti(commands)  # nothing beyond the entry point's own: routing uses those
    assert (end.language, end.tier) == ("zh", None)


def test_tier_set_early_reaches_the_route() -> None:
    flow = make({"s": {"type": "set", "tier": "vip_gold", "next": "m"}, "m": {**MENU, "options": {1: "a", 2: "b"}},
                 **A_B_D, "b": {"type": "route", "entry_point": "b", "tier": "vip_platinum"}})
    session, _ = begin(flow)
    _, commands = step(session, Digits("1"))
    assert end_of(commands).tier == "vip_gold" and cti(commands)["CTI_TIER"] == "vip_gold"
    _, commands = step(session, Digits("2"))
    assert end_of(commands).tier == "vip_platinum"


def test_set_language_outside_the_flow_is_ignored_for_prompts() -> None:
    flow = make({"s": {"type": "set", "vars": {"language": "fr"}, "next": "p"},
                 "p": {"type": "play", "prompt": "hello", "next": "bye"}, "bye": BYE})
    _, commands = begin(flow)
    assert "t/zh/hello" in plays(commands)
    assert SetVariable("CHANNEL(language)", "fr") not in commands


def test_prompt_file_per_language_falls_back_to_the_default() -> None:
    flow = make({"p": {"type": "play", "prompt": "x", "next": "s"},
                 "s": {"type": "set", "vars": {"language": "en"}, "next": "q"},
                 "q": {"type": "play", "prompt": ["x", "y"], "next": "bye"}, "bye": BYE},
                prompts={"x": {"file": {"zh": "x-zh", "en": "x-en"}}, "y": {"file": {"zh": "y-zh"}},
                         "bye": {"file": "bye"}})
    _, commands = begin(flow)
    assert plays(commands) == ["x-zh", "x-en", "y-zh", "bye"]


# --- callback, voicemail, transfer ------------------------------------------------------------


def test_callback_records_number_time_reason() -> None:
    flow = make({"cb": {"type": "callback", "reason": "after_hours", "entry_point": "billing", "prompt": "bye"}})
    _, commands = begin(flow)
    end = end_of(commands)
    assert end.kind == "callback" and end.entry_point == "billing"
    assert end.request is not None
    assert end.request.as_dict() == {"number": "13800000001", "time": "2026-11-23T03:00:00+00:00",
                                     "reason": "after_hours"}
    assert commands[-3:-1] == [Play("t/zh/bye", "", "bye"), Disconnect()]
    assert cti(commands)["CTI_CALLBACK"] == ('{"number":"13800000001","time":"2026-11-23T03:00:00+00:00",'
                                             '"reason":"after_hours"}')


def test_callback_to_another_number() -> None:
    flow = make({"c": {**COLLECT, "pattern": None, "next": "cb"},
                 "cb": {"type": "callback", "number": "${account}"}, "fail": BYE})
    session, _ = begin(flow)
    _, commands = step(session, Digits("13900001111"[:8]))
    assert end_of(commands).request.number == "13900001"  # type: ignore[union-attr]


def test_voicemail() -> None:
    flow = make({"vm": {"type": "voicemail", "mailbox": "100@hotline", "reason": "closed", "prompt": "closed"}})
    _, commands = begin(flow)
    end = end_of(commands)
    assert end.kind == "voicemail" and end.request is not None and end.request.mailbox == "100@hotline"
    assert commands[-4:-1] == [Play("t/zh/closed", "", "closed"), Exec("VoiceMail", ("100@hotline", "s")),
                               Disconnect()]
    _, commands = begin(make({"vm": {"type": "voicemail", "mailbox": "100"}}))
    assert Exec("VoiceMail", ("100", "u")) in commands  # no prompt of ours: Asterisk's unavailable greeting


def test_transfer() -> None:
    _, commands = begin(make({"x": {"type": "transfer", "number": "+8610950001", "prompt": "hold"}}))
    end = end_of(commands)
    assert (end.kind, end.transfer_to) == ("transfer", "+8610950001")
    assert cti(commands)["CTI_TRANSFER"] == "+8610950001"
    assert not any(isinstance(c, Disconnect) for c in commands)  # the dialplan dials CTI_TRANSFER


# --- hang-ups, errors, limits -----------------------------------------------------------------


@pytest.mark.parametrize("flow", [
    make({"m": MENU, **A_B_D}), make({"c": COLLECT, **OK_FAIL}), make({"l": LOOKUP, **YES_NO}),
])
def test_caller_hangup_anywhere_is_abandoned(flow: Flow) -> None:
    session, _ = begin(flow)
    waiting_at = session.node
    session, commands = step(session, Hangup())
    end = end_of(commands)
    assert (end.kind, end.reason) == ("abandoned", "caller_hung_up")
    assert session.inputs[-1].value == "hangup" and session.inputs[-1].node == waiting_at
    assert not any(isinstance(c, Play | Disconnect) for c in commands)
    assert cti(commands)["CTI_OUTCOME"] == "abandoned"  # a dead channel still takes SET VARIABLE
    assert step(session, Hangup()) == (session, [])
    with pytest.raises(UnexpectedInput):
        step(session, Digits("1"))


def test_unexpected_input_is_an_adapter_bug() -> None:
    session, _ = begin(make({"m": MENU, **A_B_D}))
    with pytest.raises(UnexpectedInput):
        step(session, LookupResult(None))
    session, _ = begin(make({"l": LOOKUP, **YES_NO}))
    with pytest.raises(UnexpectedInput):
        step(session, Digits("1"))


def test_loop_without_input_stops_at_the_step_limit() -> None:
    flow = make({"a": {"type": "set", "vars": {"x": 1}, "next": "b"},
                 "b": {"type": "condition", "branches": [{"if": {"var": "x", "eq": 2}, "next": "r"}], "else": "a"},
                 "r": ROUTE})
    session, commands = begin(flow)
    end = end_of(commands)
    assert (end.kind, end.reason) == ("hangup", "step_limit")
    assert isinstance(commands[-2], Disconnect)
    assert len(session.path) <= 60


def test_a_caller_repeating_forever_is_hung_up() -> None:
    menu = "a_menu_with_a_long_name"
    session, _ = begin(make({menu: {**MENU, "options": {9: menu, 1: "a"}}, **A_B_D}))
    for _ in range(MAX_VISITS + 5):
        if session.done:
            break
        session, commands = step(session, Digits("9"))
    assert session.end is not None and session.end.reason == "step_limit"
    assert len(session.path) == MAX_VISITS
    trail = cti(commands)["CTI_IVR_PATH"]  # the most recent part: a channel variable is one AGI line
    assert len(trail) <= 900 and trail.startswith("...,") and trail.endswith(f",{menu}")


def test_unknown_node_at_runtime_hangs_up() -> None:
    _, commands = begin(make({"p": {"type": "play", "prompt": "hello", "next": "nowhere"}}))
    assert end_of(commands).reason == "unknown_node"


def test_missing_prompts_are_skipped_and_get_data_still_has_a_file() -> None:
    flow = make({"p": {"type": "play", "prompt": "nope", "next": "c"}, "c": {**COLLECT, "prompt": "nope2"},
                 **OK_FAIL})
    _, commands = begin(flow)
    assert not any(isinstance(c, Play) for c in commands)
    assert commands[-1] == GetData("silence/1", 6000, 8, "nope2")


# --- immutability and versions ----------------------------------------------------------------


def test_sessions_are_immutable_values() -> None:
    session, _ = begin(make({"m": MENU, **A_B_D}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        session.node = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        session.vars["x"] = 1  # type: ignore[index]
    one, _ = step(session, Digits("1"))
    two, _ = step(session, Digits("2"))  # the same session stepped twice: two independent futures
    assert session.waiting == "digit" and not session.inputs
    assert one.end is not None and one.end.entry_point == "a"
    assert two.end is not None and two.end.entry_point == "b"


def test_a_session_finishes_on_the_flow_version_it_started_on() -> None:
    v1 = make({"m": MENU, **A_B_D}, version="1")
    flows = {"t": v1}
    session, _ = begin(flows["t"])
    flows["t"] = make({"m": {**MENU, "options": {1: "b"}}, **A_B_D}, version="2")  # an edit lands mid-call
    session, commands = step(session, Digits("1"))
    assert end_of(commands).entry_point == "a"
    assert session.flow_version == "1" and session.flow is v1
    assert cti(commands)["CTI_FLOW"] == "t@1"
    new_call, _ = begin(flows["t"])
    _, commands = step(new_call, Digits("1"))
    assert end_of(commands).entry_point == "b"
