"""The tests a ``condition`` node branches on, and their evaluation.

A test is one of: ``open: <schedule>`` (inside business hours, not a holiday),
``holiday: <schedule>``, a variable test (``var: vip_tier, ge: 1``; ``var: caller, matches: ...``)
or ``all`` / ``any`` / ``not`` of tests.  Evaluation is pure: variables, ``now`` and the flow's
schedules in, a boolean out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ivr_flows.schedule import Schedule
from ivr_flows.values import NAME_PATTERN, Value, as_number, as_text, regex_or_none

__all__ = ["Test", "evaluate"]

_KINDS: Final = ("open", "holiday", "var", "all", "any", "not")
_OPERATORS: Final = ("eq", "ne", "lt", "le", "gt", "ge", "in", "matches", "is_set")


class Test(BaseModel):
    """Exactly one kind of test; a variable test has exactly one operator."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    open: str | None = Field(None, description="schedule name: true inside its hours on a day that is not a holiday")
    holiday: str | None = Field(None, description="schedule name: true on one of its holidays")
    var: str | None = Field(None, pattern=NAME_PATTERN)
    eq: Value = None
    ne: Value = None
    lt: float | None = None
    le: float | None = None
    gt: float | None = None
    ge: float | None = None
    in_: list[Value] | None = Field(None, alias="in")
    matches: str | None = Field(None, description="a regular expression the whole text must match")
    is_set: bool | None = Field(None, description="true: the variable has a non-empty value")
    all_: list[Test] | None = Field(None, alias="all", min_length=1)
    any_: list[Test] | None = Field(None, alias="any", min_length=1)
    not_: Test | None = Field(None, alias="not")

    @field_validator("matches")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return regex_or_none(value)

    @model_validator(mode="after")
    def _one_kind(self) -> Test:
        given = self._given()
        kinds = [k for k in _KINDS if k in given]
        operators = [o for o in _OPERATORS if o in given]
        if len(kinds) != 1:
            raise ValueError(f"a test is exactly one of {', '.join(_KINDS)} (got {', '.join(kinds) or 'none'})")
        if kinds == ["var"] and len(operators) != 1:
            raise ValueError(f"a var test takes exactly one of {', '.join(_OPERATORS)} "
                             f"(got {', '.join(operators) or 'none'})")
        if kinds != ["var"] and operators:
            raise ValueError(f"{', '.join(operators)} only goes with var")
        return self

    def _given(self) -> set[str]:
        """The keys the flow wrote, by their YAML names (``eq: null`` is given, an absent ``eq`` is not)."""
        fields = type(self).model_fields
        return {fields[name].alias or name for name in self.model_fields_set}

    def schedules(self) -> list[str]:
        """Every schedule the test (and its sub-tests) names."""
        own = [s for s in (self.open, self.holiday) if s is not None]
        subs = [*(self.all_ or []), *(self.any_ or []), *([self.not_] if self.not_ else [])]
        return own + [name for sub in subs for name in sub.schedules()]


def _compare(test: Test, value: Value) -> bool:
    given = test._given()
    if "is_set" in given:
        return (as_text(value) != "") is bool(test.is_set)
    if "eq" in given or "ne" in given:
        other = test.eq if "eq" in given else test.ne
        a, b = as_number(value), as_number(other)
        same = a == b if a is not None and b is not None else as_text(value) == as_text(other)
        return same if "eq" in given else not same
    if test.in_ is not None:
        number = as_number(value)
        return any(
            (number == as_number(item)) if number is not None and as_number(item) is not None
            else as_text(value) == as_text(item)
            for item in test.in_
        )
    if test.matches is not None:
        return re.fullmatch(test.matches, as_text(value)) is not None
    number = as_number(value)
    if number is None:
        return False  # "unknown" is neither above nor below a threshold
    if test.lt is not None:
        return number < test.lt
    if test.le is not None:
        return number <= test.le
    if test.gt is not None:
        return number > test.gt
    return test.ge is not None and number >= test.ge


def evaluate(test: Test, variables: Mapping[str, Value], now: datetime, schedules: Mapping[str, Schedule]) -> bool:
    """True or false; a schedule the flow does not define is closed (the validator reports it)."""
    if test.open is not None:
        schedule = schedules.get(test.open)
        return schedule is not None and schedule.is_open(now)
    if test.holiday is not None:
        schedule = schedules.get(test.holiday)
        return schedule is not None and schedule.is_holiday(now)
    if test.all_ is not None:
        return all(evaluate(t, variables, now, schedules) for t in test.all_)
    if test.any_ is not None:
        return any(evaluate(t, variables, now, schedules) for t in test.any_)
    if test.not_ is not None:
        return not evaluate(test.not_, variables, now, schedules)
    assert test.var is not None  # guaranteed by _one_kind
    return _compare(test, variables.get(test.var))
