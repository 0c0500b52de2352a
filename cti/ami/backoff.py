"""Reconnect delay policy: pure arithmetic, no sleeping (the client sleeps).

Kept apart from the I/O like redis-py's ``backoff.py`` so it can be tested with
Hypothesis and reused by the other connections (Redis, MQTT).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]

# 2**62 times any sane initial delay is already past any sane cap; stops float overflow.
_MAX_EXPONENT = 62


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential, capped delay with "equal jitter".

    ``delay(n)`` for the n-th consecutive failure (0 = first retry) is drawn from
    ``[base * (1 - jitter), base]`` with ``base = min(cap, initial * 2**n)``.
    Jitter spreads many CTI servers so they do not all hit a restarted Asterisk
    in the same instant; keeping ``jitter < 1`` keeps the delay above zero, so a
    persistent failure (a wrong secret) can never become a busy loop.
    """

    initial: float
    cap: float
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise ValueError(f"need 0 < initial <= cap, got initial={self.initial} cap={self.cap}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    def base(self, failures: int) -> float:
        """The un-jittered delay: doubles per failure, then stays at ``cap``."""
        n = min(max(failures, 0), _MAX_EXPONENT)
        return min(self.cap, self.initial * 2.0**n)

    def delay(self, failures: int, rnd: random.Random | float) -> float:
        """Seconds to wait before the next attempt; ``rnd`` is a generator or a sample in [0, 1]."""
        u = rnd.random() if isinstance(rnd, random.Random) else float(rnd)
        u = min(max(u, 0.0), 1.0)
        return self.base(failures) * (1.0 - self.jitter * u)
