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
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import aiomqtt
import yaml
from aiohttp import web
from pacing import paced

from cti.ami.codec import Message
from cti.config import load_config
from cti.devservices import dev_services, free_port
from cti.sim.runner import callers_from_directory
from cti.sim.server import AmiServer

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
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
            # Bounded: aiomqtt 2.x can leave a QoS 1 publish waiting for ever (cti/push/mqtt.py, _LoopClient);
            # one seen hanging here stalled a whole sweep. A publish past 5 s is counted as lost.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await pub.publish(f"bench/base/{i}", payload, qos=1)

        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(receive(), name="cap.base.mqtt")
            await paced(count, rate, send)
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
                await paced(count, rate, send)
                await asyncio.wait({task}, timeout=10)
                task.cancel()
    finally:
        await runner.cleanup()
    return got


def _settings(rate: float, agents: int, services_redis: str, mqtt_port: int, http_port: int) -> dict[str, Any]:
    members = [{"id": f"a{i:03d}", "name": f"Agent {i}", "interface": f"Local/{2000 + i}@sim-agents/n",
                "extension": str(2000 + i)} for i in range(agents)]
    return {
        "ami": {"host": "127.0.0.1", "port": 5038},
        "redis": {"url": services_redis},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "http": {"host": "127.0.0.1", "port": http_port},
        "auth": {"enabled": False},  # a token is checked once per connection: nothing per call to measure
        "agents": members,
        "directory": {"source": str(ROOT / "config" / "customers.yaml")},
        "sim": {"port": 0, "channel_style": "local", "calls_per_minute": rate * 60, "ring_s": 0.2,
                "mean_talk_s": 0.5, "wrapup_s": 0, "no_answer_prob": 0, "mean_patience_s": 3600,
                "tick_s": 0.002, "vip_share": 0.3},
    }


