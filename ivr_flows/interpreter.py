"""The flow interpreter: a pure state machine from inputs to commands.

``start(flow, env, now)`` and ``step(session, input)`` return a new :class:`Session` and the
next batch of commands; nothing here touches a socket or a clock, so a test drives a call key
by key and the FastAGI adapter only executes what it is given.

Inside one step the interpreter follows automatic nodes (play, set, condition) until it
reaches one that waits (menu, collect, lookup) or one that ends the call.  Two limits keep a
flow with a loop in it from spinning: :data:`MAX_AUTOMATIC` nodes within a step, and
:data:`MAX_VISITS` nodes for the whole call; past either the call is hung up
(``End(kind="hangup", reason="step_limit")``).

At the end the outcome is written to ``CTI_*`` channel variables (:data:`CTI_VARS`) before
anything else, so the call model and screen pop get them even if the caller hangs up during a
goodbye.  They are sent for an abandoned call too: Asterisk still answers SET VARIABLE on a
channel that hung up during AGI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from types import MappingProxyType
from typing import Final

from ivr_flows.commands import (
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
from ivr_flows.conditions import evaluate
from ivr_flows.inputs import Digits, Hangup, Input, LookupResult, Timeout
from ivr_flows.model import (
    KEYS,
    CallbackNode,
    CollectNode,
    ConditionNode,
    Flow,
    HangupNode,
    LookupNode,
    MenuNode,
    PlayNode,
    RequirementsSpec,
    RouteNode,
    SetNode,
    TransferNode,
    VoicemailNode,
)
from ivr_flows.session import InputRecord, Session, Waiting
from ivr_flows.values import Value, as_number, as_text, resolve, resolve_value

__all__ = ["CTI_VARS", "MAX_AUTOMATIC", "MAX_VISITS", "UnexpectedInput", "start", "step"]

#: Node visits in one call; a caller pressing "repeat" forever is hung up after this many.
MAX_VISITS: Final = 200
#: Nodes followed within one step without waiting for anything: a loop of set/condition/play nodes.
MAX_AUTOMATIC: Final = 50
#: The channel variables the outcome is written to (the call model keeps every ``CTI_*`` variable).
CTI_VARS: Final = (
    "CTI_FLOW", "CTI_OUTCOME", "CTI_ENTRY", "CTI_PRIORITY", "CTI_TIER", "CTI_REQUIREMENTS", "CTI_LANGUAGE",
    "CTI_CUSTOMER",
    "CTI_IVR_PATH", "CTI_IVR_INPUTS", "CTI_TRANSFER", "CTI_CALLBACK",
)
#: How much of the path and inputs goes into a channel variable (an AGI line holds about 2 KB).
_TRAIL_CHARS: Final = 900
#: A missing collect prompt still needs a file for GET DATA: Asterisk's one second of silence.
_SILENCE: Final = "silence/1"
_AGENT_ID: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Customer record field -> flow variable.
_RECORD_VARS: Final = {
    "id": "customer_id", "name": "customer_name", "company": "company", "company_tier": "company_tier",
    "role": "role", "vip_tier": "vip_tier", "account_manager": "account_manager",
}


class UnexpectedInput(ValueError):
    """The input does not answer what the session waits for (an adapter bug, not a caller's doing)."""


def _env_text(env: Mapping[str, str], key: str) -> str:
    value = env.get(key, "").strip()
    return "" if value.lower() in ("unknown", "anonymous", "<unknown>") else value


def start(flow: Flow, env: Mapping[str, str], now: datetime) -> tuple[Session, list[Command]]:
    """A new call on ``flow``; ``env`` is the AGI environment (``agi_callerid``, ``agi_dnid`` ...)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    variables: dict[str, Value] = {
        "caller": _env_text(env, "agi_callerid"),
        "caller_name": _env_text(env, "agi_calleridname"),
        "called": _env_text(env, "agi_dnid"),
        "language": flow.language,
        "vip_tier": 0,
    }
    session = Session(flow=flow, node=flow.start, vars=MappingProxyType(variables), path=(), inputs=(),
                      requirements=Requirements(), priority=0, started_at=now, now=now)
    run = _Run(session, now)
    if flow.answer:
        run.out.append(Answer())
    run.out.append(SetVariable("CHANNEL(language)", flow.language))
    run.goto(flow.start)
    return run.result()


def step(session: Session, event: Input, *, now: datetime | None = None) -> tuple[Session, list[Command]]:
    """Feed what happened; ``now`` (default: the session's last time) is when it happened."""
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if session.end is not None:
        if isinstance(event, Hangup):
            return session, []  # the caller hung up while the adapter ran the last batch
        raise UnexpectedInput(f"the session has ended ({session.end.kind}); got {event!r}")
    run = _Run(session, now or session.now)
    run.handle(event)
    return run.result()


class _Run:
    """One step's mutable working copy of a session; :meth:`result` freezes it again."""

    def __init__(self, session: Session, now: datetime) -> None:
        self.s = session
        self.flow = session.flow
        self.now = now
        self.node = session.node
        self.vars: dict[str, Value] = dict(session.vars)
        self.path = list(session.path)
        self.inputs = list(session.inputs)
        self.requirements = session.requirements
        self.priority = session.priority
        self.tier = session.tier
        self.attempt = session.attempt
        self.visits = session.visits
        self.waiting: Waiting | None = session.waiting
        self.end: End | None = None
        self.out: list[Command] = []

    def result(self) -> tuple[Session, list[Command]]:
        session = replace(
            self.s, node=self.node, vars=MappingProxyType(dict(self.vars)), path=tuple(self.path),
            inputs=tuple(self.inputs), requirements=self.requirements, priority=self.priority, tier=self.tier,
            now=self.now, waiting=self.waiting, attempt=self.attempt, visits=self.visits, end=self.end,
        )
        return session, self.out

    # --- inputs -------------------------------------------------------------------------------

    def handle(self, event: Input) -> None:
        if isinstance(event, Hangup):
            self.inputs.append(InputRecord(self.node, "hangup"))
            self.finish("abandoned", reason="caller_hung_up")
            return
        node = self.flow.nodes.get(self.node)
        if self.waiting == "digit" and isinstance(node, MenuNode) and isinstance(event, Digits | Timeout):
            self.menu_input(node, event)
        elif self.waiting == "entry" and isinstance(node, CollectNode) and isinstance(event, Digits | Timeout):
            self.collect_input(node, event)
        elif self.waiting == "lookup" and isinstance(node, LookupNode) and isinstance(event, LookupResult | Timeout):
            self.lookup_input(node, event.record if isinstance(event, LookupResult) else None)
        else:
            raise UnexpectedInput(f"node {self.node!r} waits for {self.waiting}; got {event!r}")

    def menu_input(self, node: MenuNode, event: Digits | Timeout) -> None:
        key = event.digits[:1] if isinstance(event, Digits) else ""
        self.inputs.append(InputRecord(self.node, key or "timeout"))
        option = node.options.get(key) if key else None
        if option is not None:
            self.assign({name: resolve_value(value, self.vars) for name, value in option.set.items()})
            self.goto(option.next)
        elif self.attempt >= node.max_retries:
            self.goto(node.default)
        else:
            self.attempt += 1
            self.play(node.invalid_prompt if key else node.timeout_prompt, KEYS)
            self.ask_menu(node)

    def collect_input(self, node: CollectNode, event: Digits | Timeout) -> None:
        entry = event.digits.rstrip(node.terminator) if isinstance(event, Digits) else ""
        shown = ("***" if node.mask else entry) if entry else ("#" if isinstance(event, Digits) else "timeout")
        self.inputs.append(InputRecord(self.node, shown))
        if _valid_entry(node, entry):
            self.assign({node.var: entry})
            self.goto(node.next)
        elif self.attempt >= node.max_retries:
            self.goto(node.on_failure)
        else:
            self.attempt += 1
            self.play(node.timeout_prompt if isinstance(event, Timeout) else node.invalid_prompt, "")
            self.ask_entry(node)

    def lookup_input(self, node: LookupNode, record: Mapping[str, object] | None) -> None:
        if record is None:
            self.goto(node.not_found)
            return
        found: dict[str, Value] = {}
        for field, name in _RECORD_VARS.items():
            value = record.get(field)
            found[name] = value if isinstance(value, str | int | float | bool) else None
        tier = as_number(found["vip_tier"])
        found["vip_tier"] = min(3, max(0, int(tier))) if tier is not None else 0
        self.assign(found)
        self.goto(node.found)

    # --- walking the graph --------------------------------------------------------------------

    def goto(self, node_id: str) -> None:
        """Follow automatic nodes from ``node_id`` until one waits or the call ends."""
        automatic = 0
        while True:
            self.visits += 1
            automatic += 1
            if self.visits > MAX_VISITS or automatic > MAX_AUTOMATIC:
                self.finish("hangup", reason="step_limit")
                return
            self.node, self.attempt = node_id, 0
            self.path.append(node_id)
            node = self.flow.nodes.get(node_id)
            match node:
                case None:
                    self.finish("hangup", reason="unknown_node")  # check_flow reports it; a call must not crash
                    return
                case PlayNode():
                    self.play(node.prompt, "")
                    node_id = node.next
                case SetNode():
                    self.apply_set(node)
                    node_id = node.next
                case ConditionNode():
                    node_id = next((b.next for b in node.branches
                                    if evaluate(b.if_, self.vars, self.now, self.flow.schedules)), node.else_)
                case LookupNode():
                    value = resolve(node.value or "${caller}", self.vars).strip()
                    if not value:
                        node_id = node.not_found
                        continue
                    self.out.append(Lookup("number" if node.by == "caller" else "account", value))
                    self.waiting = "lookup"
                    return
                case MenuNode():
                    self.ask_menu(node)
                    return
                case CollectNode():
                    self.ask_entry(node)
                    return
                case RouteNode():
                    self.add_requirements(node.requirements, node.priority, node.tier)
                    self.finish("route", prompt=node.prompt, entry_point=node.entry_point)
                    return
                case CallbackNode():
                    request = CallbackRequest(_one_line(resolve(node.number, self.vars)), self.now, node.reason)
                    self.finish("callback", prompt=node.prompt, entry_point=node.entry_point, request=request)
                    return
                case VoicemailNode():
                    request = CallbackRequest(_one_line(as_text(self.vars.get("caller"))), self.now, node.reason,
                                              mailbox=node.mailbox)
                    self.finish("voicemail", prompt=node.prompt, request=request)
                    return
                case TransferNode():
                    self.finish("transfer", prompt=node.prompt, transfer_to=node.number)
                    return
                case HangupNode():
                    self.finish("hangup", prompt=node.prompt, reason=node.reason)
                    return

    def ask_menu(self, node: MenuNode) -> None:
        self.play(node.prompt, KEYS)
        self.out.append(WaitForDigit(node.timeout_ms))
        self.waiting = "digit"

    def ask_entry(self, node: CollectNode) -> None:
        prompt = self.flow.prompts.get(node.prompt)
        file = prompt.file_for(self.language(), self.flow.language) if prompt else _SILENCE
        self.out.append(GetData(file, node.timeout_ms, node.max_length, node.prompt))
        self.waiting = "entry"

    def play(self, prompt_ids: tuple[str, ...], escape: str) -> None:
        for prompt_id in prompt_ids:
            prompt = self.flow.prompts.get(prompt_id)
            if prompt is not None:  # a missing prompt is check_flow's to report; the caller hears nothing
                self.out.append(Play(prompt.file_for(self.language(), self.flow.language), escape, prompt_id))

    def language(self) -> str:
        value = self.vars.get("language")
        return value if isinstance(value, str) and value in self.flow.languages else self.flow.language

    def assign(self, values: Mapping[str, Value]) -> None:
        before = self.language()
        self.vars.update(values)
        if self.language() != before:
            self.out.append(SetVariable("CHANNEL(language)", self.language()))  # Asterisk's own sounds follow

    def apply_set(self, node: SetNode) -> None:
        resolved: dict[str, Value] = {}
        for name, value in node.vars.items():
            resolved[name] = resolve_value(value, {**self.vars, **resolved})
        self.assign(resolved)
        self.add_requirements(node.requirements, node.priority, node.tier)

    def add_requirements(self, spec: RequirementsSpec | None, priority: int | str | None, tier: str | None) -> None:
        if spec is not None:
            language = resolve(spec.language, self.vars).strip() if spec.language else ""
            agents = tuple(a for a in (resolve(t, self.vars).strip() for t in spec.preferred_agents)
                           if _AGENT_ID.match(a))
            self.requirements = self.requirements.merged(Requirements(spec.skills, language or None, agents))
        if priority is not None:
            number = as_number(resolve_value(priority, self.vars))
            if number is not None:
                self.priority = min(100, max(0, int(number)))
        if tier is not None:
            self.tier = tier

    # --- the end ------------------------------------------------------------------------------

    def finish(self, kind: EndKind, *, prompt: tuple[str, ...] = (), entry_point: str | None = None,
               request: CallbackRequest | None = None, transfer_to: str | None = None,
               reason: str | None = None) -> None:
        end = End(kind=kind, vars=self.vars, language=self.language(), entry_point=entry_point,
                  requirements=self.requirements, priority=self.priority, tier=self.tier, request=request,
                  transfer_to=transfer_to, reason=reason)
        self.out.extend(SetVariable(name, value) for name, value in self.channel_vars(end))
        if kind != "abandoned":
            self.play(prompt, "")
        if kind == "voicemail" and request is not None:
            self.out.append(Exec("VoiceMail", (request.mailbox or "", "s" if prompt else "u")))
        if kind in ("hangup", "callback", "voicemail"):
            self.out.append(Disconnect())
        self.out.append(end)
        self.end = end
        self.waiting = None

    def channel_vars(self, end: End) -> list[tuple[str, str]]:
        customer = as_text(self.vars.get("customer_id"))
        pairs = [
            ("CTI_FLOW", f"{self.flow.id}@{self.flow.version}"),
            ("CTI_OUTCOME", end.kind),
            ("CTI_ENTRY", end.entry_point or ""),
            ("CTI_PRIORITY", str(end.priority)),
            ("CTI_TIER", end.tier or ""),
            ("CTI_REQUIREMENTS", end.requirements.to_json() if end.requirements else ""),
            ("CTI_LANGUAGE", self.language()),
            ("CTI_CUSTOMER", _one_line(customer)[:64]),
            ("CTI_IVR_PATH", _trail(self.path)),
            ("CTI_IVR_INPUTS", _trail([str(i) for i in self.inputs])),
            ("CTI_TRANSFER", end.transfer_to or ""),
            ("CTI_CALLBACK", json.dumps(end.request.as_dict(), separators=(",", ":")) if end.request else ""),
        ]
        return [(name, value) for name, value in pairs if value]


def _valid_entry(node: CollectNode, entry: str) -> bool:
    if not node.min_length <= len(entry) <= node.max_length:
        return False
    if node.pattern is not None:
        return re.fullmatch(node.pattern, entry) is not None
    return entry.isdigit() or entry == ""


def _one_line(text: str) -> str:
    """Channel variables are one AGI line: control characters from a directory or caller ID are dropped."""
    return _CONTROL.sub("", text)[:200]


def _trail(items: list[str]) -> str:
    """Comma-joined, keeping the most recent items when it gets long."""
    text = ",".join(items)
    while len(text) > _TRAIL_CHARS and len(items) > 1:
        items = items[len(items) // 4 or 1 :]
        text = "...," + ",".join(items)
    return text[-_TRAIL_CHARS:]
