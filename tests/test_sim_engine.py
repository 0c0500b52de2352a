"""The pure simulation engine: determinism and call-model invariants under random scripts, both styles."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cti.ami.codec import Message
from cti.config import AgentConfig, SimConfig
from cti.sim.pbx import Caller, Pbx

AGENTS = [AgentConfig(id=f"a{i}", name=f"Agent{i}", interface=f"PJSIP/10{i:02d}") for i in range(3)]
LOCAL_AGENTS = [AgentConfig(id=f"a{i}", name=f"Agent{i}", interface=f"Local/10{i:02d}@sim-agents/n") for i in range(4)]
CFG = SimConfig(calls_per_minute=30, mean_talk_s=20, mean_patience_s=30, ring_s=2, wrapup_s=3, no_answer_prob=0.3)
LOCAL_CFG = SimConfig.all_features(calls_per_minute=30, mean_patience_s=30, queue_timeout_s=20)
CALLERS = [Caller(number="8613900000001", name="VIP One", vip=True), Caller(number="13800000001", name="Known")]
STYLES = {"pjsip": (CFG, AGENTS), "local": (LOCAL_CFG, LOCAL_AGENTS)}


def run(seed: int, ticks: list[float], start: float = 1_000_000.0, style: str = "pjsip") -> list[Message]:
    cfg, agents = STYLES[style]
    pbx = Pbx(
        config=cfg.model_copy(update={"seed": seed}), agents=agents, rng=random.Random(seed), now=start, callers=CALLERS
    )
    out: list[Message] = []
    t = start
    for dt in ticks:
        t += dt
        out.extend(pbx.advance(t))
    return out


@pytest.mark.parametrize("style", STYLES)
def test_deterministic_under_seed(style: str) -> None:
    ticks = [0.5] * 600
    a = [m.encode() for m in run(3, ticks, style=style)]
    b = [m.encode() for m in run(3, ticks, style=style)]
    assert a == b and len(a) > 100
    assert a != [m.encode() for m in run(4, ticks, style=style)]


def test_tick_rate_does_not_change_what_happens() -> None:
    """Timers run in time order whatever the tick: one big step and many small ones give the same events."""
    coarse = [m.encode() for m in run(5, [10.0] * 30, style="local")]
    fine = [m.encode() for m in run(5, [0.1] * 3000, style="local")]
    assert coarse == fine


def check_invariants(events: list[Message]) -> set[str]:
    """No event after a call's last channel hung up, one offer per agent at a time; returns the ended calls."""
    busy: dict[str, str] = {}  # interface -> linkedid ringing or talking
    live: dict[str, set[str]] = {}  # linkedid -> its channels (Uniqueid)
    ended: set[str] = set()
    joined: set[str] = set()
    for m in events:
        ev = m.event
        lid = m.get("Linkedid")
        if lid is not None and "Privilege" in m:
            assert lid not in ended, f"{ev} after call {lid} ended"
        if ev == "Newchannel":
            live.setdefault(m["Linkedid"], set()).add(m["Uniqueid"])
        elif ev == "Hangup":
            chans = live[m["Linkedid"]]
            chans.remove(m["Uniqueid"])
            if not chans:
                ended.add(m["Linkedid"])
        elif ev == "QueueCallerJoin":
            joined.add(m["Linkedid"])
        elif ev == "AgentCalled":
            assert m["Interface"] not in busy, "agent offered two calls"
            busy[m["Interface"]] = m["Linkedid"]
        elif ev == "AgentConnect":
            assert busy.get(m["Interface"]) == m["Linkedid"]
        elif ev in ("AgentComplete", "AgentRingNoAnswer"):
            assert busy.pop(m["Interface"]) == m["Linkedid"]
        elif ev == "DialEnd" and m.get("DialStatus") == "CANCEL":
            for iface, linkedid in list(busy.items()):
                if linkedid == m["Linkedid"]:
                    del busy[iface]
    return ended


ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.floats(0.01, 30)),
        st.tuples(st.just("call"), st.integers(0, 10)),
        st.tuples(st.just("pause"), st.integers(0, 7)),
        st.tuples(st.just("unpause"), st.integers(0, 7)),
        st.tuples(st.just("hangup"), st.integers(0, 50)),
        st.tuples(st.just("redirect"), st.integers(0, 50)),
    ),
    max_size=60,
)


@pytest.mark.parametrize("style", STYLES)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), script=ACTIONS)
def test_random_scripts_keep_invariants(style: str, seed: int, script: list[tuple[str, float]]) -> None:
    cfg, agents = STYLES[style]
    t = 1_000_000.0
    pbx = Pbx(config=cfg, agents=agents, rng=random.Random(seed), now=t, callers=CALLERS, random_arrivals=False)
    queues = list(pbx.queues)
    events: list[Message] = []
    placed = []
    for kind, arg in script:
        n = int(arg)
        if kind == "tick":
            t += arg
        elif kind == "call":
            placed.append(pbx.place_call(f"1380000{n:04d}", "X", now=t, priority=10 if n > 8 else 0))
        elif kind in ("pause", "unpause"):
            queue = queues[n // len(agents) % len(queues)] if n >= len(agents) else None
            pbx.pause(agents[n % len(agents)].id, kind == "pause", now=t, queue=queue)
        elif kind == "hangup" and pbx.channels:
            names = sorted(pbx.channels)
            pbx.hangup(names[n % len(names)], now=t)
        elif kind == "redirect" and pbx.calls:
            call = pbx.calls[sorted(pbx.calls)[n % len(pbx.calls)]]
            exten = queues[n % len(queues)] if n % 3 else "s"
            pbx.redirect(call.caller.name, "cti-hold" if exten == "s" else "xfer-queue", exten, now=t)
        events.extend(pbx.advance(t))
    events.extend(pbx.advance(t + 100_000))  # let everything finish: calls end by talk, timeout or patience
    ended = check_invariants(events)
    assert set(placed) <= ended, "every call ends"
    assert not pbx.calls and not pbx.channels
    assert {r["linkedid"] for r in pbx.records} == set(placed), "one record per call"
    assert all(p.call is None and p.direct is None for p in pbx.phones)
    assert all(not q.waiting for q in pbx.queues.values())
