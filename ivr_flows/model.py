"""The flow language: what a ``config/ivr/*.yaml`` file may say, as frozen pydantic models.

A flow is a graph of nodes keyed by id, a start node, the prompts it plays (text per
language, an audio file per language) and the schedules its conditions test.  Shape errors
(a missing field, a bad regex, an unknown timezone) fail validation with a key path; graph
errors (a ``next`` naming no node, a loop with no way out) are :func:`ivr_flows.check_flow`'s.

Every node lists its exits (:meth:`exits`) and the prompts it names (:meth:`prompt_ids`), so
the validator walks the graph without knowing each node type.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator, model_validator

from ivr_flows.conditions import Test
from ivr_flows.schedule import Schedule
from ivr_flows.values import NAME_PATTERN, Value, regex_or_none

__all__ = [
    "CallbackNode",
    "CollectNode",
    "ConditionNode",
    "Flow",
    "HangupNode",
    "LookupNode",
    "MenuNode",
    "Node",
    "Option",
    "PlayNode",
    "Prompt",
    "RequirementsSpec",
    "RouteNode",
    "SetNode",
    "TransferNode",
    "VoicemailNode",
]

#: The keys of a phone keypad; a menu option is one of them.
KEYS: Final = "0123456789*#"
_ID: Final = r"^[A-Za-z0-9_-]{1,64}$"
#: Asterisk sound names: no spaces or quotes, so they go on an AGI line unquoted (``STREAM FILE hotline/zh/welcome``).
_FILE: Final = r"^[A-Za-z0-9_./{}-]{1,200}$"
_LANGUAGE: Final = r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$"
#: A number Asterisk may dial out to: digits with an optional leading +, nothing a dial string could misread.
PHONE_NUMBER: Final = r"^\+?[0-9]{3,20}$"

NodeId = Annotated[str, StringConstraints(pattern=_ID)]
VarName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Language = Annotated[str, StringConstraints(pattern=_LANGUAGE)]
EntryPoint = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _prompt_list(value: object) -> object:
    """``prompt: welcome`` and ``prompt: [welcome, menu]`` both mean a list."""
    return [value] if isinstance(value, str) else value


PromptId = Annotated[str, StringConstraints(pattern=_ID)]
#: One prompt id or a list of them, played in order.
Prompts = Annotated[tuple[PromptId, ...], BeforeValidator(_prompt_list)]


class Prompt(_Model):
    """What the caller hears: an audio file (one for all languages, ``{lang}`` in the name, or one per
    language) and its words per language (for the try-out, the docs, and a later text-to-speech)."""

    file: Annotated[str, StringConstraints(pattern=_FILE)] | dict[Language, Annotated[
        str, StringConstraints(pattern=_FILE)]]
    text: dict[Language, str] = Field(default_factory=dict)

    @field_validator("file")
    @classmethod
    def _only_lang_placeholder(cls, value: str | dict[str, str]) -> str | dict[str, str]:
        for name in [value] if isinstance(value, str) else value.values():
            if re.sub(r"\{lang\}", "", name).count("{") or re.sub(r"\{lang\}", "", name).count("}"):
                raise ValueError(f"{name!r}: the only placeholder in a file name is {{lang}}")
            if ".." in name.split("/"):
                raise ValueError(f"{name!r}: no '..' in a sound file name")
        return value

    def file_for(self, language: str, default_language: str) -> str:
        if isinstance(self.file, str):
            return self.file.replace("{lang}", language)
        return self.file.get(language) or self.file.get(default_language) or next(iter(self.file.values()))


class Option(_Model):
    """A menu key: where it leads and the variables it sets (``set: {language: en}``)."""

    next: NodeId
    set: dict[VarName, Value] = Field(default_factory=dict)


class RequirementsSpec(_Model):
    """What the agent must offer: skills with a minimum level, a language, agents to try first.

    Strings may be templates (``language: ${language}``, ``preferred_agents: [${account_manager}]``),
    resolved when the node runs.
    """

    skills: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")],
                 Annotated[int, Field(ge=1, le=10)]] = Field(default_factory=dict)
    language: str | None = None
    preferred_agents: list[str] = Field(default_factory=list)


Priority = Annotated[int, Field(ge=0, le=100)] | Annotated[str, StringConstraints(pattern=r"^\$\{\w+\}$")]
#: A tier of the routing config (``vip_gold``); routing otherwise picks the entry point's or the VIP's.
Tier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class PlayNode(_Model):
    """Say something, then go on; not interruptible (a menu's own prompt is)."""

    type: Literal["play"]
    prompt: Prompts = Field(min_length=1)
    next: NodeId

    def exits(self) -> list[tuple[str, str]]:
        return [("next", self.next)]

    def prompt_ids(self) -> list[str]:
        return list(self.prompt)


class MenuNode(_Model):
    """One key chooses; a wrong key or silence plays ``invalid_prompt`` / ``timeout_prompt`` and asks again,
    ``max_retries`` times, then the call goes to ``default``."""

    type: Literal["menu"]
    prompt: Prompts = Field(min_length=1)
    options: dict[str, Option] = Field(min_length=1)
    timeout_ms: int = Field(5000, ge=500, le=60000)
    max_retries: int = Field(2, ge=0, le=9)
    invalid_prompt: Prompts = ()
    timeout_prompt: Prompts = ()
    default: NodeId

    @field_validator("options", mode="before")
    @classmethod
    def _keys_and_targets(cls, value: object) -> object:
        """YAML reads ``1: billing`` with an int key; a bare node id is an option with no variables."""
        if not isinstance(value, dict):
            return value
        out: dict[str, object] = {}
        for key, target in value.items():
            text = str(key)
            if len(text) != 1 or text not in KEYS:
                raise ValueError(f"option {text!r}: a menu key is one of {KEYS}")
            out[text] = {"next": target} if isinstance(target, str) else target
        return out

    def exits(self) -> list[tuple[str, str]]:
        return [(f"option {key}", opt.next) for key, opt in self.options.items()] + [("default", self.default)]

    def prompt_ids(self) -> list[str]:
        return [*self.prompt, *self.invalid_prompt, *self.timeout_prompt]


class CollectNode(_Model):
    """An entry of several digits (an account number) into ``var``, checked by length and ``pattern``.

    The entry ends on ``#``, at ``max_length`` digits, or after ``timeout_ms`` without a key: that is
    what Asterisk's GET DATA does, so ``#`` is the only terminator it can honour.  A bad entry asks
    again ``max_retries`` times, then goes to ``on_failure``.  ``mask`` keeps the digits out of the
    recorded inputs (a PIN).
    """

    type: Literal["collect"]
    prompt: PromptId = Field(description="one prompt: GET DATA plays a single file")
    var: VarName
    min_length: int = Field(1, ge=0, le=64)
    max_length: int = Field(20, ge=1, le=64)
    terminator: Literal["#"] = "#"
    pattern: str | None = Field(None, description="a regular expression the whole entry must match")
    timeout_ms: int = Field(5000, ge=500, le=60000)
    max_retries: int = Field(2, ge=0, le=9)
    invalid_prompt: Prompts = ()
    timeout_prompt: Prompts = ()
    mask: bool = False
    next: NodeId
    on_failure: NodeId

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return regex_or_none(value)

    @model_validator(mode="after")
    def _lengths(self) -> CollectNode:
        if self.min_length > self.max_length:
            raise ValueError("min_length is above max_length")
        return self

    def exits(self) -> list[tuple[str, str]]:
        return [("next", self.next), ("on_failure", self.on_failure)]

    def prompt_ids(self) -> list[str]:
        return [self.prompt, *self.invalid_prompt, *self.timeout_prompt]


class LookupNode(_Model):
    """Find the customer by the caller's number or by an entered account number; sets ``customer_id``,
    ``customer_name``, ``company``, ``company_tier``, ``role``, ``vip_tier`` and ``account_manager``."""

    type: Literal["lookup"]
    by: Literal["caller", "account"] = "caller"
    value: str | None = Field(None, description="what to look up (a template); default ${caller}")
    found: NodeId
    not_found: NodeId

    @model_validator(mode="after")
    def _account_needs_value(self) -> LookupNode:
        if self.by == "account" and not self.value:
            raise ValueError("a lookup by account needs value (e.g. ${account_number})")
        return self

    def exits(self) -> list[tuple[str, str]]:
        return [("found", self.found), ("not_found", self.not_found)]

    def prompt_ids(self) -> list[str]:
        return []


class Branch(_Model):
    if_: Test = Field(alias="if")
    next: NodeId


class ConditionNode(_Model):
    """The first branch whose test holds wins; none: ``else``."""

    type: Literal["condition"]
    branches: list[Branch] = Field(min_length=1)
    else_: NodeId = Field(alias="else")

    def exits(self) -> list[tuple[str, str]]:
        return [(f"branch {i + 1}", b.next) for i, b in enumerate(self.branches)] + [("else", self.else_)]

    def prompt_ids(self) -> list[str]:
        return []


class SetNode(_Model):
    """Set variables (``language`` among them), add routing requirements, set the priority or tier."""

    type: Literal["set"]
    vars: dict[VarName, Value] = Field(default_factory=dict)
    requirements: RequirementsSpec | None = None
    priority: Priority | None = None
    tier: Tier | None = None
    next: NodeId

    def exits(self) -> list[tuple[str, str]]:
        return [("next", self.next)]

    def prompt_ids(self) -> list[str]:
        return []


class RouteNode(_Model):
    """End the IVR: queue the call at an entry point of the routing config.  ``requirements`` only to ask
    for more than the entry point does: routing takes them instead of the entry point's."""

    type: Literal["route"]
    entry_point: EntryPoint
    requirements: RequirementsSpec | None = None
    priority: Priority | None = None
    tier: Tier | None = None
    prompt: Prompts = ()

    def exits(self) -> list[tuple[str, str]]:
        return []

    def prompt_ids(self) -> list[str]:
        return list(self.prompt)


class CallbackNode(_Model):
    """End the IVR with a callback request (number, time, reason); the caller is hung up after ``prompt``."""

    type: Literal["callback"]
    number: str = "${caller}"
    reason: str = Field("callback", max_length=64)
    entry_point: EntryPoint | None = Field(None, description="where the callback is routed when it is made")
    prompt: Prompts = ()

    def exits(self) -> list[tuple[str, str]]:
        return []

    def prompt_ids(self) -> list[str]:
        return list(self.prompt)


class VoicemailNode(_Model):
    """End the IVR in a voicemail box (Asterisk's VoiceMail application); the message is the request."""

    type: Literal["voicemail"]
    mailbox: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,32}(@[A-Za-z0-9_-]{1,32})?$")]
    reason: str = Field("voicemail", max_length=64)
    prompt: Prompts = ()

    def exits(self) -> list[tuple[str, str]]:
        return []

    def prompt_ids(self) -> list[str]:
        return list(self.prompt)


