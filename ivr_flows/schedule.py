"""Business hours: weekly opening times in a timezone, holidays, and make-up working days.

Time is always an argument (``now``, timezone-aware), never read from the clock, so a flow's
after-hours path is tested by passing 21:00 Shanghai time.  Make-up working days exist
because Chinese public holidays move weekends: a Sunday can be a working day, and it keeps
Monday's hours.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

__all__ = ["Schedule"]

_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN: Final = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")
_MAX_RANGE_DAYS: Final = 366

#: Minutes after midnight, start inclusive, end exclusive.
_Spans = tuple[tuple[int, int], ...]


def _days(spec: str) -> list[int]:
    """``mon-fri``, ``sat,sun``, ``fri-mon`` (wraps) -> weekday numbers, Monday = 0."""
    out: list[int] = []
    for part in (p.strip().lower() for p in spec.split(",")):
        first, _, last = part.partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise ValueError(f"{spec!r}: days are mon tue wed thu fri sat sun, a range like mon-fri, or a list")
        a = _DAYS.index(first)
        b = _DAYS.index(last) if last else a
        out.extend((a + i) % 7 for i in range((b - a) % 7 + 1))
    return out


def _spans(spec: str) -> _Spans:
    """``08:00-12:00, 13:00-18:00`` -> minute spans; ``24:00`` may end a span."""
    out: list[tuple[int, int]] = []
    for part in (p.strip() for p in spec.split(",")):
        m = _SPAN.match(part)
        if m is None:
            raise ValueError(f"{part!r}: opening hours are HH:MM-HH:MM, several separated by commas")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60 or start >= end:
            raise ValueError(f"{part!r}: a span runs forward within one day (write 22:00-24:00 and 00:00-02:00)")
        out.append((start, end))
    return tuple(out)


def _dates(items: list[date | str]) -> frozenset[date]:
    """Dates and ``YYYY-MM-DD..YYYY-MM-DD`` ranges (both ends included)."""
    out: set[date] = set()
    for item in items:
        if isinstance(item, date):
            out.add(item)
            continue
        first, sep, last = item.partition("..")
        try:
            a = date.fromisoformat(first.strip())
            b = date.fromisoformat(last.strip()) if sep else a
        except ValueError:
            raise ValueError(f"{item!r}: a date is YYYY-MM-DD, a range YYYY-MM-DD..YYYY-MM-DD") from None
        if not 0 <= (b - a).days <= _MAX_RANGE_DAYS:
            raise ValueError(f"{item!r}: a range runs forward and at most a year")
        out.update(a + timedelta(days=i) for i in range((b - a).days + 1))
    return frozenset(out)


class Schedule(BaseModel):
    """When a service is open, e.g. ``weekly: {mon-fri: "08:00-20:00"}`` in ``Asia/Shanghai``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str
    weekly: dict[str, str] = Field(description="days -> opening hours, e.g. mon-fri: 08:00-20:00")
    holidays: list[date | str] = Field(default_factory=list, description="closed all day: dates or a..b ranges")
    workdays: list[date | str] = Field(
        default_factory=list, description="make-up working days (a weekend that is worked): Monday's hours apply"
    )

    _zone: ZoneInfo = PrivateAttr()
    _week: dict[int, _Spans] = PrivateAttr()
    _holidays: frozenset[date] = PrivateAttr()
    _workdays: frozenset[date] = PrivateAttr()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (an IANA name such as Asia/Shanghai)") from None
        return value

    @field_validator("weekly")
    @classmethod
    def _parse_week(cls, value: dict[str, str]) -> dict[str, str]:
        for days, hours in value.items():
            _days(days)
            _spans(hours)
        return value

    @field_validator("holidays", "workdays")
    @classmethod
    def _parse_dates(cls, value: list[date | str]) -> list[date | str]:
        _dates(value)
        return value

    def model_post_init(self, context: object, /) -> None:
        week: dict[int, list[tuple[int, int]]] = {}
        for days, hours in self.weekly.items():
            for day in _days(days):
                week.setdefault(day, []).extend(_spans(hours))
        self._zone = ZoneInfo(self.timezone)
        self._week = {day: tuple(sorted(spans)) for day, spans in week.items()}
        self._holidays = _dates(self.holidays)
        self._workdays = _dates(self.workdays)

    def local(self, now: datetime) -> datetime:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (a naive time has no place on the calendar)")
        return now.astimezone(self._zone)

    def is_holiday(self, now: datetime) -> bool:
        return self.local(now).date() in self._holidays

    def is_open(self, now: datetime) -> bool:
        """Inside the day's opening hours, and the day is not a holiday."""
        local = self.local(now)
        day = local.date()
        if day in self._holidays:
            return False
        weekday = 0 if day in self._workdays else local.weekday()
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self._week.get(weekday, ()))
