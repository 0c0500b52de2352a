"""Flow variables and the ``${name}`` templates that read them.

One place decides how a variable turns into text (prompts, channel variables, routing
requirements) and into a number (comparisons, priority), so a flow compares ``vip_tier``
the same way whether it came from the directory (an int) or a caller's keys (a string).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

__all__ = ["NAME_PATTERN", "TEMPLATE", "Value", "as_number", "as_text", "references", "resolve", "resolve_value"]

#: What a flow variable may hold: what YAML and the customer directory give.
Value = str | int | float | bool | None

#: Variable names: short identifiers, so they fit channel-variable and JSON keys unchanged.
NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
TEMPLATE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")


def as_text(value: Value) -> str:
    """``None`` is empty, booleans are ``true``/``false`` (as YAML writes them), numbers as Python prints them."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_number(value: Value) -> float | None:
    """A number, or None when the value is not one (booleans are not numbers here)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value.strip())
    except ValueError:
        return None


def resolve(template: str, variables: Mapping[str, Value]) -> str:
    """Replace every ``${name}`` by the variable's text; an unset variable is empty."""
    return TEMPLATE.sub(lambda m: as_text(variables.get(m.group(1))), template)


def resolve_value(value: Value, variables: Mapping[str, Value]) -> Value:
    """Like :func:`resolve`, but ``"${vip_tier}"`` alone keeps the variable's own type (an int stays an int)."""
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = TEMPLATE.fullmatch(value)
    if whole is not None:
        return variables.get(whole.group(1))
    return resolve(value, variables)


def references(value: Value) -> list[str]:
    """The variable names a template reads."""
    return TEMPLATE.findall(value) if isinstance(value, str) else []


def regex_or_none(value: str | None) -> str | None:
    """A pydantic check: a pattern in a flow must compile (an admin's typo fails at load, not mid-call)."""
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
    return value
