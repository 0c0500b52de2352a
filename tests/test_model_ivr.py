"""The IVR's outcome on the call: the ``CTI_*`` variables a flow writes become the snapshot's ``ivr`` part (so the
screen pop shows the path and the keys), and a caller who hangs up in the IVR finishes ``abandoned_ivr``, apart
from a queue abandon. The variables are the ones the interpreter really writes for the shipped hotline."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cti.ami.codec import Message
from cti.config import AgentConfig
from cti.model import events as ev
from cti.model.events import DomainEvent
from cti.model.ivr import abandoned_in_ivr, ivr_part
from cti.model.reducer import CallModel
from cti.model.state import call_from_dict, call_to_dict
from cti.replay import call_row
from ivr_flows import (
    Digits,
    End,
    Flow,
    Hangup,
    Input,
    Lookup,
    LookupResult,
    SetVariable,
    Timeout,
    load_flow,
    start,
    step,
)

HOTLINE = load_flow(Path(__file__).resolve().parents[1] / "config" / "ivr" / "hotline.yaml")
OPEN = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)  # Monday 11:00 in Shanghai
EVENING = datetime(2026, 11, 23, 13, 30, tzinfo=UTC)  # Monday 21:30 in Shanghai
AGENTS = [AgentConfig(id="alice", name="Alice", interface="Local/1001@agents", extension="1001")]
VIP = {"id": "c-1002", "name": "Li Na", "vip_tier": 3, "account_manager": "alice"}


def channel_vars(flow: Flow, keys: list[str], *, caller: str = "13800000001",
                 directory: Mapping[str, Mapping[str, object]] | None = None,
                 now: datetime = OPEN) -> tuple[dict[str, str], End]:
    """Run ``flow`` as the FastAGI adapter would and keep what it writes with SET VARIABLE CTI_*."""
    session, batch = start(flow, {"agi_callerid": caller}, now)
    written: dict[str, str] = {}
    pending = list(keys)
    while True:
        written.update((c.name, c.value) for c in batch if isinstance(c, SetVariable) and c.name.startswith("CTI_"))
        last = batch[-1]
        if isinstance(last, End):
            return written, last
        event: Input
        if isinstance(last, Lookup):
            event = LookupResult((directory or {}).get(last.value))
        else:
            key = pending.pop(0) if pending else "timeout"
            event = Timeout() if key == "timeout" else Hangup() if key == "hangup" else Digits(key)
        session, batch = step(session, event)


class Pbx:
    """AMI events of one caller on a PJSIP trunk channel running AGI(), as Asterisk 22 sends them."""

    def __init__(self) -> None:
        self.model = CallModel(agents=AGENTS)
        self.out: list[DomainEvent] = []
        self.t = 1000.0
        self.leg = {"Channel": "PJSIP/trunk-00000001", "Uniqueid": "1000.1", "Linkedid": "1000.1",
                    "CallerIDNum": "13800000001", "CallerIDName": "Wang Lei"}
        self.ringing: dict[str, str] | None = None

    def emit(self, event: str, **fields: str) -> None:
        self.t += 0.5
        self.out += self.model.apply(Message({"Event": event, "Timestamp": f"{self.t:.6f}", **fields}))

    def arrive(self) -> None:
        self.emit("Newchannel", **self.leg)

    def ivr(self, written: Mapping[str, str]) -> None:
        for name, value in written.items():
            self.emit("VarSet", **self.leg, Variable=name, Value=value)

    def queue_and_ring(self) -> None:
        self.emit("QueueCallerJoin", **self.leg, Queue="billing", Position="1", Count="1")
        agent = {"Channel": "Local/1001@agents-00000001;1", "Uniqueid": "2000.1", "Linkedid": "1000.1"}
        self.emit("Newchannel", **agent)
        self.ringing = agent
        self.emit("AgentCalled", **self.leg, Queue="billing", MemberName="Alice", Interface="Local/1001@agents/n",
                  DestChannel=agent["Channel"])

    def hang_up(self) -> None:
        """The caller gives up; a ringing agent's phone stops (its channel goes) too."""
        self.emit("Hangup", **self.leg)
        if self.ringing is not None:
            self.emit("Hangup", **self.ringing)

    def of_type(self, kind: str) -> list[DomainEvent]:
        return [e for e in self.out if e.type == kind]


# --- the screen pop shows the IVR -------------------------------------------------------------


