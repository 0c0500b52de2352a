"""Capacity: how many calls a second one node carries, and what a call costs in server CPU.

Everything real and on 127.0.0.1, each part in its own process as in production: the faithful
simulator (Local-channel calls of real size, about 95 AMI events each) drives ``cti serve`` at a
rising call rate; every agent has a WebSocket client open, and an MQTT subscriber listens on
``cti/v1/agents/+/events``. For each rate it prints server CPU ms per call (the process's CPU time
over the window / calls offered in it), pops/s, pop latency (AgentCalled handed to the AMI socket
-> call.offered received) p50/p99 on both transports, and offers never measured; next to a bare
QoS 1 publish -> receive and a bare aiohttp WebSocket send -> receive at the same message rate,
measured in the same run. The knee is the highest rate with p99 <= 10 ms on both transports and no
offer unmeasured. Median of ``--runs`` runs per rate.

    .venv/bin/python benchmarks/capacity.py                 # 25 50 100 150 200 300 calls/s
    .venv/bin/python benchmarks/capacity.py --rates 50 100 --seconds 5 --runs 1 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import yaml
from aiohttp import web

from cti.ami.codec import Message
from cti.config import Config
from cti.devservices import dev_services, free_port
from cti.sim.runner import callers_from_directory
from cti.sim.server import AmiServer

ROOT = Path(__file__).resolve().parents[1]
KNEE_P99_S = 0.010
IDLE_S = 2.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(samples: list[float], q: int) -> float | None:
    if len(samples) < 2:
        return samples[0] if samples else None
    return statistics.quantiles(sorted(samples), n=100, method="inclusive")[q - 1]


async def _wait_healthy(port: int, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def _paced(count: int, rate: float, send: Callable[[int], Awaitable[None]]) -> None:
    """``count`` sends at ``rate`` a second, on a schedule (not sleep-after-send, which drifts)."""
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(i)


async def bare_mqtt(port: int, rate: float, seconds: float) -> list[float]:
    sent: dict[int, float] = {}
    got: list[float] = []
    count = max(2, int(rate * seconds))
    payload = json.dumps({"v": 1, "type": "call.offered", "payload": {"pad": "x" * 1500}})
    async with aiomqtt.Client("127.0.0.1", port, identifier="cap-base-sub") as sub, \
            aiomqtt.Client("127.0.0.1", port, identifier="cap-base-pub") as pub:
        await sub.subscribe("bench/base/#", qos=1)

        async def receive() -> None:
            async for msg in sub.messages:
                got.append(time.perf_counter() - sent[int(str(msg.topic).rsplit("/", 1)[1])])
                if len(got) == count:
                    return

        async def send(i: int) -> None:
            sent[i] = time.perf_counter()
            await pub.publish(f"bench/base/{i}", payload, qos=1)

        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(receive(), name="cap.base.mqtt")
            await _paced(count, rate, send)
            await asyncio.wait({task}, timeout=10)
            task.cancel()
    return got


async def bare_ws(rate: float, seconds: float) -> list[float]:
    """An aiohttp server sending frames to one aiohttp client, nothing else."""
    count = max(2, int(rate * seconds))
    got: list[float] = []
    sent: dict[int, float] = {}
    ready = asyncio.Event()
    frames: asyncio.Queue[str] = asyncio.Queue()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        ready.set()
        while True:
            await ws.send_str(await frames.get())

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    pad = "x" * 1500
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
            await ready.wait()

            async def receive() -> None:
                async for frame in ws:
                    got.append(time.perf_counter() - sent[int(json.loads(frame.data)["i"])])
                    if len(got) == count:
                        return

            async def send(i: int) -> None:
                sent[i] = time.perf_counter()
                frames.put_nowait(json.dumps({"i": i, "pad": pad}))

            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(receive(), name="cap.base.ws")
                await _paced(count, rate, send)
                await asyncio.wait({task}, timeout=10)
                task.cancel()
    finally:
        await runner.cleanup()
    return got


async def one_run(*, rate: float, seconds: float, agents: int) -> dict[str, Any]:
    members = [{"id": f"a{i:03d}", "name": f"Agent {i}", "interface": f"Local/{2000 + i}@sim-agents/n",
                "extension": str(2000 + i)} for i in range(agents)]
    with dev_services() as services, tempfile.TemporaryDirectory(prefix="cti-cap-") as tmp:
        http_port = free_port()
        settings: dict[str, Any] = {
            "ami": {"host": "127.0.0.1", "port": 5038},
            "redis": {"url": services.redis_url},
            "mqtt": {"host": "127.0.0.1", "port": services.mqtt_port},
            "http": {"host": "127.0.0.1", "port": http_port},
            "agents": members,
            "directory": {"source": str(ROOT / "config" / "customers.yaml")},
            "sim": {"port": 0, "channel_style": "local", "calls_per_minute": rate * 60, "ring_s": 0.3,
                    "mean_talk_s": 2.0, "wrapup_s": 0, "no_answer_prob": 0, "mean_patience_s": 3600,
                    "tick_s": 0.002, "vip_share": 0.3},
        }
        config = Config.model_validate(settings)
        async with AmiServer(config=config.sim, agents=config.agents, callers=callers_from_directory(config),
                             port=0, random_arrivals=False) as sim:
            sent: dict[str, float] = {}
            broadcast = sim.sim.listener
            assert broadcast is not None

            def stamp(events: list[Message]) -> None:
                broadcast(events)  # handed to the socket here
                now = time.perf_counter()
                for e in events:
                    if e.fields.get("Event") == "AgentCalled":
                        sent.setdefault(e.fields["Linkedid"], now)

            sim.sim.listener = stamp
            settings["ami"]["port"] = sim.port
            config_path = Path(tmp) / "cti.yaml"
            config_path.write_text(yaml.safe_dump(settings))
            server = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cti.cli", "serve", "-c", str(config_path), "--log-format", "json",
                "--log-level", "WARNING", cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )
            mqtt_lat: dict[str, float] = {}
            ws_lat: dict[str, float] = {}
            try:
                await _wait_healthy(http_port)
                async with aiomqtt.Client("127.0.0.1", services.mqtt_port, identifier="cap-sub") as sub, \
                        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                    await sub.subscribe("cti/v1/agents/+/events", qos=1)
                    sockets = [await session.ws_connect(f"http://127.0.0.1:{http_port}/ws/agents/{m['id']}")
                               for m in members]

                    def arrived(into: dict[str, float], data: str | bytes) -> None:
                        env = json.loads(data)
                        if env.get("type") != "call.offered":
                            return
                        linkedid = env["payload"].get("linkedid")
                        if linkedid in sent:
                            into.setdefault(linkedid, time.perf_counter() - sent[linkedid])

                    async def read_mqtt() -> None:
                        async for msg in sub.messages:
                            arrived(mqtt_lat, msg.payload)  # type: ignore[arg-type]

                    async def read_ws(ws: aiohttp.ClientWebSocketResponse) -> None:
                        async for frame in ws:
                            if frame.type is aiohttp.WSMsgType.TEXT:
                                arrived(ws_lat, frame.data)

                    async with asyncio.TaskGroup() as tg:
                        readers = [tg.create_task(read_mqtt(), name="cap.mqtt")]
                        readers += [tg.create_task(read_ws(ws), name=f"cap.ws.{i}") for i, ws in enumerate(sockets)]
                        idle_from = _cpu_seconds(server.pid)
                        await asyncio.sleep(IDLE_S)
                        idle_rate = (_cpu_seconds(server.pid) - idle_from) / IDLE_S
                        cpu_from, wall_from = _cpu_seconds(server.pid), time.perf_counter()
                        sim.sim.start_arrivals()
                        await asyncio.sleep(seconds)
                        cpu_used, wall = _cpu_seconds(server.pid) - cpu_from, time.perf_counter() - wall_from
                        window = dict(sent)
                        await asyncio.sleep(1.0)  # the last pops of the window may still be on their way
                        for task in readers:
                            task.cancel()
                    for ws in sockets:
                        await ws.close()
            finally:
                server.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(server.wait(), 15)
                except TimeoutError:
                    server.kill()
                    await server.wait()
        base_mqtt = await bare_mqtt(services.mqtt_port, rate=max(len(window) / seconds, 1), seconds=min(seconds, 5))
    base_ws = await bare_ws(rate=max(len(window) / seconds, 1), seconds=min(seconds, 5))
    calls = max(len(window), 1)
    mqtt = [mqtt_lat[c] for c in window if c in mqtt_lat]
    ws = [ws_lat[c] for c in window if c in ws_lat]
    return {
        "rate": rate, "calls": len(window), "cpu_ms_per_call": 1000 * cpu_used / calls,
        "cpu_ms_per_call_net": 1000 * max(0.0, cpu_used - idle_rate * wall) / calls,
        "server_cpu_share": cpu_used / wall, "pops_per_s": len(window) / wall,
        "p50_ms": _ms(_pct(mqtt, 50)), "p99_ms": _ms(_pct(mqtt, 99)),
        "ws_p50_ms": _ms(_pct(ws, 50)), "ws_p99_ms": _ms(_pct(ws, 99)),
        "unmeasured": len(window) - min(len(mqtt), len(ws)),
        "bare_mqtt_p50_ms": _ms(_pct(base_mqtt, 50)), "bare_mqtt_p99_ms": _ms(_pct(base_mqtt, 99)),
        "bare_ws_p50_ms": _ms(_pct(base_ws, 50)), "bare_ws_p99_ms": _ms(_pct(base_ws, 99)),
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(1000 * value, 2)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over the runs (so one noisy run does not decide)."""
    out: dict[str, Any] = {"rate": runs[0]["rate"]}
    for key in runs[0]:
        if key == "rate":
            continue
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    return out