class TransferNode(_Model):
    """End the IVR by sending the caller to an outside number (the dialplan dials it: ``CTI_TRANSFER``)."""

    type: Literal["transfer"]
    number: Annotated[str, StringConstraints(pattern=PHONE_NUMBER)]
    prompt: Prompts = ()

    @field_validator("number", mode="before")
    @classmethod
    def _as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    def exits(self) -> list[tuple[str, str]]:
        return []

    def prompt_ids(self) -> list[str]:
        return list(self.prompt)


class HangupNode(_Model):
    """End the call after ``prompt`` (a goodbye)."""

    type: Literal["hangup"]
    reason: str = Field("flow", max_length=64)
    prompt: Prompts = ()

    def exits(self) -> list[tuple[str, str]]:
        return []

    def prompt_ids(self) -> list[str]:
        return list(self.prompt)


Node = Annotated[
    PlayNode | MenuNode | CollectNode | LookupNode | ConditionNode | SetNode | RouteNode | CallbackNode
    | VoicemailNode | TransferNode | HangupNode,
    Field(discriminator="type"),
]
#: The node types that end the IVR: every path through a flow should reach one.
TERMINAL_TYPES: Final = frozenset({"route", "callback", "voicemail", "transfer", "hangup"})
#: The node types that wait for the caller's keys.
INPUT_TYPES: Final = frozenset({"menu", "collect"})