def test_the_pop_carries_the_path_the_keys_and_where_the_flow_sent_the_caller() -> None:
    written, end = channel_vars(HOTLINE, ["2", "7", "1"])  # English, a wrong key, billing
    assert (end.kind, end.entry_point) == ("route", "billing")
    pbx = Pbx()
    pbx.arrive()
    pbx.ivr(written)
    pbx.queue_and_ring()
    [pop] = pbx.of_type(ev.CALL_OFFERED)
    assert pop.agent == "alice"
    assert pop.data["ivr"] == {
        "flow": "hotline", "version": HOTLINE.version, "outcome": "route", "entry_point": "billing",
        "language": "en", "priority": 0, "tier": None, "requirements": None, "customer_id": None,
        "path": ["welcome", "identify", "language", "hours", "vip_check", "main_menu", "billing"],
        "inputs": [{"node": "language", "value": "2"}, {"node": "main_menu", "value": "7"},
                   {"node": "main_menu", "value": "1"}],
        "truncated": False, "callback": None, "transfer_to": None,
    }
    json.dumps(pop.data, allow_nan=False)  # the envelope is JSON


def test_a_vip_pop_names_the_customer_the_account_manager_and_the_priority() -> None:
    written, end = channel_vars(HOTLINE, [], caller="8613900000001", directory={"8613900000001": VIP})
    assert end.entry_point == "vip"
    pbx = Pbx()
    pbx.arrive()
    pbx.ivr(written)
    pbx.queue_and_ring()
    ivr = pbx.of_type(ev.CALL_OFFERED)[0].data["ivr"]
    assert (ivr["entry_point"], ivr["priority"], ivr["customer_id"]) == ("vip", 3, "c-1002")
    assert ivr["requirements"] == {"language": None, "preferred_agents": ["alice"], "skills": {}}
    assert "main_menu" not in ivr["path"]
    assert ivr["inputs"] == [{"node": "language", "value": "timeout"}] * 2  # asked twice, then Mandarin


def test_a_call_without_an_ivr_has_none() -> None:
    pbx = Pbx()
    pbx.arrive()
    pbx.emit("VarSet", **pbx.leg, Variable="CTI_AGENT", Value="alice")  # routing's, not a flow's
    pbx.queue_and_ring()
    pbx.hang_up()
    assert pbx.of_type(ev.CALL_OFFERED)[0].data["ivr"] is None
    [finished] = pbx.of_type(ev.CALL_FINISHED)
    assert finished.data["ivr"] is None and finished.data["outcome"] == "abandoned"


# --- a hang-up in the IVR is its own outcome --------------------------------------------------


def test_a_caller_who_hangs_up_in_the_ivr_finishes_abandoned_ivr_with_the_path() -> None:
    written, end = channel_vars(HOTLINE, ["1", "hangup"])  # Mandarin, then gone at the main menu
    assert end.kind == "abandoned"
    pbx = Pbx()
    pbx.arrive()
    pbx.ivr(written)  # Asterisk answers SET VARIABLE on the dead channel: the VarSets come before the Hangup
    pbx.hang_up()
    [finished] = pbx.of_type(ev.CALL_FINISHED)
    assert finished.data["outcome"] == "abandoned_ivr"
    assert finished.data["ivr"]["outcome"] == "abandoned"
    assert finished.data["ivr"]["path"][-1] == "main_menu"
    assert finished.data["ivr"]["inputs"][-1] == {"node": "main_menu", "value": "hangup"}
    assert not pbx.model.queues or all(q.abandoned == 0 for q in pbx.model.queues.values())
    call = pbx.model.ended["1000.1"]
    assert call.outcome is None  # the segments' outcome, as cti replay prints it, is untouched
    assert call_row(call)["ivr"]["outcome"] == "abandoned"


def test_a_queue_abandon_after_the_ivr_stays_a_queue_abandon() -> None:
    written, _ = channel_vars(HOTLINE, ["2", "1"])
    pbx = Pbx()
    pbx.arrive()
    pbx.ivr(written)
    pbx.queue_and_ring()
    pbx.hang_up()
    [finished] = pbx.of_type(ev.CALL_FINISHED)
    assert finished.data["outcome"] == "abandoned" and finished.data["ivr"]["outcome"] == "route"
    assert pbx.model.queues["billing"].abandoned == 1


def test_a_caller_routed_by_the_ivr_who_hangs_up_before_a_queue_is_not_an_ivr_abandon() -> None:
    written, _ = channel_vars(HOTLINE, ["2", "3"])  # complaints; gone in cti-hold, which routing counts
    pbx = Pbx()
    pbx.arrive()
    pbx.ivr(written)
    pbx.hang_up()
    [finished] = pbx.of_type(ev.CALL_FINISHED)
    assert finished.data["outcome"] is None and finished.data["ivr"]["entry_point"] == "complaints"


