"""Wrap-ups joined to the holds agents answered, whichever of the two is told first."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cti.kpi.wrapups import WrapUp, WrapUps

DIMS = (("all", ""), ("entry", "billing"))


def test_a_wrap_up_runs_from_its_status_to_the_agents_next_one() -> None:
    wraps = WrapUps()
    assert wraps.answered("c1", "alice", DIMS, 100.0) is None
    assert wraps.status("alice", "on_call", "c1", 101.0) is None
    assert wraps.status("alice", "wrap_up", "c1", 130.0) is None
    assert wraps.status("alice", "wrap_up", "c1", 135.0) is None, "extended: the same wrap-up"
    assert wraps.status("alice", "ready", None, 142.5) == WrapUp(DIMS, 142.5, 12.5, "c1", "alice")
    assert len(wraps) == 0


def test_a_wrap_up_over_before_its_hold_is_told_waits_for_it() -> None:
    wraps = WrapUps()
    wraps.status("bob", "wrap_up", "c2", 10.0)
    assert wraps.status("bob", "not_ready", None, 13.0) is None
    assert wraps.answered("c2", "bob", DIMS, 5.0) == WrapUp(DIMS, 13.0, 3.0, "c2", "bob")


def test_what_is_not_a_routed_call_is_not_a_wrap_up() -> None:
    wraps = WrapUps(keep_s=60)
    wraps.status("bob", "wrap_up", "device:PJSIP/1002", 10.0)  # after a call outside routing
    assert wraps.status("bob", "ready", None, 20.0) is None
    wraps.status("bob", "wrap_up", "c9", 30.0)
    assert wraps.status("bob", "ready", None, 31.0) is None  # a call the model never saw answered
    wraps.answered("c10", "carol", DIMS, 40.0)
    wraps.status("dan", "wrap_up", "c11", 45.0)
    wraps.status("dan", "ready", None, 46.0)
    assert len(wraps) == 3
    wraps.answered("c12", "carol", DIMS, 200.0)  # a minute on: the stale ones go
    wraps.status("dan", "wrap_up", "c13", 201.0)
    wraps.status("dan", "ready", None, 202.0)
    assert len(wraps) == 2


calls = st.lists(st.tuples(st.floats(0, 600), st.floats(0, 120), st.booleans()), min_size=1, max_size=20)


@given(calls)
def test_every_wrap_up_is_found_once_in_either_order(spec: list[tuple[float, float, bool]]) -> None:
    """One agent, calls one after another: each answered hold gets its own wrap-up, once."""
    wraps, found, at = WrapUps(keep_s=1e9), [], 1000.0
    for n, (talk, wrap, hold_first) in enumerate(spec):
        leg, dims = f"c{n}", (("all", ""), ("entry", f"e{n}"))
        if hold_first:
            found.append(wraps.answered(leg, "alice", dims, at))
        wraps.status("alice", "on_call", leg, at)
        wraps.status("alice", "wrap_up", leg, at + talk)
        found.append(wraps.status("alice", "ready", None, at + talk + wrap))
        if not hold_first:
            found.append(wraps.answered(leg, "alice", dims, at))
        at += talk + wrap + 1
    got = [w for w in found if w is not None]
    assert [w.dims[1][1] for w in got] == [f"e{n}" for n in range(len(spec))]
    assert [w.wrap_s for w in got] == pytest.approx([w for _, w, _ in spec], abs=1e-3)  # ms, as the stream has it
    assert len(wraps) == 0