def _canonical(value: Any) -> Any:
    """Mapping keys as text (YAML gives ``1:`` an int key), so the content digest can sort them."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


class Flow(_Model):
    """One IVR flow.  ``version`` defaults to a digest of the content, so any edit is a new version and a
    call keeps the version it started on (the session holds the object)."""

    id: NodeId
    version: str = ""
    description: str = ""
    start: NodeId
    languages: list[Language] = Field(min_length=1)
    default_language: Language | None = None
    answer: bool = Field(True, description="send ANSWER first (harmless when the dialplan already answered)")
    schedules: dict[VarName, Schedule] = Field(default_factory=dict)
    prompts: dict[NodeId, Prompt] = Field(default_factory=dict)
    nodes: dict[NodeId, Node] = Field(min_length=1)
    source: str = Field("", description="the file it was read from, for messages; not part of the version")

    @model_validator(mode="before")
    @classmethod
    def _digest_version(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("version"):
            content = _canonical({k: v for k, v in data.items() if k not in ("source", "version")})
            blob = json.dumps(content, sort_keys=True, default=str, ensure_ascii=False)
            data = {**data, "version": hashlib.sha256(blob.encode()).hexdigest()[:12]}
        elif isinstance(data, dict) and not isinstance(data["version"], str):
            data = {**data, "version": str(data["version"])}
        return data

    @model_validator(mode="after")
    def _default_language_declared(self) -> Flow:
        if self.default_language is not None and self.default_language not in self.languages:
            raise ValueError(f"default_language {self.default_language!r} is not in languages {self.languages}")
        return self

    @property
    def language(self) -> str:
        """The language a call starts in."""
        return self.default_language or self.languages[0]

