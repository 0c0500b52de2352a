"""Screen-pop latency: AgentCalled written to the AMI socket -> call.offered received over MQTT.

Everything real and on 127.0.0.1: the simulator offers calls at a fixed rate to
many agents, the whole server (AMI client, call model, Redis lookup and sequence,
MQTT publish QoS 1) turns each AgentCalled into a pop, and a subscriber on the same
mosquitto timestamps its arrival. The baseline, measured in the same run on the
same broker, is a bare QoS 1 publish of a pop-sized message to a subscriber.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import aiomqtt

from cti.ami.codec import Message
from cti.app import CtiServer
from cti.config import Config
from cti.devservices import dev_services
from cti.sim.server import AmiServer

ROOT = Path(__file__).resolve().parents[1]


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"count": len(ordered), "p50": q[49], "p99": q[98], "max": ordered[-1]}


async def _bare_mqtt(port: int, count: int, rate: float) -> dict[str, float]:
    sent: dict[int, float] = {}
    got: list[float] = []
    payload = json.dumps({"v": 1, "type": "call.offered", "payload": {"pad": "x" * 700}})
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-sub-base") as sub, \
            aiomqtt.Client("127.0.0.1", port, identifier="bench-pub-base") as pub:
        await sub.subscribe("bench/base/#", qos=1)

        async def receive() -> None:
            async for msg in sub.messages:
                got.append(time.time() - sent[int(str(msg.topic).rsplit("/", 1)[1])])
                if len(got) == count:
                    return

        async with asyncio.TaskGroup() as tg:
            tg.create_task(receive(), name="bench.base.receive")
            for i in range(count):
                sent[i] = time.time()
                await pub.publish(f"bench/base/{i}", payload, qos=1)
                await asyncio.sleep(1 / rate)
    return _percentiles(got)


async def run_latency(*, rate: float, seconds: float) -> dict[str, Any]:
    agents = [{"id": f"a{i:03d}", "name": f"Agent {i}", "interface": f"PJSIP/{2000 + i}"} for i in range(300)]
    with dev_services() as services:
        config = Config.model_validate({
            "redis": {"url": services.redis_url},
            "mqtt": {"host": "127.0.0.1", "port": services.mqtt_port},
            "http": {"host": "127.0.0.1", "port": 0},
            "agents": agents,
            "directory": {"source": str(ROOT / "config" / "customers.yaml")},
            "sim": {"port": 0, "calls_per_minute": rate * 60, "ring_s": 0.2, "mean_talk_s": 1.0, "wrapup_s": 0,
                    "no_answer_prob": 0, "mean_patience_s": 3600, "tick_s": 0.005, "vip_share": 0.3},
        })
        baseline = await _bare_mqtt(services.mqtt_port, count=int(rate * seconds / 2), rate=rate)
        from cti.sim.runner import callers_from_directory

        async with AmiServer(config=config.sim, agents=config.agents, callers=callers_from_directory(config),
                             port=0, random_arrivals=False) as sim:
            sent: dict[str, float] = {}
            broadcast = sim.sim.listener
            assert broadcast is not None

            def stamp(events: list[Message]) -> None:
                broadcast(events)  # written to the socket buffer here
                now = time.time()
                for e in events:
                    if e.fields.get("Event") == "AgentCalled":
                        sent[e.fields["Linkedid"]] = now

            sim.sim.listener = stamp
            config = config.model_copy(update={"ami": config.ami.model_copy(update={"port": sim.port})})
            latencies: list[float] = []
            async with CtiServer(config) as server, \
                    aiomqtt.Client("127.0.0.1", services.mqtt_port, identifier="bench-sub") as sub:
                await sub.subscribe("cti/v1/agents/+/events", qos=1)
                while not server.health()["ok"]:  # noqa: ASYNC110 - a one-off start-up wait
                    await asyncio.sleep(0.05)
                sim.sim.start_arrivals()  # once the server is in sync, so every offer is measured

                async def receive() -> None:
                    async for msg in sub.messages:
                        env = json.loads(msg.payload)  # type: ignore[arg-type]
                        if env["type"] == "call.offered" and env["payload"]["linkedid"] in sent:
                            latencies.append(time.time() - sent[env["payload"]["linkedid"]])

                async with asyncio.TaskGroup() as tg:
                    task = tg.create_task(receive(), name="bench.receive")
                    await asyncio.sleep(seconds)
                    task.cancel()
    result = _percentiles(latencies)
    result["baseline"] = baseline
    result["offered"] = len(sent)
    return result
