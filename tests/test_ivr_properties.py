"""Properties of the shipped flows under any caller behaviour: every call ends, in a bounded number of
steps, in route, callback/voicemail, transfer, hangup or abandoned; every batch is well formed; and
every command renders to a safe AGI line."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr_flows import (
    Digits,
    End,
    Flow,
    GetData,
    Hangup,
    Lookup,
    LookupResult,
    Timeout,
    WaitForDigit,
    load_flows,
    render,
    start,
    step,
)
from ivr_flows.commands import Command
from ivr_flows.inputs import Input

FLOWS = load_flows(Path(__file__).parent.parent / "config" / "ivr")
#: After the caller's own inputs, silence must end any shipped flow within this many steps.
SILENCE_BOUND = 30

RECORDS: list[Mapping[str, object] | None] = [
    None,
    {"id": "c-1", "name": "Wang Lei", "vip_tier": 0},
    {"id": "c-2", "name": "Li Na", "vip_tier": 3, "account_manager": "chen", "company": "Orient Bank"},
    {"id": "c-3", "name": "x\r\ny", "vip_tier": "2", "account_manager": "not an id!"},
]

keys = st.sampled_from(list("0123456789*#"))
#: Single keys mostly (menus), some whole entries (a GET DATA answer), silence, and hang-ups.
caller_inputs = st.lists(
    st.one_of(keys.map(Digits), st.text("0123456789#", max_size=12).map(Digits), st.just(Timeout()),
              st.just(Hangup())),
    max_size=25,
)
moments = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2026, 12, 31),
                       timezones=st.just(UTC))
callers = st.sampled_from(["13800000001", "8613900000001", "", "anonymous", "+44 20 7946 0001", "5"])


def check_batch(commands: list[Command]) -> None:
    """A batch ends with what it waits for (or End), nothing after End, every AGI command renders."""
    assert commands, "a step that returns no commands leaves the adapter waiting for nothing"
    last = commands[-1]
    assert isinstance(last, End | WaitForDigit | GetData | Lookup)
    for command in commands[:-1]:
        assert not isinstance(command, End | Lookup)
        render(command)


def next_input(commands: list[Command], pending: list[Input], record: Mapping[str, object] | None) -> Input:
    """The directory answers a lookup (unless the caller hangs up meanwhile); the caller answers the rest,
    and is silent once their inputs run out."""
    if isinstance(commands[-1], Lookup):
        return pending.pop(0) if pending and isinstance(pending[0], Hangup) else LookupResult(record)
    return pending.pop(0) if pending else Timeout()


@pytest.mark.parametrize("flow_id", sorted(FLOWS))
@settings(deadline=None, max_examples=150)
@given(inputs=caller_inputs, now=moments, caller=callers, record=st.sampled_from(RECORDS))
def test_every_call_ends_within_bounds(flow_id: str, inputs: list[Input], now: datetime, caller: str,
                                       record: Mapping[str, object] | None) -> None:
    flow: Flow = FLOWS[flow_id]
    session, commands = start(flow, {"agi_callerid": caller}, now)
    check_batch(commands)
    pending = list(inputs)
    steps = 0
    while session.end is None:
        steps += 1
        assert steps <= len(inputs) + SILENCE_BOUND, f"not ended after {steps} steps: {session.path}"
        event = next_input(commands, pending, record)
        session, commands = step(session, event, now=now + timedelta(seconds=steps * 5))
        check_batch(commands)
    end = session.end
    assert end.kind in ("route", "callback", "voicemail", "transfer", "hangup", "abandoned")
    assert commands[-1] is end
    if end.kind == "route":
        assert end.entry_point
    if end.kind in ("callback", "voicemail"):
        assert end.request is not None
    assert session.path[0] == flow.start and set(session.path) <= set(flow.nodes)
    assert len(session.inputs) <= len(inputs) + SILENCE_BOUND
