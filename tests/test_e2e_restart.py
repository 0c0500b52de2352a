"""A server that dies and comes back resumes its calls from Redis and clears every screen that
went stale while it was down — real redis-server, mosquitto and the simulator."""

from __future__ import annotations

import asyncio

from cti.app import CtiServer
from cti.sim.server import AmiServer
from tests.e2e import Inbox, eventually, make_config, mqtt_listener


async def test_restart_ends_what_ended_while_down_and_keeps_what_is_up(redis_url: str, mqtt_port: int) -> None:
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port)
    inbox, subscribed = Inbox(), asyncio.Event()
    async with AmiServer(config=config.sim, agents=config.agents, port=0, random_arrivals=False) as sim, \
            asyncio.TaskGroup() as tg:
        config = config.model_copy(update={"ami": config.ami.model_copy(update={"port": sim.port})})
        listener = tg.create_task(mqtt_listener(mqtt_port, "cti/v1/agents/+/events", inbox, subscribed))
        await asyncio.wait_for(subscribed.wait(), 10)
        async with CtiServer(config) as first:
            await eventually(lambda: first.health()["ok"])
            gone = sim.sim.place_call("13800000001", "Wang Lei")
            stays = sim.sim.place_call("13800000002", "Zhang Wei")
            answered = [await inbox.wait_for(lambda e, c=c: e["type"] == "call.answered"
                                             and e["payload"]["linkedid"] == c) for c in (gone, stays)]
            agent_of = {e["payload"]["linkedid"]: e["agent"] for e in answered}
            await eventually(lambda: first.store.written >= 4 and not first.store._dirty)
        # The server is gone. Meanwhile one caller hangs up.
        sim.sim.hangup(sim.sim.pbx.calls[gone].caller.name)
        await eventually(lambda: gone not in sim.sim.pbx.calls)
        async with CtiServer(config) as second:
            await eventually(lambda: second.health()["ok"])
            ended = await inbox.wait_for(lambda e: e["type"] == "call.ended" and e["payload"]["linkedid"] == gone)
            assert ended["agent"] == agent_of[gone] and ended["payload"]["reason"] == "gone_at_resync"
            call = second.model.ended[gone]
            assert call.outcome == "answered" and call.agent_id == agent_of[gone], "its history survived"
            kept = second.model.calls[stays]
            assert kept.agent_id == agent_of[stays] and kept.talking is not None, "the live call is resumed"
            assert not [e for e in inbox.items if e["type"] == "call.ended" and e["payload"]["linkedid"] == stays]
            sim.sim.hangup(sim.sim.pbx.calls[stays].caller.name)
            ended = await inbox.wait_for(lambda e: e["type"] == "call.ended" and e["payload"]["linkedid"] == stays)
            assert ended["agent"] == agent_of[stays] and ended["payload"]["outcome"] == "answered"
        listener.cancel()
