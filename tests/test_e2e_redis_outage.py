"""Redis stops under calls and comes back, empty (no persistence, as `cti demo` runs it) or with
its data: pops keep coming, no sequence number is reused, the records follow, the KPI facts counted
meanwhile are kept once it is back, /healthz is 503 meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from cti.devservices import free_port, redis_server
from cti.kpi.facts import RedisFacts
from tests.e2e import Inbox, eventually, make_config, mqtt_listener, running


def offered(linkedid: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["type"] == "call.offered" and e["payload"]["linkedid"] == linkedid


@pytest.mark.parametrize("persist", [False, True], ids=["back-empty", "back-with-its-data"])
async def test_redis_down_and_back(tmp_path: Path, mqtt_port: int, persist: bool) -> None:
    port = free_port()
    first, second = tmp_path / "first", tmp_path / ("first" if persist else "second")
    first.mkdir()
    second.mkdir(exist_ok=True)
    with contextlib.ExitStack() as redis:
        url = redis.enter_context(redis_server(first, port, persist=persist))
        config = make_config(redis_url=url, mqtt_port=mqtt_port)
        async with running(config) as (sim, server):
            inbox, subscribed = Inbox(), asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                listener = tg.create_task(mqtt_listener(mqtt_port, "cti/v1/agents/+/events", inbox, subscribed))
                await asyncio.wait_for(subscribed.wait(), 10)
                first = sim.sim.place_call("13800000001", "Wang Lei")
                pop = await inbox.wait_for(offered(first))
                assert pop["payload"]["customer"]["name"] == "Wang Lei"
                assert server.customers > 0

                redis.close()  # Redis stops
                await eventually(lambda: not server.health()["redis"]["ok"])
                assert not server.health()["ok"]
                during = sim.sim.place_call("8613900000001", "Li Na")
                pop = await inbox.wait_for(offered(during))
                assert pop["payload"]["customer"] is None, "the pop did not wait for Redis"
                await inbox.wait_for(lambda e: e["type"] == "call.answered" and e["payload"]["linkedid"] == during)
                await eventually(lambda: server.kpis.unsaved > 0)  # its queue visit, counted, not yet kept

                with redis_server(second, port, persist=persist):  # back on the same port
                    await eventually(lambda: server.health()["ok"], timeout=20)
                    await eventually(lambda: server.customers > 0, timeout=20)  # re-imported if it was lost
                    update = await inbox.wait_for(lambda e: e["type"] == "call.updated"
                                                  and e["payload"]["linkedid"] == during, timeout=20)
                    assert update["payload"]["customer"]["name"] == "Li Na"
                    sim.sim.hangup(sim.sim.pbx.calls[first].caller.name)  # frees an agent
                    after = sim.sim.place_call("13800000002", "Zhang Wei")
                    pop = await inbox.wait_for(offered(after))
                    assert pop["payload"]["customer"]["name"] == "Zhang Wei", "the directory is back"
                    await eventually(lambda: server.kpis.unsaved == 0, timeout=20)
                    async with aioredis.from_url(url) as client:
                        facts = RedisFacts(client, key_prefix=config.redis.key_prefix, timezone=config.history.timezone)
                        kept, _ = await facts.load(time.time() - 600, time.time())
                    assert any(f.startswith(f"v:{during}:") for f, _ in kept), "what Redis missed is kept now"
                listener.cancel()
    for agent in {e["agent"] for e in inbox.items}:
        seqs = [e["seq"] for e in inbox.items if e["agent"] == agent]
        assert len(seqs) == len(set(seqs)), f"{agent}: a sequence number was reused"
        assert seqs == sorted(seqs), f"{agent}: sequence numbers went back"
