"""The pure simulation engine: determinism and call-model invariants under random scripts."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cti.ami.codec import Message
from cti.config import AgentConfig, SimConfig
from cti.sim.pbx import Caller, Pbx

AGENTS = [AgentConfig(id=f"a{i}", name=f"Agent{i}", interface=f"PJSIP/10{i:02d}") for i in range(3)]
CFG = SimConfig(calls_per_minute=30, mean_talk_s=20, mean_patience_s=30, ring_s=2, wrapup_s=3, no_answer_prob=0.3)
CALLERS = [Caller(number="8613900000001", name="VIP One", vip=True), Caller(number="13800000001", name="Known")]


def run(seed: int, ticks: list[float], start: float = 1_000_000.0) -> list[Message]:
    pbx = Pbx(
        config=CFG.model_copy(update={"seed": seed}), agents=AGENTS, rng=random.Random(seed), now=start, callers=CALLERS
    )
    out: list[Message] = []
    t = start
    for dt in ticks:
        t += dt
        out.extend(pbx.advance(t))
    return out


def test_deterministic_under_seed() -> None:
    ticks = [0.5] * 600
    a = [m.encode() for m in run(3, ticks)]
    b = [m.encode() for m in run(3, ticks)]
    assert a == b and len(a) > 100
    assert a != [m.encode() for m in run(4, ticks)]


def check_invariants(events: list[Message]) -> None:
    busy: dict[str, str] = {}  # interface -> linkedid ringing or talking
    ended: set[str] = set()
    joined: set[str] = set()
    for m in events:
        ev = m.event
        if "Linkedid" in m:
            assert m["Linkedid"] not in ended or (ev == "Hangup" and m["Uniqueid"] != m["Linkedid"]), (
                "event after the call ended"
            )
        if ev == "QueueCallerJoin":
            joined.add(m["Linkedid"])
        elif ev == "AgentCalled":
            assert m["Interface"] not in busy, "agent offered two calls"
            busy[m["Interface"]] = m["Linkedid"]
        elif ev in ("AgentConnect",):
            assert busy.get(m["Interface"]) == m["Linkedid"]
        elif ev in ("AgentComplete", "AgentRingNoAnswer"):
            assert busy.pop(m["Interface"]) == m["Linkedid"]
        elif ev == "DialEnd" and m["DialStatus"] == "CANCEL":
            busy.pop(m["Interface"] if "Interface" in m else next(k for k, v in busy.items() if v == m["Linkedid"]))
        elif ev == "Hangup" and m["Uniqueid"] == m["Linkedid"]:
            assert m["Linkedid"] not in ended, "call ended twice"
            ended.add(m["Linkedid"])
    assert ended <= joined


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    script=st.lists(
        st.one_of(
            st.tuples(st.just("tick"), st.floats(0.01, 30)),
            st.tuples(st.just("call"), st.integers(0, 10)),
            st.tuples(st.just("pause"), st.integers(0, 2)),
            st.tuples(st.just("unpause"), st.integers(0, 2)),
            st.tuples(st.just("hangup"), st.integers(0, 50)),
        ),
        max_size=60,
    ),
)
def test_random_scripts_keep_invariants(seed: int, script: list[tuple[str, float]]) -> None:
    t = 1_000_000.0
    pbx = Pbx(config=CFG, agents=AGENTS, rng=random.Random(seed), now=t, callers=CALLERS, random_arrivals=False)
    events: list[Message] = []
    for kind, arg in script:
        if kind == "tick":
            t += arg
        elif kind == "call":
            pbx.place_call(f"1380000{int(arg):04d}", "X", now=t, priority=10 if arg > 8 else 0)
        elif kind in ("pause", "unpause"):
            pbx.pause(AGENTS[int(arg)].id, kind == "pause", now=t)
        elif kind == "hangup" and pbx.channels:
            names = sorted(pbx.channels)
            pbx.hangup(names[int(arg) % len(names)], now=t)
        events.extend(pbx.advance(t))
    events.extend(pbx.advance(t + 100_000))  # let everything finish: calls end by talk or patience
    check_invariants(events)
    members = {m.interface: m for m in pbx.members}
    assert all(m.call is None or m.call.linkedid in pbx.calls for m in members.values())
