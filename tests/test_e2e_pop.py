"""Done-when: an agent subscribed over MQTT and over WebSocket gets call.offered, carrying the
customer record from Redis, before call.answered — real redis-server, mosquitto, simulator."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.e2e import Inbox, make_config, mqtt_listener, running, ws_listener


async def test_screen_pop_over_mqtt_and_websocket(redis_url: str, mqtt_port: int) -> None:
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port)
    async with running(config) as (sim, server):
        mqtt_inbox, ws_inbox = Inbox(), Inbox()
        subscribed, alice_open, bob_open = asyncio.Event(), asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            listeners = [
                tg.create_task(mqtt_listener(mqtt_port, "cti/v1/agents/+/events", mqtt_inbox, subscribed)),
                tg.create_task(ws_listener(f"http://127.0.0.1:{server.http_port}/ws/agents/alice", ws_inbox,
                                           alice_open)),
                tg.create_task(ws_listener(f"http://127.0.0.1:{server.http_port}/ws/agents/bob", ws_inbox, bob_open)),
            ]
            async with asyncio.timeout(10):  # both sockets: the pop may go to either agent
                for ready in (subscribed, alice_open, bob_open):
                    await ready.wait()
            linkedid = sim.sim.place_call("8613900000001", "VIP Wang", priority=10)

            for inbox in (mqtt_inbox, ws_inbox):
                offered = await inbox.wait_for(lambda e: e["type"] == "call.offered"
                                               and e["payload"]["linkedid"] == linkedid)
                answered = await inbox.wait_for(lambda e: e["type"] == "call.answered"
                                                and e["payload"]["linkedid"] == linkedid)
                assert inbox.types(linkedid)[:2] == ["call.offered", "call.answered"]
                assert offered["v"] == 1 and offered["agent"] in {"alice", "bob"}
                assert answered["agent"] == offered["agent"] and answered["seq"] > offered["seq"]
                payload = offered["payload"]
                assert payload["caller"] == "8613900000001" and payload["queue"] == "support"
                assert payload["position"] == 1 and payload["wait_so_far_s"] >= 0
                customer = payload["customer"]
                assert customer["vip_tier"] == 3 and customer["account_manager"]
                assert customer["name"] and customer["company"]
            def pops(inbox: Inbox) -> set[str]:
                return {e["id"] for e in inbox.items if e["type"] in ("call.offered", "call.answered")
                        and e["payload"].get("linkedid") == linkedid}

            assert pops(mqtt_inbox) == pops(ws_inbox), "one envelope, the same on every transport"

            async with aiohttp.ClientSession() as session:
                calls = await (await session.get(f"http://127.0.0.1:{server.http_port}/api/calls")).json()
            [live] = [c for c in calls["calls"] if c["linkedid"] == linkedid]
            assert live["customer"]["vip_tier"] == 3, "a console opened mid-call shows the record too"

            agent_leg = next(c for c in sim.sim.pbx.channels.values()
                             if c.linkedid == linkedid and c.uniqueid != linkedid)
            sim.sim.hangup(agent_leg.name)
            for inbox in (mqtt_inbox, ws_inbox):
                ended = await inbox.wait_for(lambda e: e["type"] == "call.ended"
                                             and e["payload"]["linkedid"] == linkedid)
                assert ended["payload"]["outcome"] == "answered"
            for task in listeners:
                task.cancel()


async def test_unknown_caller_gets_a_pop_without_a_record(redis_url: str, mqtt_port: int) -> None:
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port)
    async with running(config) as (sim, server):
        inbox, opened = Inbox(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(ws_listener(f"http://127.0.0.1:{server.http_port}/ws/agents/alice", inbox, opened))
            await asyncio.wait_for(opened.wait(), 10)
            sim.sim.place_call("4930000000", "Jürgen Müller")
            offered = await inbox.wait_for(lambda e: e["type"] == "call.offered")
            assert offered["payload"]["customer"] is None
            assert offered["payload"]["caller_name"] == "Jürgen Müller"
            task.cancel()
