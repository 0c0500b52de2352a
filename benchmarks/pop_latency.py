"""Screen-pop latency: AgentCalled written to the AMI socket -> call.offered received over MQTT.

Everything real and on 127.0.0.1, each part in its own process as in production:
the simulator (standing in for Asterisk) offers calls at a fixed rate to many
agents; ``cti serve`` (AMI client, call model, Redis lookup and sequence, MQTT
publish QoS 1) turns each AgentCalled into a pop; a subscriber (standing in for the
agents' clients) timestamps arrivals. The simulator and the subscriber share this
process, so both timestamps come from one clock. The baseline, measured in the same
run on the same broker, is a bare QoS 1 publish of a pop-sized message.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import yaml

from cti.ami.codec import Message
from cti.config import Config
from cti.devservices import dev_services, free_port
from cti.sim.runner import callers_from_directory
from cti.sim.server import AmiServer

ROOT = Path(__file__).resolve().parents[1]
AGENTS = 300
IDLE_S = 2.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


async def _wait_healthy(port: int, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def run_latency(*, rate: float, seconds: float) -> dict[str, Any]:
    agents = [{"id": f"a{i:03d}", "name": f"Agent {i}", "interface": f"PJSIP/{2000 + i}"} for i in range(AGENTS)]
    with dev_services() as services, tempfile.TemporaryDirectory(prefix="cti-bench-") as tmp:
        http_port = free_port()
        settings: dict[str, Any] = {
            "ami": {"host": "127.0.0.1", "port": 5038},
            "redis": {"url": services.redis_url},
            "mqtt": {"host": "127.0.0.1", "port": services.mqtt_port},
            "http": {"host": "127.0.0.1", "port": http_port},
            "agents": agents,
            "directory": {"source": str(ROOT / "config" / "customers.yaml")},
            "sim": {"port": 0, "calls_per_minute": rate * 60, "ring_s": 0.2, "mean_talk_s": 1.0, "wrapup_s": 0,
                    "no_answer_prob": 0, "mean_patience_s": 3600, "tick_s": 0.002, "vip_share": 0.3},
        }
        config = Config.model_validate(settings)
        baseline = await _bare_mqtt(services.mqtt_port, count=int(rate * seconds / 2), rate=rate)

        async with AmiServer(config=config.sim, agents=config.agents, callers=callers_from_directory(config),
                             port=0, random_arrivals=False) as sim:
            sent: dict[str, float] = {}
            broadcast = sim.sim.listener
            assert broadcast is not None

            def stamp(events: list[Message]) -> None:
                broadcast(events)  # handed to the socket here
                now = time.time()
                for e in events:
                    if e.fields.get("Event") == "AgentCalled":
                        sent[e.fields["Linkedid"]] = now

            sim.sim.listener = stamp
            settings["ami"]["port"] = sim.port
            config_path = Path(tmp) / "cti.yaml"
            config_path.write_text(yaml.safe_dump(settings))
            server = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cti.cli", "serve", "-c", str(config_path), "--log-format", "json",
                "--log-level", "WARNING", cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )
            latencies: list[float] = []
            try:
                await _wait_healthy(http_port)
                async with aiomqtt.Client("127.0.0.1", services.mqtt_port, identifier="bench-sub") as sub:
                    await sub.subscribe("cti/v1/agents/+/events", qos=1)
                    # Baseline: what the idle server burns (pings, gauges, resync timers) per second.
                    idle_from = _cpu_seconds(server.pid)
                    await asyncio.sleep(IDLE_S)
                    idle_rate = (_cpu_seconds(server.pid) - idle_from) / IDLE_S
                    cpu_from = _cpu_seconds(server.pid)
                    sim.sim.start_arrivals()

                    async def receive() -> None:
                        async for msg in sub.messages:
                            env = json.loads(msg.payload)  # type: ignore[arg-type]
                            linkedid = env["payload"].get("linkedid")
                            if env["type"] == "call.offered" and linkedid in sent:
                                latencies.append(time.time() - sent[linkedid])

                    async with asyncio.TaskGroup() as tg:
                        task = tg.create_task(receive(), name="bench.receive")
                        await asyncio.sleep(seconds)
                        cpu_used = _cpu_seconds(server.pid) - cpu_from
                        calls = len(sent)
                        task.cancel()
            finally:
                server.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(server.wait(), 10)
                except TimeoutError:
                    server.kill()
                    await server.wait()
    result: dict[str, Any] = _percentiles(latencies)
    result["baseline"] = baseline
    result["offered"] = len(sent)
    result["cpu_ms_per_call"] = 1000 * cpu_used / max(calls, 1)
    result["cpu_ms_per_call_net"] = 1000 * max(0.0, cpu_used - idle_rate * seconds) / max(calls, 1)
    result["idle_cpu_ms_per_s"] = 1000 * idle_rate
    return result
