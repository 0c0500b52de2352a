"""Trying a flow without a phone: what ``cti ivr try FLOW --caller N --keys "2,timeout,1" --json`` prints.

The keys are what the caller does, in order: digits (``2``, ``1234``), ``#``, ``*``, ``timeout``
(silence where a key was expected) and ``hangup``.  They are fed the way Asterisk would take
them: a menu takes one key; an entry (GET DATA) takes keys until ``#``, its maximum length, or a
``timeout``.  When the keys run out while the flow still waits, the caller is silent: timeouts
until the flow ends (menus give up after their retries; the interpreter's step limit bounds the rest).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Final, NotRequired, TypedDict

from ivr_flows.commands import GetData, Lookup, Play, WaitForDigit
from ivr_flows.inputs import Digits, Hangup, Input, LookupResult, Timeout
from ivr_flows.interpreter import start, step
from ivr_flows.model import KEYS, Flow
from ivr_flows.values import Value

__all__ = ["Directory", "TryResult", "parse_keys", "try_flow"]

#: A customer lookup: a number (or account number) -> the record as a dict, or None.
Directory = Callable[[str], Mapping[str, object] | None]
_WORDS: Final = ("timeout", "hangup")
#: Inputs after which a run is cut short whatever the flow does (the interpreter stops far earlier).
_MAX_INPUTS: Final = 1000


class TryResult(TypedDict):
    """The JSON ``cti ivr try`` prints; the routing keys only when the call routes."""

    flow: str
    version: str
    path: list[str]
    inputs: list[str]
    prompts: list[str]
    vars: dict[str, Value]
    end: str
    entry_point: NotRequired[str | None]
    requirements: NotRequired[dict[str, object]]
    priority: NotRequired[int]
    tier: NotRequired[str | None]
    language: NotRequired[str]
    request: NotRequired[dict[str, object]]
    transfer_to: NotRequired[str]
    reason: NotRequired[str]


def parse_keys(keys: list[str] | str) -> list[str]:
    """``"2,timeout,1"`` or ``["2", "timeout", "1"]`` -> one token per key press or word; ValueError if
    something is neither a keypad key nor ``timeout`` / ``hangup``."""
    items = keys.split(",") if isinstance(keys, str) else keys
    tokens: list[str] = []
    for raw in items:
        item = raw.strip().lower()
        if not item:
            continue
        if item in _WORDS:
            tokens.append(item)
        elif all(c in KEYS for c in item):
            tokens.extend(item)
        else:
            raise ValueError(f"{raw!r}: a key is one of {KEYS}, digits, 'timeout' or 'hangup'")
    return tokens


def try_flow(
    flow: Flow,
    caller: str,
    keys: list[str] | str,
    directory: Directory,
    now: datetime,
    *,
    accounts: Directory | None = None,
) -> TryResult:
    """Run ``flow`` for a call from ``caller`` pressing ``keys``; a JSON-ready summary of how it ended.

    ``directory`` answers lookups by caller number, ``accounts`` (default: the same) by account number.
    """
    tokens = parse_keys(keys)
    session, commands = start(flow, {"agi_callerid": caller}, now)
    played: list[str] = []
    for _ in range(_MAX_INPUTS):
        played += [c.prompt for c in commands if isinstance(c, Play | GetData) and c.prompt]
        last = commands[-1] if commands else None
        if session.end is not None or last is None:
            break
        event: Input
        if isinstance(last, Lookup):
            source = directory if last.by == "number" else (accounts or directory)
            event = LookupResult(source(last.value))
        elif isinstance(last, GetData):
            event = _entry(tokens, last.max_digits)
        elif isinstance(last, WaitForDigit):
            token = tokens.pop(0) if tokens else "timeout"
            event = Timeout() if token == "timeout" else Hangup() if token == "hangup" else Digits(token)
        else:  # pragma: no cover - a batch always ends waiting or with End
            raise AssertionError(f"batch ends with {last!r}")
        session, commands = step(session, event)
    end = session.end
    out: TryResult = {
        "flow": flow.id,
        "version": session.flow_version,
        "path": list(session.path),
        "inputs": [str(i) for i in session.inputs],
        "prompts": played,
        "vars": dict(session.vars),
        "end": end.kind if end else "unfinished",
    }
    if end is None:
        return out
    if end.kind == "route":
        out |= {"entry_point": end.entry_point, "requirements": end.requirements.as_dict(), "priority": end.priority,
                "tier": end.tier, "language": end.language}
    if end.request is not None:
        out["request"] = end.request.as_dict()
        if end.entry_point is not None:
            out["entry_point"] = end.entry_point
    if end.transfer_to is not None:
        out["transfer_to"] = end.transfer_to
    if end.reason is not None:
        out["reason"] = end.reason
    return out


def _entry(tokens: list[str], max_digits: int) -> Input:
    """GET DATA: keys until ``#``, ``max_digits`` keys, or silence (what was typed so far counts)."""
    digits = ""
    while len(digits) < max_digits:
        token = tokens.pop(0) if tokens else "timeout"
        if token == "hangup":
            return Hangup()
        if token == "timeout":
            return Digits(digits) if digits else Timeout()
        if token == "#":
            return Digits(digits)
        digits += token
    return Digits(digits)

