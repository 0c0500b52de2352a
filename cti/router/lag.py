"""How far behind its AMI stream a server handles events.

A server's sweep takes a reservation no ``DialBegin`` followed within ``reservation_timeout_s`` for
stale. Measured by the server's own clock alone, a server that is behind its event stream (a burst, a
busy core) would expire its own offers whose dial is already in its backlog, offer the call again and
ring a second phone. So the sweep looks back that much further (:meth:`EventLag.lag_ms`), and the
reconciliation against the phones' device states waits that much longer (``Rules.behind``).

The lag is the latest event's age by its ``Timestamp`` less the smallest age seen over the last minutes:
Asterisk's clock and this host's may differ by a constant, and a server on time handles some event at
once every so often. No ``Timestamp`` (``timestampevents = no``), no lag: the sweep is as it was.
"""

from __future__ import annotations

from collections import deque
from typing import Final

BUCKET_MS: Final = 60_000
BUCKETS: Final = 10  # the baseline is the smallest age of the last ten minutes


class EventLag:
    """Pure: fed each handled event's age, asked for the lag at each sweep."""

    def __init__(self) -> None:
        self._latest_ms: int | None = None
        self._mins: deque[tuple[int, int]] = deque()  # (bucket, smallest age in it), oldest first

    def saw(self, stamp_s: float | None, now_ms: int) -> None:
        """One event handled at ``now_ms``, stamped ``stamp_s`` (epoch seconds) by Asterisk."""
        if stamp_s is None:
            return
        age = now_ms - round(stamp_s * 1000)
        self._latest_ms = age
        bucket = now_ms // BUCKET_MS
        if self._mins and self._mins[-1][0] == bucket:
            if age < self._mins[-1][1]:
                self._mins[-1] = (bucket, age)
        else:
            self._mins.append((bucket, age))
        while self._mins[0][0] <= bucket - BUCKETS:
            self._mins.popleft()

    def lag_ms(self) -> int:
        if self._latest_ms is None:
            return 0
        return max(0, self._latest_ms - min(age for _, age in self._mins))
