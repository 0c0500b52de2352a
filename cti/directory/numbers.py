"""Phone-number normalisation: the one place that decides what "the same number" means.

Pure and total, so it is property-tested and shared by the importer (keys) and
the lookup (queries).  Caller IDs arrive however the trunk formats them:
``+86 138-0000-0001``, ``008613800000001``, ``013800000001`` (national), so the
store matches exactly first and then on the last :data:`SUFFIX_DIGITS` digits.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_DIGITS", "SUFFIX_DIGITS", "normalise_number", "number_suffix"]

#: National numbers are 9+ digits in the markets we serve; the last 9 identify a line across formats.
SUFFIX_DIGITS: Final = 9
#: E.164 allows 15; leave room for an international prefix someone forgot to strip.
MAX_DIGITS: Final = 20

_SEPARATORS: Final = re.compile(r"[\s\-.()]")
_DIGITS: Final = re.compile(r"[0-9]+")


def normalise_number(raw: str | None) -> str | None:
    """ASCII digits with separators and a leading ``+`` or ``00`` removed; None if it is not a phone number.

    >>> normalise_number("+86 (138) 0000-0001")
    '8613800000001'
    >>> normalise_number("0086.138.0000.0001")
    '8613800000001'
    >>> normalise_number("<unknown>") is None
    True
    """
    if raw is None:
        return None
    text = _SEPARATORS.sub("", raw)
    if text.startswith("+"):
        text = text[1:]
    elif text.startswith("00"):
        text = text[2:]
    if not text or len(text) > MAX_DIGITS or not _DIGITS.fullmatch(text):
        return None
    return text


def number_suffix(number: str) -> str | None:
    """The fallback key of a normalised number, or None when it is too short to identify a line."""
    return number[-SUFFIX_DIGITS:] if len(number) >= SUFFIX_DIGITS else None
