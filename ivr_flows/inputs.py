"""What happened on the channel, fed back to the interpreter with :func:`ivr_flows.step`.

``Digits`` answers a ``WaitForDigit`` (one key) or a ``GetData`` (the entry without the ``#``;
empty when the caller pressed only ``#``), and a key that interrupted a ``Play``.  ``Timeout``
is silence.  ``LookupResult`` answers a ``Lookup``.  ``Hangup`` may come at any time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Digits", "Hangup", "Input", "LookupResult", "Timeout"]


@dataclass(frozen=True, slots=True)
class Digits:
    digits: str


@dataclass(frozen=True, slots=True)
class Timeout:
    pass


@dataclass(frozen=True, slots=True)
class LookupResult:
    """The customer record (``cti.directory.Customer.model_dump()``), or None: unknown, or the lookup failed."""

    record: Mapping[str, object] | None


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


Input = Digits | Timeout | LookupResult | Hangup
