"""The IVR's part of a call: what the flow wrote into ``CTI_*`` channel variables, as the screen pop shows it.

The flow's end is written by ``ivr_flows`` (``ivr_flows.interpreter.CTI_VARS``) as SET VARIABLE
commands, which Asterisk reports as ``VarSet`` events; the reducer keeps every ``CTI_*`` one in
``Call.vars`` (raw strings, as Asterisk sent them). This module reads them back into the ``ivr``
part of the call snapshot. It only runs when a snapshot is taken, and only for a call whose
variables name a flow, so the reducer's per-event path stays a prefix test on ``VarSet``.

Everything here is total: the values come from a dialplan, which may set any ``CTI_*`` variable to
anything, so a bad value becomes ``None`` (or is left out of a list), never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["abandoned_in_ivr", "ivr_part"]

#: ``_trail`` in the interpreter starts a path or input list it had to shorten with this item.
_CUT: Final = "..."


def ivr_part(variables: Mapping[str, str]) -> dict[str, Any] | None:
    """The ``ivr`` object of the snapshot, or None when no flow wrote its end on this call.

    ``outcome`` is the flow's end (``route``, ``callback``, ``voicemail``, ``transfer``, ``hangup``,
    ``abandoned``), or None when the writes were cut short after ``CTI_FLOW``. ``path`` is the node
    ids in order and ``inputs`` what the caller pressed at each (``value``: keys, ``timeout``,
    ``hangup``, ``***`` for a masked entry); ``truncated`` says the oldest of them were dropped to fit
    a channel variable.
    """
    flow_ref = variables.get("CTI_FLOW")
    outcome = variables.get("CTI_OUTCOME")
    if flow_ref is None and outcome is None:
        return None
    flow, _, version = (flow_ref or "").partition("@")
    path, path_cut = _trail(variables.get("CTI_IVR_PATH", ""))
    entered, inputs_cut = _trail(variables.get("CTI_IVR_INPUTS", ""))
    inputs = []
    for item in entered:
        node, sep, value = item.partition(":")
        if sep and node:
            inputs.append({"node": node, "value": value})
    return {
        "flow": flow or None,
        "version": version or None,
        "outcome": outcome or None,
        "entry_point": variables.get("CTI_ENTRY") or None,
        "language": variables.get("CTI_LANGUAGE") or None,
        "priority": _int(variables.get("CTI_PRIORITY")),
        "tier": variables.get("CTI_TIER") or None,
        "requirements": _object(variables.get("CTI_REQUIREMENTS")),
        "customer_id": variables.get("CTI_CUSTOMER") or None,
        "path": path,
        "inputs": inputs,
        "truncated": path_cut or inputs_cut,
        "callback": _object(variables.get("CTI_CALLBACK")),
        "transfer_to": variables.get("CTI_TRANSFER") or None,
    }


def abandoned_in_ivr(variables: Mapping[str, str]) -> bool:
    """The caller hung up while a flow ran: the flow wrote ``CTI_OUTCOME=abandoned`` (it does so on the
    dead channel), or it began writing its end (``CTI_FLOW`` comes first) and was cut off before the
    outcome. A call the flow sent on (route, transfer) that then ends is not an IVR abandon."""
    outcome = variables.get("CTI_OUTCOME")
    return outcome == "abandoned" or (outcome is None and "CTI_FLOW" in variables)


def _trail(text: str) -> tuple[list[str], bool]:
    items = [item for item in text.split(",") if item] if text else []
    if items and items[0] == _CUT:
        return items[1:], True
    return items, False


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _object(text: str | None) -> dict[str, Any] | None:
    if not text or not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # a dialplan's "{[[[[..." nests past the parser's depth
        return None
    return value if isinstance(value, dict) else None
