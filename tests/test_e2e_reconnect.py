"""Done-when: the simulator drops the AMI socket mid-call; the server reconnects, resyncs,
and the call still ends right in the model and on the agent's screen."""

from __future__ import annotations

import asyncio

from cti.metrics import RESYNCS
from tests.e2e import Inbox, eventually, make_config, mqtt_listener, running


async def test_call_that_ends_during_the_outage_ends_answered(redis_url: str, mqtt_port: int) -> None:
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port)
    async with running(config) as (sim, server):
        inbox, subscribed = Inbox(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            listener = tg.create_task(mqtt_listener(mqtt_port, "cti/v1/agents/+/events", inbox, subscribed))
            await asyncio.wait_for(subscribed.wait(), 10)
            linkedid = sim.sim.place_call("13800000001", "Li Lei")
            await inbox.wait_for(lambda e: e["type"] == "call.answered")
            resyncs = RESYNCS._value.get()

            assert sim.drop_connections() == 1
            caller = sim.sim.pbx.calls[linkedid].caller.name
            assert sim.sim.hangup(caller), "the caller hangs up while the server cannot see"
            assert linkedid in server.model.calls, "the model cannot know yet"

            await eventually(lambda: RESYNCS._value.get() > resyncs and server.health()["ok"])
            assert linkedid not in server.model.calls
            call = server.model.ended[linkedid]
            assert call.outcome == "answered" and call.seen_gap and call.agent in ("Alice", "Bob")
            ended = await inbox.wait_for(lambda e: e["type"] == "call.ended" and e["payload"]["linkedid"] == linkedid)
            assert ended["payload"]["outcome"] == "answered" and ended["payload"]["reason"] == "gone_at_resync"
            assert server.model.queues["support"].answered == 1
            listener.cancel()


async def test_call_answered_during_the_outage_is_known_answered_after_resync(
    redis_url: str, mqtt_port: int
) -> None:
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port, ring_s=0)
    async with running(config) as (sim, server):
        inbox, subscribed = Inbox(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            listener = tg.create_task(mqtt_listener(mqtt_port, "cti/v1/agents/alice/events", inbox, subscribed))
            await asyncio.wait_for(subscribed.wait(), 10)
            for agent in ("alice", "bob"):
                sim.sim.pause(agent)
            linkedid = sim.sim.place_call("8613900000001", "VIP Wang", priority=10)
            await eventually(lambda: linkedid in server.model.calls and server.model.calls[linkedid].queue == "support")
            resyncs = RESYNCS._value.get()

            sim.drop_connections()
            sim.sim.pause("alice", paused=False)
            sim.sim.tick()  # Alice is rung and answers (ring_s=0) before the server is back
            assert sim.sim.pbx.calls[linkedid].state.name == "TALKING"
            await eventually(lambda: RESYNCS._value.get() > resyncs and server.health()["ok"])

            assert list(server.model.calls) == [linkedid], "one live call, not a duplicate"
            call = server.model.calls[linkedid]
            assert (call.caller_num, call.queue, call.agent_id) == ("8613900000001", "support", "alice")
            answered = await inbox.wait_for(lambda e: e["type"] == "call.answered")
            assert answered["payload"]["while_disconnected"] is True
            assert answered["payload"]["customer"]["vip_tier"] == 3

            sim.sim.hangup(sim.sim.pbx.calls[linkedid].caller.name)
            await eventually(lambda: linkedid in server.model.ended)
            assert server.model.ended[linkedid].outcome == "answered"
            assert server.model.queues["support"].answered == 1
            await inbox.wait_for(lambda e: e["type"] == "call.ended")
            listener.cancel()


async def test_frequent_live_resyncs_do_not_disturb_calls(redis_url: str, mqtt_port: int) -> None:
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port, ring_s=0.05)
    config = config.model_copy(update={"ami": config.ami.model_copy(update={"resync_interval": 0.03})})
    async with running(config) as (sim, server):
        resyncs = RESYNCS._value.get()
        placed = [sim.sim.place_call(f"1380000{i:04d}", "Caller") for i in range(6)]
        await eventually(lambda: all(server.model.calls.get(c) and server.model.calls[c].agent for c in placed[:2]))
        for linkedid in placed:
            if linkedid in sim.sim.pbx.calls:
                sim.sim.hangup(sim.sim.pbx.calls[linkedid].caller.name)
        await eventually(lambda: all(c in server.model.ended for c in placed))
        assert RESYNCS._value.get() > resyncs + 3, "the periodic check ran meanwhile"
        outcomes = sorted(server.model.ended[c].outcome or "" for c in placed)
        assert outcomes == ["abandoned"] * 4 + ["answered"] * 2
        assert not any(server.model.ended[c].seen_gap for c in placed), "no call was ended by a resync"
