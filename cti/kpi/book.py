"""Call-centre KPIs from the call model's segments, over a rolling window and since local midnight.

Pure: :class:`KpiBook` is told facts (a queue visit whose wait ended, a handled visit, a call that
arrived) with their timestamps and answers figures; nothing here reads a clock or does I/O
(cti/kpi/live.py feeds it). Each queue visit counts once, in its own queue, with its own outcome:
a call that times out of one queue and is answered in another is one unanswered visit in the first
and one answered visit in the second. docs/kpis.md defines every figure.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

__all__ = ["Basis", "Counts", "KpiBook", "KpiRules", "VisitEnd", "dims_of"]

#: What the service level is a share of: answered visits (Asternic, Wazo's "QoS", app_queue's
#: ServicelevelPerf), offered visits (NethVoice), or app_queue's ServicelevelPerf2 (abandons inside
#: the threshold count as good, over answered + abandoned).
Basis = Literal["answered", "offered", "sl2"]
#: Why a caller left without an agent, counted apart from abandons: app_queue's reasons, and CTI
#: routing's hand-over to its fallback queue.
UNANSWERED_REASONS = ("timeout", "leaveempty", "joinempty", "full", "fallback")
SLOT_S = 900  # the day's chart: one point per 15 minutes
Dim = tuple[str, str]  # ("all", ""), ("queue", "support"), ("tier", "vip2"), ("entry", "hotline"), ("skill", "billing")


@dataclass(frozen=True, slots=True)
class KpiRules:
    service_level_s: float = 20.0
    service_level_by_queue: Mapping[str, float] = field(default_factory=dict)
    basis: Basis = "answered"
    short_abandon_s: float = 5.0  # abandons quicker than this are not counted as offered or abandoned
    window_s: float = 900.0
    timezone: str = "UTC"

    def threshold(self, queue: str) -> float:
        return self.service_level_by_queue.get(queue, self.service_level_s)


@dataclass(frozen=True, slots=True)
class VisitEnd:
    """A wait that is over: answered (or answered and transferred on), abandoned, or let go. A visit of
    an app_queue ``queue``, or (CTI routing mode) of the router's ``entry`` point, with the skills it
    asked for."""

    queue: str | None
    at: float  # when the wait ended
    outcome: str  # answered, transferred, abandoned, unanswered
    wait_s: float
    reason: str | None = None
    tier: str = "standard"
    entry: str | None = None
    skills: tuple[str, ...] = ()

    @property
    def place(self) -> str:
        """What its threshold is looked up by: the queue, else the entry point."""
        return self.queue or self.entry or ""

    @property
    def dims(self) -> tuple[Dim, ...]:
        return dims_of(self.queue, self.tier, self.entry, self.skills)


def dims_of(queue: str | None, tier: str, entry: str | None = None, skills: tuple[str, ...] = ()) -> tuple[Dim, ...]:
    dims: list[Dim] = [("all", ""), ("tier", tier)]
    if queue is not None:
        dims.append(("queue", queue))
    if entry is not None:
        dims.append(("entry", entry))
    dims.extend(("skill", skill) for skill in skills)
    return tuple(dims)


@dataclass(slots=True)
class Counts:
    offered: int = 0
    answered: int = 0
    answered_in_sl: int = 0
    abandoned: int = 0
    abandoned_in_sl: int = 0
    short_abandons: int = 0
    unanswered: dict[str, int] = field(default_factory=dict)  # by reason (timeout, leaveempty, ..., other)
    answered_wait_s: float = 0.0
    handled: int = 0
    talk_s: float = 0.0
    wrap_ups: int = 0
    wrap_s: float = 0.0
    arrivals: int = 0
    repeats: int = 0

    def add(self, other: Counts, sign: int = 1) -> None:
        self.offered += sign * other.offered
        self.answered += sign * other.answered
        self.answered_in_sl += sign * other.answered_in_sl
        self.abandoned += sign * other.abandoned
        self.abandoned_in_sl += sign * other.abandoned_in_sl
        self.short_abandons += sign * other.short_abandons
        for reason, n in other.unanswered.items():
            left = self.unanswered.get(reason, 0) + sign * n
            if left:
                self.unanswered[reason] = left
            else:
                self.unanswered.pop(reason, None)
        self.answered_wait_s += sign * other.answered_wait_s
        self.handled += sign * other.handled
        self.talk_s += sign * other.talk_s
        self.wrap_ups += sign * other.wrap_ups
        self.wrap_s += sign * other.wrap_s
        self.arrivals += sign * other.arrivals
        self.repeats += sign * other.repeats

    def figures(self, basis: Basis) -> dict[str, Any]:
        """The counts and the rates made of them; a rate with nothing to divide by is None."""
        if basis == "answered":
            good, over = self.answered_in_sl, self.answered
        elif basis == "offered":
            good, over = self.answered_in_sl, self.offered
        else:
            good, over = self.answered_in_sl + self.abandoned_in_sl, self.answered + self.abandoned
        return {
            "offered": self.offered, "answered": self.answered, "abandoned": self.abandoned,
            "short_abandons": self.short_abandons, "unanswered": dict(sorted(self.unanswered.items())),
            "service_level": _ratio(good, over), "answer_rate": _ratio(self.answered, self.offered),
            "abandon_rate": _ratio(self.abandoned, self.offered),
            "asa_s": _ratio(self.answered_wait_s, self.answered, 3),
            "aht_s": _ratio(self.talk_s + self.wrap_s, self.handled, 3), "handled": self.handled,
            "att_s": _ratio(self.talk_s, self.handled, 3), "acw_s": _ratio(self.wrap_s, self.wrap_ups, 3),
            "wrap_ups": self.wrap_ups,
            "arrivals": self.arrivals, "repeat_rate": _ratio(self.repeats, self.arrivals),
        }


def _ratio(a: float, b: float, digits: int = 4) -> float | None:
    return round(a / b, digits) if b else None


class KpiBook:
    """Counts per dimension: added to the day's 15-minute slot of the fact's time and to the rolling
    window, from which it is taken out again once older than the window. Facts may arrive a little out
    of order (a handled visit is told when its call ends): the window is a heap by time."""

    def __init__(self, rules: KpiRules) -> None:
        self.rules = rules
        self._zone = ZoneInfo(rules.timezone)
        self._window: list[tuple[float, int, tuple[Dim, ...], Counts]] = []  # a heap: the oldest first
        self._order = itertools.count()
        self._rolling: dict[Dim, Counts] = {}
        self._day: str | None = None  # local date of the slots
        self._slots: dict[int, dict[Dim, Counts]] = {}  # slot start (epoch s) -> counts
        self._latest = 0.0

    # --- facts -----------------------------------------------------------------------------------

    def visit_ended(self, visit: VisitEnd) -> None:
        delta = Counts()
        if visit.outcome in ("answered", "transferred"):
            delta.offered = delta.answered = 1
            delta.answered_wait_s = visit.wait_s
            delta.answered_in_sl = int(visit.wait_s <= self.rules.threshold(visit.place))
        elif visit.outcome == "abandoned":
            if visit.wait_s < self.rules.short_abandon_s:
                delta.short_abandons = 1
            else:
                delta.offered = delta.abandoned = 1
                delta.abandoned_in_sl = int(visit.wait_s <= self.rules.threshold(visit.place))
        else:
            delta.offered = 1
            reason = visit.reason if visit.reason in UNANSWERED_REASONS else "other"
            delta.unanswered = {reason: 1}
        self._add(visit.at, visit.dims, delta)

    def handled(self, dims: tuple[Dim, ...], at: float, talk_s: float) -> None:
        """An answered visit's call is over: its talk is its handle time, with the wrap-up after it."""
        self._add(at, dims, Counts(handled=1, talk_s=talk_s))

    def wrapped_up(self, dims: tuple[Dim, ...], at: float, wrap_s: float) -> None:
        """The agent's after-call work on a handled visit is over (CTI routing: the router's wrap-up)."""
        self._add(at, dims, Counts(wrap_ups=1, wrap_s=wrap_s))

    def arrived(self, at: float, *, repeat: bool) -> None:
        """A call reached a queue; ``repeat``: its number called within the repeat window of it."""
        self._add(at, (("all", ""),), Counts(arrivals=1, repeats=int(repeat)))

    def _add(self, at: float, dims: tuple[Dim, ...], delta: Counts) -> None:
        self._roll_day(max(at, self._latest))
        self._latest = max(self._latest, at)
        if self._day is not None and self._local_date(at) == self._day:
            slot = self._slots.setdefault(int(at // SLOT_S * SLOT_S), {})
            for dim in dims:
                slot.setdefault(dim, Counts()).add(delta)
        heapq.heappush(self._window, (at, next(self._order), dims, delta))
        for dim in dims:
            self._rolling.setdefault(dim, Counts()).add(delta)

    # --- figures ---------------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Take out of the rolling window what is older than it, and start a new day at midnight."""
        now = max(now, self._latest)
        self._roll_day(now)
        edge = now - self.rules.window_s
        window, rolling = self._window, self._rolling
        while window and window[0][0] < edge:
            _, _, dims, delta = heapq.heappop(window)
            for dim in dims:
                rolling[dim].add(delta, -1)

    def figures(self, now: float) -> dict[str, Any]:
        """``{"window_s", "day", "rolling": {kind: {value: figures}}, "today": {...}, "chart": [...]}``."""
        self.expire(now)
        basis = self.rules.basis
        today: dict[Dim, Counts] = {("all", ""): Counts()}  # the totals are there even before the first call
        for slot in self._slots.values():
            for dim, counts in slot.items():
                today.setdefault(dim, Counts()).add(counts)
        chart = []
        for start in sorted(self._slots):
            all_ = self._slots[start].get(("all", ""))
            if all_ is not None:
                f = all_.figures(basis)
                chart.append({"start": start, "service_level": f["service_level"], "offered": f["offered"]})
        return {"window_s": self.rules.window_s, "day": self._day, "basis": basis,
                "rolling": _by_kind({("all", ""): Counts(), **self._rolling}, basis),
                "today": _by_kind(today, basis), "chart": chart}

    @property
    def latest(self) -> float:
        """The time of the newest fact: "now" never goes behind it (a clock a little behind Asterisk's)."""
        return self._latest

    def midnight(self, at: float) -> float:
        """The start of ``at``'s local day."""
        return datetime.fromisoformat(self._local_date(at)).replace(tzinfo=self._zone).timestamp()

    def _local_date(self, at: float) -> str:
        return datetime.fromtimestamp(at, self._zone).date().isoformat()

    def _roll_day(self, now: float) -> None:
        day = self._local_date(now)
        if day != self._day:
            self._day = day
            midnight = self.midnight(now)
            self._slots = {s: c for s, c in self._slots.items() if s >= midnight}


def _by_kind(counts: Mapping[Dim, Counts], basis: Basis) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (kind, value), c in sorted(counts.items()):
        out.setdefault(kind, {})[value] = c.figures(basis)
    return out
