"""IVR flows: a YAML flow language, its validator, and a pure interpreter the FastAGI adapter drives.

    flow = load_flow("config/ivr/hotline.yaml")
    problems = check_flow(flow, entry_points={"billing", "vip"}, prompt_dir=None)
    session, commands = start(flow, {"agi_callerid": "13800000001"}, now)
    session, commands = step(session, Digits("1"))       # ... until commands[-1] is an End

No sockets and no clock here: time is the ``now`` argument, I/O is the adapter's.
"""

from ivr_flows.agi import Reply, ReplyReader, input_for, parse_env, parse_reply, render
from ivr_flows.check import Problem, check_flow
from ivr_flows.commands import (
    AgiCommand,
    Answer,
    CallbackRequest,
    Command,
    Disconnect,
    End,
    EndKind,
    Exec,
    GetData,
    Lookup,
    Play,
    Requirements,
    SetVariable,
    WaitForDigit,
)
from ivr_flows.inputs import Digits, Hangup, Input, LookupResult, Timeout
from ivr_flows.interpreter import UnexpectedInput, start, step
from ivr_flows.loader import FlowError, load_flow, load_flows, parse_flow
from ivr_flows.model import Flow
from ivr_flows.session import InputRecord, Session
from ivr_flows.tryout import try_flow

__all__ = [
    "AgiCommand",
    "Answer",
    "CallbackRequest",
    "Command",
    "Digits",
    "Disconnect",
    "End",
    "EndKind",
    "Exec",
    "Flow",
    "FlowError",
    "GetData",
    "Hangup",
    "Input",
    "InputRecord",
    "Lookup",
    "LookupResult",
    "Play",
    "Problem",
    "Reply",
    "ReplyReader",
    "Requirements",
    "Session",
    "SetVariable",
    "Timeout",
    "UnexpectedInput",
    "WaitForDigit",
    "check_flow",
    "input_for",
    "load_flow",
    "load_flows",
    "parse_env",
    "parse_flow",
    "parse_reply",
    "render",
    "start",
    "step",
    "try_flow",
]
