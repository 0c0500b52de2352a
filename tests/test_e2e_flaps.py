"""The AMI link cut every 10 s for a minute of calls, events lost in every gap: each call still
ends with the outcome and agent the simulator's own record gives, and every agent who answered
is told it ended. The simulator runs on a clock the test moves, so the gaps are exact."""

from __future__ import annotations

import asyncio
import random

from cti.config import AgentConfig
from tests.e2e import Inbox, ManualClock, eventually, make_config, mqtt_listener, running

AGENTS = [AgentConfig(id=n.lower(), name=n, interface=f"Local/{1001 + i}@sim-agents/n", extension=str(1001 + i))
          for i, n in enumerate(["Alice", "Bob", "Chen"])]


async def test_a_link_cut_every_ten_seconds_loses_no_outcome(redis_url: str, mqtt_port: int) -> None:
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port, ring_s=1, mean_talk_s=6, mean_patience_s=15,
                         channel_style="local")
    config = config.model_copy(update={"agents": AGENTS})
    clock, rnd = ManualClock(), random.Random(7)
    async with running(config, clock=clock) as (sim, server):
        inbox, subscribed = Inbox(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            listener = tg.create_task(mqtt_listener(mqtt_port, "cti/v1/agents/+/events", inbox, subscribed))
            await asyncio.wait_for(subscribed.wait(), 10)
            placed: list[str] = []

            def settled() -> bool:
                return sim.bytes_sent == server.ami.stats.session_bytes and server.ami.pending_events == 0
            for second in range(60):
                if second % 10 == 9:  # the link drops; two seconds of calls happen unseen
                    resyncs = server.pipeline.resyncs
                    assert sim.drop_connections() >= 1
                    for _ in range(8):
                        clock.advance(0.25)
                        sim.sim.tick()
                    await eventually(lambda r=resyncs: server.pipeline.resyncs > r and server.health()["ok"])
                    continue
                if rnd.random() < 0.6:
                    placed.append(sim.sim.place_call(f"1380000{len(placed):04d}", "Caller",
                                                     patience=rnd.uniform(2, 12)))
                for _ in range(4):
                    clock.advance(0.25)
                    sim.sim.tick()
                    await asyncio.sleep(0)  # let the server read what the simulator wrote
                await eventually(settled)  # everything written so far is read and applied
            for linkedid in placed:  # the rest hang up
                call = sim.sim.pbx.calls.get(linkedid)
                if call is not None:
                    sim.sim.hangup(call.caller.name)
            clock.advance(1)
            sim.sim.tick()
            await eventually(lambda: all(c in server.model.ended for c in placed), timeout=20)
            await asyncio.sleep(0.5)  # the last pushes reach the broker
            listener.cancel()
    records = {r["linkedid"]: r for r in sim.sim.pbx.records}
    gaps = 0
    for linkedid in placed:
        record, call = records[linkedid], server.model.ended[linkedid]
        gaps += call.seen_gap
        assert (call.outcome, call.agent) == (record["outcome"], record["agent"]), (linkedid, call.segments)
        if record["agent"]:
            agent = next(a.id for a in AGENTS if a.name == record["agent"])
            assert any(e["type"] == "call.ended" and e["agent"] == agent and e["payload"]["linkedid"] == linkedid
                       for e in inbox.items), f"{agent} was not told {linkedid} ended"
    assert gaps, "some calls lived through a cut"
    assert server.ami.stats.reconnects >= 5
