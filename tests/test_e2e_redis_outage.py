"""Redis stops under calls and comes back empty (no persistence, as `cti demo` runs it):
pops keep coming, no sequence number is reused, the records follow, /healthz is 503 meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cti.devservices import free_port, redis_server
from tests.e2e import Inbox, eventually, make_config, mqtt_listener, running


def offered(linkedid: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["type"] == "call.offered" and e["payload"]["linkedid"] == linkedid


async def test_redis_down_and_back_empty(tmp_path: Path, mqtt_port: int) -> None:
    port = free_port()
    with contextlib.ExitStack() as redis:
        (tmp_path / "first").mkdir()
        url = redis.enter_context(redis_server(tmp_path / "first", port))
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

                (tmp_path / "second").mkdir()
                with redis_server(tmp_path / "second", port):  # back on the same port, empty
                    await eventually(lambda: server.health()["ok"], timeout=20)
                    await eventually(lambda: server.customers > 0, timeout=20)  # imported again
                    update = await inbox.wait_for(lambda e: e["type"] == "call.updated"
                                                  and e["payload"]["linkedid"] == during, timeout=20)
                    assert update["payload"]["customer"]["name"] == "Li Na"
                    sim.sim.hangup(sim.sim.pbx.calls[first].caller.name)  # frees an agent
                    after = sim.sim.place_call("13800000002", "Zhang Wei")
                    pop = await inbox.wait_for(offered(after))
                    assert pop["payload"]["customer"]["name"] == "Zhang Wei", "the directory is back"
                listener.cancel()
    for agent in {e["agent"] for e in inbox.items}:
        seqs = [e["seq"] for e in inbox.items if e["agent"] == agent]
        assert len(seqs) == len(set(seqs)), f"{agent}: a sequence number was reused"
        assert seqs == sorted(seqs), f"{agent}: sequence numbers went back"