class _Role:
    """A child process of the run (simulator or clients), spoken to in JSON lines over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, role: str, config_path: Path) -> _Role:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "--role", role, "--config", str(config_path),
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26,
        )
        return cls(proc)

    async def read(self, timeout: float = 60) -> Any:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"benchmark child {self.proc.pid} exited ({await self.proc.wait()})")
        return json.loads(line)

    async def ask(self, command: str, timeout: float = 60) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.read(timeout)

    def cpu(self) -> float:
        return _cpu_seconds(self.proc.pid)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


async def _commands() -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield line.decode().strip()


def _reply(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value) + "\n")
    out.flush()


async def sim_role(config_path: Path, out: TextIO) -> None:
    """The PBX: stamps each AgentCalled as it is handed to the socket (CLOCK_MONOTONIC, shared by processes)."""
    config = load_config(config_path)
    async with AmiServer(config=config.sim, agents=config.agents, callers=callers_from_directory(config),
                         port=0, random_arrivals=False) as sim:
        sent: dict[str, float] = {}
        arrived: list[float] = []
        broadcast = sim.sim.listener
        assert broadcast is not None

        def stamp(events: list[Message]) -> None:
            broadcast(events)
            now = time.monotonic()
            for e in events:
                name = e.fields.get("Event")
                if name == "AgentCalled":
                    sent.setdefault(e.fields["Linkedid"], now)
                elif name == "Newchannel" and e.fields.get("Uniqueid") == e.fields.get("Linkedid"):
                    arrived.append(now)  # the caller's first channel: a call begins

        sim.sim.listener = stamp
        _reply(out, {"port": sim.port})
        async for command in _commands():
            if command == "start":
                sim.sim.start_arrivals()
                _reply(out, {"started": time.monotonic()})
            elif command == "report":
                _reply(out, {"sent": sent, "arrived": arrived})


async def clients_role(config_path: Path, out: TextIO) -> None:
    """Every agent's WebSocket client and one MQTT subscriber on ``+``; arrival times of each call.offered."""
    config = load_config(config_path)
    got: dict[str, dict[str, float]] = {"mqtt": {}, "ws": {}}
    frames = {"mqtt": 0, "ws": 0}

    def arrived(transport: str, data: str | bytes) -> None:
        frames[transport] += 1
        env = json.loads(data)
        if env.get("type") == "call.offered":
            got[transport].setdefault(env["payload"].get("linkedid"), time.monotonic())

    async with aiomqtt.Client("127.0.0.1", config.mqtt.port, identifier="cap-sub") as sub, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await sub.subscribe(f"{config.mqtt.topic_prefix}/agents/+/events", qos=1)
        base = f"http://127.0.0.1:{config.http.port}/ws/agents/"
        sockets = [await session.ws_connect(base + a.id) for a in config.agents]

        async def read_mqtt() -> None:
            async for msg in sub.messages:
                arrived("mqtt", msg.payload)  # type: ignore[arg-type]

        async def read_ws(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for frame in ws:
                if frame.type is aiohttp.WSMsgType.TEXT:
                    arrived("ws", frame.data)

        async with asyncio.TaskGroup() as tg:
            readers = [tg.create_task(read_mqtt(), name="cap.mqtt")]
            readers += [tg.create_task(read_ws(ws), name=f"cap.ws.{i}") for i, ws in enumerate(sockets)]
            _reply(out, {"ready": len(sockets)})
            async for command in _commands():
                if command == "report":
                    _reply(out, {**got, "frames": frames})
                    break
            for task in readers:
                task.cancel()
        for ws in sockets:
            await ws.close()


async def one_run(*, rate: float, seconds: float, agents: int, profile: Path | None = None) -> dict[str, Any]:
    """Simulator, server and clients each in a process of their own, as a real site runs them."""
    with dev_services() as services, tempfile.TemporaryDirectory(prefix="cti-cap-") as tmp:
        http_port = free_port()
        settings = _settings(rate, agents, services.redis_url, services.mqtt_port, http_port)
        config_path = Path(tmp) / "cti.yaml"
        config_path.write_text(yaml.safe_dump(settings))
        sim = await _Role.start("sim", config_path)
        clients: _Role | None = None
        server: asyncio.subprocess.Process | None = None
        try:
            settings["ami"]["port"] = (await sim.read())["port"]
            config_path.write_text(yaml.safe_dump(settings))
            server = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cti.cli", "serve", "-c", str(config_path), "--log-format", "json",
                "--log-level", "WARNING", cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )
            await _wait_healthy(http_port)
            clients = await _Role.start("clients", config_path)
            await clients.read()
            idle_from = _cpu_seconds(server.pid)
            await asyncio.sleep(IDLE_S)
            idle_rate = (_cpu_seconds(server.pid) - idle_from) / IDLE_S
            cpu_from = {"server": _cpu_seconds(server.pid), "sim": sim.cpu(), "clients": clients.cpu()}
            wall_from = (await sim.ask("start"))["started"]
            profiler = await _profile(server.pid, seconds, profile) if profile else None
            await asyncio.sleep(seconds)
            if profiler is not None:
                await profiler.wait()
            cpu = {"server": _cpu_seconds(server.pid), "sim": sim.cpu(), "clients": clients.cpu()}
            wall_to = time.monotonic()
            await asyncio.sleep(1.0)  # the last pops of the window may still be on their way
            report = await sim.ask("report")
            sent = report["sent"]
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{http_port}/metrics") as r:
                metrics = await r.text()
            arrivals = await clients.ask("report")
        finally:
            for child in (clients, sim):
                if child is not None:
                    await child.stop()
            if server is not None:
                server.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(server.wait(), 15)
                except TimeoutError:
                    server.kill()
                    await server.wait()
        wall = wall_to - wall_from
        window = {c: t for c, t in sent.items() if t <= wall_to}
        message_rate = max(arrivals["frames"]["mqtt"] / (wall + 1.0), 1)
        base_mqtt = await bare_mqtt(services.mqtt_port, rate=message_rate, seconds=min(seconds, 5))
    base_ws = await bare_ws(rate=message_rate, seconds=min(seconds, 5))
    # CPU per call over the calls that began in the window: in a steady state that is the work the
    # window saw (a call's pop comes a second after it begins, so counting pops would undercount).
    calls = max(sum(wall_from <= t <= wall_to for t in report["arrived"]), 1)
    mqtt = [arrivals["mqtt"][c] - t for c, t in window.items() if c in arrivals["mqtt"]]
    ws = [arrivals["ws"][c] - t for c, t in window.items() if c in arrivals["ws"]]
    used = {k: cpu[k] - cpu_from[k] for k in cpu}
    return {
        "rate": rate, "calls": calls, "pops": len(window), "cpu_ms_per_call": 1000 * used["server"] / calls,
        "cpu_ms_per_call_net": 1000 * max(0.0, used["server"] - idle_rate * wall) / calls,
        "server_cpu_share": used["server"] / wall, "sim_cpu_share": used["sim"] / wall,
        "clients_cpu_share": used["clients"] / wall, "pops_per_s": len(window) / wall,
        "messages_per_s": message_rate,
        "p50_ms": _ms(_pct(mqtt, 50)), "p99_ms": _ms(_pct(mqtt, 99)),
        "ws_p50_ms": _ms(_pct(ws, 50)), "ws_p99_ms": _ms(_pct(ws, 99)),
        "unmeasured": len(window) - min(len(mqtt), len(ws)),
        "bare_mqtt_p50_ms": _ms(_pct(base_mqtt, 50)), "bare_mqtt_p99_ms": _ms(_pct(base_mqtt, 99)),
        "bare_ws_p50_ms": _ms(_pct(base_ws, 50)), "bare_ws_p99_ms": _ms(_pct(base_ws, 99)),
        "server_pop_mean_ms": _server_pop_mean_ms(metrics),
    }