def knee(rows: list[dict[str, Any]]) -> float | None:
    good = [r["rate"] for r in rows if r["unmeasured"] == 0 and r["p99_ms"] is not None and r["ws_p99_ms"] is not None
            and max(r["p99_ms"], r["ws_p99_ms"]) <= KNEE_P99_S * 1000]
    return max(good) if good else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[25, 50, 100, 150, 200, 300], help="calls/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per rate; the median is reported")
    parser.add_argument("--agents", type=int, default=250)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args = parser.parse_args()

    from cti.logs import configure_logging

    configure_logging("json", "WARNING")
    rows = []
    for rate in args.rates:
        runs = [asyncio.run(one_run(rate=rate, seconds=args.seconds, agents=args.agents)) for _ in range(args.runs)]
        rows.append(_median_run(runs))
        if not args.json:
            r = rows[-1]
            print(f"{rate:>5.0f} calls/s: cpu {r['cpu_ms_per_call']:.2f} ms/call (net {r['cpu_ms_per_call_net']:.2f}), "
                  f"server {100 * r['server_cpu_share']:.0f}% of a core, {r['pops_per_s']:.0f} pops/s, "
                  f"MQTT p50/p99 {r['p50_ms']}/{r['p99_ms']} ms "
                  f"(bare {r['bare_mqtt_p50_ms']}/{r['bare_mqtt_p99_ms']}), "
                  f"WS {r['ws_p50_ms']}/{r['ws_p99_ms']} ms (bare {r['bare_ws_p50_ms']}/{r['bare_ws_p99_ms']}), "
                  f"unmeasured {r['unmeasured']:.0f}", flush=True)
    result = {"rates": rows, "knee": knee(rows)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"knee: {result['knee']} calls/s "
              f"(p99 <= {KNEE_P99_S * 1000:.0f} ms on both transports, nothing unmeasured)")


if __name__ == "__main__":
    main()
