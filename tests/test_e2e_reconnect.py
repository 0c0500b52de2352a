"""Done-when: the simulator drops the AMI socket mid-call; the server reconnects, resyncs,
and the call still ends right in the model and on the agent's screen.

The simulator runs on a :class:`ManualClock`: rings are answered, and nothing else times out,
only when a test moves the clock, so a slow machine changes no outcome. Resyncs are counted
by the server's own ``pipeline.resyncs`` and live-link resyncs are asked for explicitly.
"""

from __future__ import annotations

import asyncio

from cti.app import CtiServer
from tests.e2e import Inbox, ManualClock, eventually, make_config, mqtt_listener, running


async def resynced_after(server: CtiServer, done: int) -> None:
    """Wait until a resync after the ``done``-th has completed and the server is healthy again."""
    await eventually(lambda: server.pipeline.resyncs > done and server.health()["ok"])


async def test_call_that_ends_during_the_outage_ends_answered(redis_url: str, mqtt_port: int) -> None:
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port)
    clock = ManualClock()
    async with running(config, clock=clock) as (sim, server):
        inbox, subscribed = Inbox(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            listener = tg.create_task(mqtt_listener(mqtt_port, "cti/v1/agents/+/events", inbox, subscribed))
            await asyncio.wait_for(subscribed.wait(), 10)
            linkedid = sim.sim.place_call("13800000001", "Li Lei")
            await inbox.wait_for(lambda e: e["type"] == "call.offered")
            clock.advance(config.sim.ring_s)
            sim.sim.tick()  # the agent answers
            await inbox.wait_for(lambda e: e["type"] == "call.answered")
            resyncs = server.pipeline.resyncs

            assert sim.drop_connections() == 1
            caller = sim.sim.pbx.calls[linkedid].caller.name
            assert sim.sim.hangup(caller), "the caller hangs up while the server cannot see"
            assert linkedid in server.model.calls, "the model cannot know yet"

            await resynced_after(server, resyncs)
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
    clock = ManualClock()
    async with running(config, clock=clock) as (sim, server):
        inbox, subscribed = Inbox(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            listener = tg.create_task(mqtt_listener(mqtt_port, "cti/v1/agents/alice/events", inbox, subscribed))
            await asyncio.wait_for(subscribed.wait(), 10)
            for agent in ("alice", "bob"):
                sim.sim.pause(agent)
            linkedid = sim.sim.place_call("8613900000001", "VIP Wang", priority=10)
            await eventually(lambda: linkedid in server.model.calls and server.model.calls[linkedid].queue == "support")
            resyncs = server.pipeline.resyncs

            sim.drop_connections()
            sim.sim.pause("alice", paused=False)
            clock.advance(0.1)
            sim.sim.tick()  # Alice is rung and answers (ring_s=0) before the server is back
            assert sim.sim.pbx.calls[linkedid].state.name == "TALKING"
            await resynced_after(server, resyncs)

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
    """A live-link resync between every step of six calls' lives (waiting, ringing, talking, each
    hang-up) ends no call and changes nothing in the model: only the calls' own events do.

    The resyncs are the ones ``ami.resync_interval`` would run, asked for one at a time through
    ``AmiClient.request_resync()`` (the interval is 0, so no timer adds any). A Hangup sent while a
    snapshot is being taken reaches the model only after it: that snapshot already misses the
    call, and the next one must find it ended by its events, not end it with a gap."""
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port, ring_s=0.05,
                         mean_talk_s=3600, mean_patience_s=3600)
    config = config.model_copy(update={"ami": config.ami.model_copy(update={"resync_interval": 0})})
    clock = ManualClock()
    async with running(config, clock=clock) as (sim, server):
        login = server.ami.stats.connects
        first = server.pipeline.resyncs

        async def live_resync() -> None:
            done = server.pipeline.resyncs
            assert server.ami.request_resync()
            await eventually(lambda: server.pipeline.resyncs == done + 1)
            assert server.ami.stats.connects == login, "a resync on the live link, not after a reconnect"

        async def resyncs_change_nothing(times: int = 3) -> None:
            before = server.model.snapshot()
            for _ in range(times):
                await live_resync()
                assert server.model.snapshot() == before
                assert not server.model.ended

        placed = [sim.sim.place_call(f"1380000{i:04d}", "Caller", patience=3600) for i in range(6)]
        await eventually(lambda: all(c in server.model.calls and server.model.calls[c].queue == "support"
                                     for c in placed)
                         and sum(bool(c.offers) for c in server.model.calls.values()) == 2)
        await resyncs_change_nothing()  # six waiting, two of them ringing Alice and Bob

        clock.advance(config.sim.ring_s)
        sim.sim.tick()  # Alice and Bob answer
        await eventually(lambda: sum(server.model.calls[c].agent is not None for c in placed) == 2)
        answered = {c for c in placed if server.model.calls[c].agent is not None}
        await resyncs_change_nothing()  # two talking, four waiting

        for linkedid in placed:
            assert sim.sim.hangup(sim.sim.pbx.calls[linkedid].caller.name)
            await live_resync()  # right behind the Hangup: the snapshot may already miss this call
        await eventually(lambda: all(c in server.model.ended for c in placed))
        await live_resync()
        await live_resync()

        assert not server.model.calls
        assert server.pipeline.resyncs == first + 3 + 3 + len(placed) + 2
        for linkedid in placed:
            call = server.model.ended[linkedid]
            assert not call.seen_gap, "no call was ended by a resync"
            assert call.outcome == ("answered" if linkedid in answered else "abandoned")
        assert server.model.queues["support"].answered == 2
        assert server.model.queues["support"].abandoned == 4


async def test_resync_interval_resyncs_the_live_link(redis_url: str, mqtt_port: int) -> None:
    """``ami.resync_interval`` asks for the resyncs the test above drives by hand, on the same login."""
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port)
    config = config.model_copy(update={"ami": config.ami.model_copy(update={"resync_interval": 0.05})})
    async with running(config, clock=ManualClock()) as (_sim, server):
        login, done = server.ami.stats.connects, server.pipeline.resyncs
        await eventually(lambda: server.pipeline.resyncs >= done + 2)
        assert server.ami.stats.connects == login, "live-link resyncs, not reconnects"
