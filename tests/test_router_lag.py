"""The event lag the sweep allows for (cti/router/lag.py): pure, by property."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cti.router.lag import BUCKET_MS, EventLag


@given(skew=st.integers(-3_600_000, 3_600_000), gaps=st.lists(st.integers(0, 5_000), min_size=1, max_size=50))
def test_a_clock_skew_alone_is_no_lag(skew: int, gaps: list[int]) -> None:
    lag, now = EventLag(), 1_700_000_000_000
    for gap in gaps:
        now += gap
        lag.saw((now - skew) / 1000, now)
    assert lag.lag_ms() == 0


@given(skew=st.integers(-3_600_000, 3_600_000), late=st.integers(0, 120_000))
def test_events_handled_late_are_late_by_that_much(skew: int, late: int) -> None:
    lag, now = EventLag(), 1_700_000_000_000
    lag.saw((now - skew) / 1000, now)  # on time once: the baseline
    now += late + 1_000
    lag.saw((now - late - skew) / 1000, now)
    assert abs(lag.lag_ms() - late) <= 1


def test_the_baseline_forgets_after_ten_minutes_and_no_stamp_is_no_lag() -> None:
    lag, now = EventLag(), 1_700_000_000_000
    lag.saw(None, now)
    assert lag.lag_ms() == 0
    lag.saw(now / 1000, now)
    now += 11 * BUCKET_MS
    lag.saw((now - 30_000) / 1000, now)  # a new constant offset: the host's clock was stepped
    assert lag.lag_ms() == 0