def test_writes_cut_off_after_the_flow_name_count_as_an_ivr_abandon() -> None:
    pbx = Pbx()
    pbx.arrive()
    pbx.emit("VarSet", **pbx.leg, Variable="CTI_FLOW", Value=f"hotline@{HOTLINE.version}")
    pbx.hang_up()
    [finished] = pbx.of_type(ev.CALL_FINISHED)
    assert finished.data["outcome"] == "abandoned_ivr"
    assert (finished.data["ivr"]["flow"], finished.data["ivr"]["outcome"], finished.data["ivr"]["path"]) == (
        "hotline", None, [])


@pytest.mark.parametrize(("keys", "kind"), [(["1"], "hangup"), (["1", "1"], "callback")])
def test_an_end_the_flow_chose_after_hours_is_not_an_abandon(keys: list[str], kind: str) -> None:
    caller = "" if kind == "hangup" else "13800000001"  # no number to call back: goodbye
    written, end = channel_vars(HOTLINE, keys, caller=caller, now=EVENING)
    assert end.kind == kind and not abandoned_in_ivr(written)
    pbx = Pbx()
    pbx.arrive()
    pbx.ivr(written)
    pbx.hang_up()
    [finished] = pbx.of_type(ev.CALL_FINISHED)
    assert finished.data["outcome"] is None and finished.data["ivr"]["outcome"] == kind
    if kind == "callback":
        assert finished.data["ivr"]["callback"] == {"number": "13800000001", "time": EVENING.isoformat(),
                                                    "reason": "after_hours"}


def test_the_ivr_part_survives_a_restart() -> None:
    written, _ = channel_vars(HOTLINE, ["2", "2"])
    pbx = Pbx()
    pbx.arrive()
    pbx.ivr(written)
    call = pbx.model.calls["1000.1"]
    again = call_from_dict(json.loads(json.dumps(call_to_dict(call))))
    assert again.snapshot()["ivr"] == call.snapshot()["ivr"]
    assert again.snapshot()["ivr"]["entry_point"] == "tech_support"


# --- reading the variables back -----------------------------------------------------------------


def test_a_shortened_path_is_marked() -> None:
    part = ivr_part({"CTI_FLOW": "f@1", "CTI_OUTCOME": "hangup", "CTI_IVR_PATH": "...,m,m,m",
                     "CTI_IVR_INPUTS": "...,m:1,m:timeout"})
    assert part is not None
    assert (part["path"], part["truncated"]) == (["m", "m", "m"], True)
    assert part["inputs"] == [{"node": "m", "value": "1"}, {"node": "m", "value": "timeout"}]


def test_values_a_dialplan_got_wrong_become_none() -> None:
    part = ivr_part({"CTI_OUTCOME": "route", "CTI_PRIORITY": "high", "CTI_REQUIREMENTS": "[" * 50_000,
                     "CTI_CALLBACK": '{"a": ' + "[" * 50_000, "CTI_IVR_INPUTS": "nocolon,:x,m:1"})
    assert part is not None
    assert (part["flow"], part["priority"], part["requirements"], part["callback"]) == (None, None, None, None)
    assert part["inputs"] == [{"node": "m", "value": "1"}]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["CTI_FLOW", "CTI_OUTCOME", "CTI_ENTRY", "CTI_PRIORITY", "CTI_TIER",
                                        "CTI_REQUIREMENTS", "CTI_LANGUAGE", "CTI_CUSTOMER", "CTI_IVR_PATH",
                                        "CTI_IVR_INPUTS", "CTI_TRANSFER", "CTI_CALLBACK"]),
                       st.text(max_size=60)))
def test_any_variables_give_a_json_part_or_none(variables: dict[str, str]) -> None:
    part = ivr_part(variables)
    assert (part is None) == ("CTI_FLOW" not in variables and "CTI_OUTCOME" not in variables)
    json.dumps(part, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["1", "2", "3", "7", "9", "#", "timeout", "hangup"]), max_size=12))
def test_the_part_tells_the_path_and_inputs_the_interpreter_took(keys: list[str]) -> None:
    written, end = channel_vars(HOTLINE, keys)
    part = ivr_part(written)
    assert part is not None
    assert part["outcome"] == end.kind and part["entry_point"] == end.entry_point
    assert part["language"] == end.language and part["flow"] == "hotline"
    assert ",".join(part["path"]) == written["CTI_IVR_PATH"]
    assert [f"{i['node']}:{i['value']}" for i in part["inputs"]] == (
        written["CTI_IVR_INPUTS"].split(",") if written.get("CTI_IVR_INPUTS") else [])
    assert abandoned_in_ivr(written) == (end.kind == "abandoned")
