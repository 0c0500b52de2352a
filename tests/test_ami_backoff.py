"""The reconnect delay policy: bounded, positive, growing to the cap."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cti.ami.backoff import Backoff

initials = st.floats(0.001, 10.0)
caps = st.floats(0.001, 600.0)
jitters = st.floats(0.0, 0.99)
failures = st.integers(-5, 10_000)
samples = st.floats(0.0, 1.0)


@given(initials, caps, jitters, failures, samples)
def test_never_negative_nor_zero_nor_above_cap(initial: float, cap: float, jitter: float, n: int, u: float) -> None:
    policy = Backoff(min(initial, cap), cap, jitter)
    d = policy.delay(n, u)
    assert 0 < d <= cap


@given(initials, caps, jitters, st.integers(0, 200), samples)
def test_grows_until_cap(initial: float, cap: float, jitter: float, n: int, u: float) -> None:
    policy = Backoff(min(initial, cap), cap, jitter)
    assert policy.delay(n + 1, u) >= policy.delay(n, u)
    assert policy.base(n + 1) == min(cap, 2 * policy.base(n))


@given(jitters, samples)
def test_reaches_the_cap(jitter: float, u: float) -> None:
    policy = Backoff(0.5, 30.0, jitter)
    assert policy.base(6) == 30.0
    assert policy.delay(1000, u) >= 30.0 * (1 - jitter)


def test_jitter_spreads_servers() -> None:
    policy = Backoff(1.0, 30.0)
    delays = {policy.delay(3, random.Random(seed)) for seed in range(20)}
    assert len(delays) > 1
    assert all(4.0 <= d <= 8.0 for d in delays)


@pytest.mark.parametrize(("initial", "cap", "jitter"), [(0, 1, 0.5), (2, 1, 0.5), (1, 2, 1.0), (1, 2, -0.1)])
def test_rejects_bad_policy(initial: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, cap, jitter)
