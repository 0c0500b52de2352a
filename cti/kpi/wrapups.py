"""Which handled visit each wrap-up belongs to (CTI routing mode), so handle time is talk + wrap-up.

The router writes every agent status to its changes stream; a wrap-up is the span from a ``wrap_up``
about a call (the held channel's Uniqueid) to the agent's next status about anything else (ready by
the timer or by hand, a break, log-out). The call model says which agent answered which hold. The
two arrive on different paths (Redis, AMI) in either order, so each side waits here for the other.
Pure: told facts with their times, it answers the wrap-ups it could place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from cti.kpi.book import Dim

__all__ = ["WrapUp", "WrapUps"]

#: How long one side waits for the other: a wrap-up of a call the model never saw answered (a
#: call outside routing, a restart in between) is dropped after this.
KEEP_S = 3600.0

T = TypeVar("T")
Key = tuple[str, str]  # (the router's call id: the held leg's Uniqueid, agent)


@dataclass(frozen=True, slots=True)
class WrapUp:
    dims: tuple[Dim, ...]
    at: float  # when it ended
    wrap_s: float
    call: str = ""
    agent: str = ""

    @property
    def id(self) -> str:
        """The same on every server: its call and agent, and its end by Redis's clock."""
        return f"w:{self.call}:{self.agent}:{self.at!r}"


class WrapUps:
    def __init__(self, keep_s: float = KEEP_S) -> None:
        self._keep_s = keep_s
        self._open: dict[str, tuple[str, float]] = {}  # agent -> (call, wrap-up began)
        self._answered: dict[Key, tuple[float, tuple[Dim, ...]]] = {}  # when told, where it counts
        self._ended: dict[Key, tuple[float, float]] = {}  # wrap-ups over before their hold was told: (at, s)

    def answered(self, leg: str, agent: str, dims: tuple[Dim, ...], at: float) -> WrapUp | None:
        """``agent`` answered the hold on ``leg``, counted in ``dims``."""
        key = (leg, agent)
        ended = self._ended.pop(key, None)
        if ended is not None:
            return WrapUp(dims, *ended, *key)
        _prune(self._answered, at - self._keep_s)
        self._answered[key] = (at, dims)
        return None

    def status(self, agent: str, status: str, call: str | None, at: float) -> WrapUp | None:
        """The agent's next routing status, at ``at`` (epoch seconds)."""
        begun = self._open.get(agent)
        if begun is not None and status == "wrap_up" and call == begun[0]:
            return None  # extended: the same wrap-up goes on
        wrap = None
        if begun is not None:
            del self._open[agent]
            wrap = self._over((begun[0], agent), at, max(0.0, at - begun[1]))
        if status == "wrap_up" and call is not None and not call.startswith("device:"):
            self._open[agent] = (call, at)
        return wrap

    def _over(self, key: Key, at: float, wrap_s: float) -> WrapUp | None:
        answered = self._answered.pop(key, None)
        if answered is not None:
            return WrapUp(answered[1], at, round(wrap_s, 3), *key)
        _prune(self._ended, at - self._keep_s)
        self._ended[key] = (at, round(wrap_s, 3))
        return None

    def __len__(self) -> int:
        """Facts waiting for their other half, and wrap-ups going on."""
        return len(self._open) + len(self._answered) + len(self._ended)


def _prune(waiting: dict[Key, tuple[float, T]], before: float) -> None:
    """Drop what was told before ``before``: insertion order is (about) time order."""
    while waiting:
        key, (at, _) = next(iter(waiting.items()))
        if at >= before:
            return
        del waiting[key]
