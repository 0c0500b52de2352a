"""One call's progress through a flow: an immutable value, replaced (not changed) by every step.

It holds the :class:`~ivr_flows.model.Flow` object it started on, so a flow edited or reloaded
while the call is in the IVR applies to new calls only; this call finishes on its own version.
``path`` and ``inputs`` are what the screen pop shows: where the caller went, what they pressed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ivr_flows.commands import End, Requirements
from ivr_flows.model import Flow
from ivr_flows.values import Value

__all__ = ["InputRecord", "Session", "Waiting"]

#: What the session waits for: a key (menu), an entry (collect), the directory (lookup); None once ended.
Waiting = Literal["digit", "entry", "lookup"]


@dataclass(frozen=True, slots=True)
class InputRecord:
    """At ``node`` the caller pressed ``value`` (keys; ``timeout``; ``hangup``; ``***`` for a masked entry)."""

    node: str
    value: str

    def __str__(self) -> str:
        return f"{self.node}:{self.value}"


@dataclass(frozen=True, slots=True)
class Session:
    flow: Flow
    node: str
    vars: Mapping[str, Value]
    path: tuple[str, ...]
    inputs: tuple[InputRecord, ...]
    requirements: Requirements
    priority: int
    started_at: datetime
    now: datetime
    tier: str | None = None
    waiting: Waiting | None = None
    attempt: int = 0
    visits: int = 0
    end: End | None = None

    @property
    def done(self) -> bool:
        return self.end is not None

    @property
    def flow_version(self) -> str:
        return self.flow.version

    @property
    def language(self) -> str:
        value = self.vars.get("language")
        return value if isinstance(value, str) and value in self.flow.languages else self.flow.language