def _server_pop_mean_ms(metrics: str) -> float | None:
    """The server's own share: call.offered made by the model -> handed to every transport (cti_pop_latency)."""
    values = {}
    for line in metrics.splitlines():
        if line.startswith(("cti_pop_latency_seconds_sum", "cti_pop_latency_seconds_count")):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    count = values.get("cti_pop_latency_seconds_count", 0)
    return _ms(values["cti_pop_latency_seconds_sum"] / count) if count else None


async def _profile(pid: int, seconds: float, out: Path) -> asyncio.subprocess.Process:
    """py-spy (``pip install py-spy``) samples the server over the window into collapsed stacks."""
    out.parent.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "200",
        "--format", "raw", "--output", str(out), "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )


def top_costs(collapsed: Path, limit: int = 25) -> list[tuple[str, float, float]]:
    """(function, inclusive share, self share) of the samples, from py-spy's collapsed stacks."""
    total = 0
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        total += count
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    ranked = sorted(inclusive, key=lambda n: -inclusive[n])[:limit]
    return [(name, inclusive[name] / total, own.get(name, 0) / total) for name in ranked]


def chart_svg(rows: list[dict[str, Any]], title: str) -> str:
    """p99 pop latency against call rate, both transports and their bare baselines, log scale (no plotting
    library: the README embeds the file)."""
    import math

    width, height, left, bottom, top, right = 640, 360, 60, 40, 30, 150
    series = [("p99_ms", "cti MQTT p99", "#d62728"), ("ws_p99_ms", "cti WebSocket p99", "#1f77b4"),
              ("bare_mqtt_p99_ms", "bare MQTT QoS 1 p99", "#ff9896"),
              ("bare_ws_p99_ms", "bare WebSocket p99", "#aec7e8")]
    rates = [r["rate"] for r in rows]
    values = [r[k] for r in rows for k, *_ in series if r[k]]
    lo, hi = math.log10(max(min(values), 0.05)), math.log10(max(values) * 1.2)
    hi = max(hi, lo + 1)

    def x(rate: float) -> float:
        return left + (width - left - right) * (rates.index(rate) / max(len(rates) - 1, 1))

    def y(ms: float) -> float:
        return top + (height - top - bottom) * (1 - (math.log10(max(ms, 0.05)) - lo) / (hi - lo))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13">{title}</text>']
    for decade in range(math.floor(lo), math.ceil(hi) + 1):
        for ms in (10 ** decade,):
            if lo <= math.log10(ms) <= hi:
                out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(ms):.1f}" y2="{y(ms):.1f}" stroke="#eee"/>'
                           f'<text x="{left - 6}" y="{y(ms) + 4:.1f}" text-anchor="end">{ms:g} ms</text>')
    knee_y = y(KNEE_P99_S * 1000)
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{knee_y:.1f}" y2="{knee_y:.1f}" stroke="#999" '
               f'stroke-dasharray="4 3"/><text x="{width - right + 4}" y="{knee_y + 4:.1f}">10 ms</text>')
    for rate in rates:
        out.append(f'<text x="{x(rate):.1f}" y="{height - bottom + 16}" text-anchor="middle">{rate:g}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">calls/s offered</text>')
    for i, (key, label, colour) in enumerate(series):
        points = [(x(r["rate"]), y(r[key])) for r in rows if r[key]]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        out += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>' for px, py in points]
        ly = top + 16 * i
        out.append(f'<line x1="{width - right + 8}" x2="{width - right + 24}" y1="{ly}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="2"/><text x="{width - right + 28}" y="{ly + 4}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


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
    parser.add_argument("--chart", type=Path, metavar="SVG", help="write p99 latency against call rate as SVG")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="sample the server with py-spy during each window; print its top costs")
    parser.add_argument("--role", choices=["sim", "clients"], help=argparse.SUPPRESS)  # a child of a run
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from cti.logs import configure_logging

    if args.role:
        import uvloop

        out = os.fdopen(os.dup(1), "w")  # replies to the parent; anything else printed goes to stderr
        os.dup2(2, 1)
        configure_logging("json", "WARNING")
        uvloop.run(sim_role(args.config, out) if args.role == "sim" else clients_role(args.config, out))
        return

    configure_logging("json", "WARNING")
    rows = []
    for rate in args.rates:
        runs = []
        for k in range(args.runs):
            profile = args.profile / f"server-{rate:g}-{k}.txt" if args.profile else None
            runs.append(asyncio.run(one_run(rate=rate, seconds=args.seconds, agents=args.agents, profile=profile)))
            if profile is not None and not args.json:
                print(f"py-spy of the server at {rate:g} calls/s, run {k + 1} ({profile}): inclusive / self")
                for name, incl, own in top_costs(profile):
                    print(f"  {100 * incl:5.1f}% {100 * own:5.1f}%  {name}")
        rows.append(_median_run(runs))
        if not args.json:
            r = rows[-1]
            print(f"{rate:>5.0f} calls/s: cpu {r['cpu_ms_per_call']:.2f} ms/call (net {r['cpu_ms_per_call_net']:.2f}), "
                  f"server {100 * r['server_cpu_share']:.0f}% of a core (sim {100 * r['sim_cpu_share']:.0f}%, "
                  f"clients {100 * r['clients_cpu_share']:.0f}%), {r['pops_per_s']:.0f} pops/s, "
                  f"MQTT p50/p99 {r['p50_ms']}/{r['p99_ms']} ms "
                  f"(bare {r['bare_mqtt_p50_ms']}/{r['bare_mqtt_p99_ms']}), "
                  f"WS {r['ws_p50_ms']}/{r['ws_p99_ms']} ms (bare {r['bare_ws_p50_ms']}/{r['bare_ws_p99_ms']}), "
                  f"unmeasured {r['unmeasured']:.0f}, in-server pop mean {r['server_pop_mean_ms']} ms", flush=True)
    result = {"rates": rows, "knee": knee(rows)}
    if args.chart:
        args.chart.write_text(chart_svg(rows, f"Screen pop latency, median of {args.runs} runs, "
                                              f"{args.agents} agents ({time.strftime('%Y-%m-%d')})"))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"knee: {result['knee']} calls/s "
              f"(p99 <= {KNEE_P99_S * 1000:.0f} ms on both transports, nothing unmeasured)")


if __name__ == "__main__":
    main()
