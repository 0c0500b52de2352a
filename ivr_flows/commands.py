"""What the interpreter asks the channel to do, and how a call leaves the IVR.

Each batch the interpreter returns is run in order by the FastAGI adapter.  Every command
but :class:`Lookup` and :class:`End` is one AGI line (:func:`ivr_flows.agi.render`).  A batch
ends with the command whose outcome the interpreter waits for (``WaitForDigit``, ``GetData``,
``Lookup``) or with :class:`End`; the adapter reports that outcome as the next input, or
stops early and reports a key pressed during an interruptible :class:`Play`, or a hangup.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Literal

from ivr_flows.values import Value

__all__ = [
    "AgiCommand",
    "Answer",
    "CallbackRequest",
    "Command",
    "Disconnect",
    "End",
    "EndKind",
    "Exec",
    "GetData",
    "Lookup",
    "Play",
    "Requirements",
    "SetVariable",
    "WaitForDigit",
]

EndKind = Literal["route", "callback", "voicemail", "transfer", "hangup", "abandoned"]


def _frozen(mapping: Mapping[str, object]) -> MappingProxyType[str, object]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class Answer:
    """AGI ``ANSWER``."""


@dataclass(frozen=True, slots=True)
class Play:
    """AGI ``STREAM FILE``: one sound file; a key in ``escape_digits`` stops it and counts as the caller's
    choice.  ``prompt`` names the flow's prompt (for logs and the try-out)."""

    file: str
    escape_digits: str = ""
    prompt: str = ""


@dataclass(frozen=True, slots=True)
class GetData:
    """AGI ``GET DATA``: play ``file`` and collect up to ``max_digits`` keys, ending on ``#`` or silence."""

    file: str
    timeout_ms: int
    max_digits: int
    prompt: str = ""


@dataclass(frozen=True, slots=True)
class WaitForDigit:
    """AGI ``WAIT FOR DIGIT``: one key, or a timeout."""

    timeout_ms: int


@dataclass(frozen=True, slots=True)
class SetVariable:
    """AGI ``SET VARIABLE``: how the IVR's outcome reaches the dialplan and the call model (``CTI_*``)."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Exec:
    """AGI ``EXEC``: a dialplan application with its arguments (joined by commas on the line)."""

    app: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Disconnect:
    """AGI ``HANGUP``: the IVR ends the call (after a goodbye, a callback request, a voicemail)."""


@dataclass(frozen=True, slots=True)
class Lookup:
    """Not an AGI command: look the customer up (by caller number or account number) and answer with
    :class:`ivr_flows.inputs.LookupResult`."""

    by: Literal["number", "account"]
    value: str


@dataclass(frozen=True, slots=True)
class Requirements:
    """What the agent must offer: skill -> minimum level, a language, agents to try first (in order)."""

    skills: Mapping[str, int] = field(default_factory=dict)
    language: str | None = None
    preferred_agents: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "skills", _frozen(self.skills))

    def merged(self, other: Requirements) -> Requirements:
        """``other`` on top: its skills override, its language wins when set, its agents come after ours."""
        agents = self.preferred_agents + tuple(a for a in other.preferred_agents if a not in self.preferred_agents)
        return Requirements({**self.skills, **other.skills}, other.language or self.language, agents)

    def __bool__(self) -> bool:
        return bool(self.skills or self.language or self.preferred_agents)

    def as_dict(self) -> dict[str, object]:
        return {"skills": dict(self.skills), "language": self.language, "preferred_agents": list(self.preferred_agents)}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    """A caller asked to be called back (or left a voicemail): who, when they asked, why."""

    number: str
    requested_at: datetime
    reason: str
    mailbox: str | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"number": self.number, "time": self.requested_at.isoformat(), "reason": self.reason}
        if self.mailbox is not None:
            out["mailbox"] = self.mailbox
        return out


@dataclass(frozen=True, slots=True)
class End:
    """The IVR is over; always the last command of the last batch.

    ``route``: queue at ``entry_point``; ``callback`` and ``voicemail``: ``request`` holds what to
    call back; ``transfer``: ``transfer_to`` is dialled; ``hangup``: the flow hung up (``reason``);
    ``abandoned``: the caller hung up in the IVR.

    For routing: ``language`` is the caller's; ``requirements`` is empty unless the flow asks for
    more than the entry point does (routing uses the entry point's own when it is empty);
    ``tier`` names a routing tier when the flow sets one (else routing takes the entry point's or
    the customer's ``vip_tier`` from ``vars``); ``priority`` is the flow's number (0 unless set).
    """

    kind: EndKind
    vars: Mapping[str, Value]
    language: str
    entry_point: str | None = None
    requirements: Requirements = field(default_factory=Requirements)
    priority: int = 0
    tier: str | None = None
    request: CallbackRequest | None = None
    transfer_to: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "vars", _frozen(self.vars))


AgiCommand = Answer | Play | GetData | WaitForDigit | SetVariable | Exec | Disconnect
Command = AgiCommand | Lookup | End
