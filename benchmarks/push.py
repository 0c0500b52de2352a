"""Push: screen pops delivered to every connected agent, WebSocket and MQTT, next to bare aiohttp / aiomqtt.

Everything real, on 127.0.0.1, each part in its own process: a private redis-server and mosquitto
(``cti.devservices``); the *cti* server (an aiohttp app with the real ``WebSocketHub``, the real
``MqttSink`` to mosquitto and the real ``AgentNotifier`` numbering with ``RedisSequencer``) which
submits ``call.offered`` pops of real size (the documented payload with its customer record) to
random agents; the *bare* server, the same shape with the libraries only: per message one
``orjson.dumps`` of the same envelope, ``ws.send_str`` to the agent's socket and an aiomqtt QoS 1
``publish`` (at most 64 in flight, as the sink) to the agent's topic; and two client processes: one
aiohttp WebSocket per agent on each server, and MQTT subscribers on ``cti/v1/agents/{agent}/events``
(QoS 1; one client per agent unless ``--mqtt-clients`` says fewer, each then subscribing its share).

Each pop carries its send time (``time.time()``: the processes share the wall clock); a client
records receive time - send time, once per envelope id. Two phases per path and run, cti and bare
alternating (the order swaps each run):

  rate  ``--rate`` pops/s for ``--seconds`` on a fixed schedule: delivered events/s, p50/p99 latency
  max   ``--max-events`` pops submitted as fast as the path drains (both servers pause while
        2,048 MQTT publishes are queued or unacknowledged, cti also while its notifier holds 512 pops; the
        bare one's ``send_str`` waits when a socket's buffer is full): delivered events/s =
        received / (last receipt - first send)

Both transports carry every pop at once, as in production, so in the max phase the slower one
(MQTT) sets the pace of both; ``--transports ws`` or ``mqtt`` isolates one. The server's CPU per
pop and each process's share of a core are read from ``/proc`` (at a fixed rate that includes the
cost of each wake-up from idle, large on some VMs: compare paths, not machines). Targets (the issue):
max-phase events/s >= 0.8x bare, and p99 <= 20 ms at 500 pops/s. Median of ``--runs`` runs; the
processes and connections stay up across runs.

    .venv/bin/python benchmarks/push.py                       # 1,000 agents, 500 pops/s, 10 s, 3 runs
    .venv/bin/python benchmarks/push.py --agents 200 --seconds 3 --max-events 5000 --runs 1 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import statistics
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
from pacing import paced

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
TOPIC_PREFIX = "cti/v1"
WINDOW = 64  # QoS 1 publishes in flight: MqttSink's default, and the bare publisher's
FLOOD_CHUNK = 64  # pops submitted between two yields to the loop in the max phase
FLOOD_BACKLOG = 512  # the cti max phase submits while the notifier holds fewer than this...
FLOOD_MQTT_PENDING = 2048  # ...and the MQTT sink fewer unacknowledged (its outbox drops at 10,000)
STALL_S = 30.0  # a max phase that cannot submit for this long gives up (a dead broker)
IDLE_S = 5.0  # a client stops waiting for a phase after this long without a new event
CONNECT_CONCURRENCY = 50
TARGET_RATIO = 0.8
TARGET_P99_MS = 20.0

CUSTOMER: dict[str, Any] = {
    "id": "c-1002", "numbers": ["8613900000001", "861065000001", "861065000017"], "name": "Li Na",
    "company": "Orient Bank", "company_tier": "enterprise", "role": "Chief information officer", "vip_tier": 3,
    "account_manager": "chen", "email": "li.na@orientbank.example.com", "language": "zh-CN",
    "address": "88 Century Avenue, Pudong New District, Shanghai 200120",
    "notes": "Strategic account, renewal due next quarter. Prefers a callback before 10:00; escalate any "
             "outage to the account manager at once. Tender for the contact-centre expansion (400 seats) "
             "closes at the end of the month; procurement contact is Zhang Wei.",
    "open_tickets": [
        {"id": "T-48213", "subject": "Card terminals offline at three branches", "status": "in_progress",
         "priority": "high", "opened_at": 1709200000.0},
        {"id": "T-48177", "subject": "Monthly statement export shows wrong currency", "status": "waiting",
         "priority": "normal", "opened_at": 1709100000.0},
    ],
    "last_contacts": [
        {"at": 1709280000.0, "channel": "voice", "agent": "chen", "outcome": "resolved"},
        {"at": 1709190000.0, "channel": "email", "agent": "alice", "outcome": "follow_up"},
    ],
}
BASE_PAYLOAD: dict[str, Any] = {
    "linkedid": "", "caller": "8613900000001", "caller_name": "Li Na", "queue": "support", "position": 1,
    "priority": 0, "agent": None, "agent_id": None, "outcome": None, "wait_s": None, "talk_s": None,
    "arrived_at": 0.0, "queued_at": 0.0, "offered_at": 0.0, "answered_at": None, "ended_at": None, "ended": False,
    "gap": False, "offered_queue": "support", "member": "", "wait_so_far_s": 13.1, "transferred_from": None,
    "transferred_from_id": None, "customer": CUSTOMER,
}


def agent_ids(count: int) -> list[str]:
    return [f"agent{i:04d}" for i in range(count)]


def agent_topic(agent: str) -> str:
    return f"{TOPIC_PREFIX}/agents/{agent}/events"


def pop_payload(i: int, agent: str, phase: str, now: float) -> dict[str, Any]:
    """A call.offered payload; ``bench`` is [phase, send time] for the clients."""
    return {**BASE_PAYLOAD, "linkedid": f"{int(now)}.{i}", "member": agent, "arrived_at": round(now - 14.1, 3),
            "queued_at": round(now - 13.1, 3), "offered_at": now, "bench": [phase, now]}


def bare_body(key: str, seq: int, ts: str, agent: str, payload: dict[str, Any]) -> bytes:
    """The same envelope shape (and size) as cti's."""
    return orjson.dumps({"v": 1, "id": key, "seq": seq, "ts": ts, "type": "call.offered", "agent": agent,
                         "payload": payload})


def message_bytes() -> int:
    payload = pop_payload(1, "agent0000", "r0-rate-cti", time.time())
    return len(bare_body("0" * 32, 1_700_000_000_000, "2026-03-02T09:15:04.120Z", "agent0000", payload))


def _pct(samples: Sequence[float], q: int) -> float | None:
    if len(samples) < 2:
        return samples[0] if samples else None
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``); 0 when it is unknown or gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pid_with_argument(argument: str) -> int | None:
    """The process whose command line holds ``argument`` (our private mosquitto, by its config path)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argument.encode() in argv:
                return int(entry.name)
    return None


# ---------------------------------------------------------------------------------------------- children


async def _commands() -> AsyncIterator[dict[str, Any]]:
    """The parent's commands, one JSON object a line on stdin; ends when the parent closes it (or dies)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield json.loads(line)


def _reply(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value) + "\n")
    out.flush()


def _loop_client(port: int, identifier: str, **kwargs: Any) -> Any:
    """An aiomqtt client with the product's fix for aiomqtt 2.5's stray socket writer (``_LoopClient``,
    a busy loop otherwise), so no baseline pays for that bug."""
    from cti.push.mqtt import _LoopClient

    client = _LoopClient("127.0.0.1", port, identifier=identifier, **kwargs)
    client.pending_calls_threshold = WINDOW + 1
    return client


async def _settle(done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        await asyncio.sleep(0.001)


def settle_heap() -> None:
    """The collector settings ``cti serve`` takes once started (cti/heap.py), for both servers."""
    from cti.heap import settle_heap as settle

    settle()


async def _flood(count: int, blocked: Callable[[], bool], send: Callable[[int], Awaitable[None]]) -> bool:
    """Send ``count`` as fast as the path drains: ``FLOOD_CHUNK`` between two yields to the loop, none
    while ``blocked()``. True if it stayed blocked for ``STALL_S`` (a dead broker) and gave up."""
    i, blocked_since = 0, None
    while i < count:
        if blocked():
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since > STALL_S:
                return True
            await asyncio.sleep(0.0005)
            continue
        blocked_since = None
        for j in range(i, min(i + FLOOD_CHUNK, count)):
            await send(j)
        i = min(i + FLOOD_CHUNK, count)
        await asyncio.sleep(0)
    return False


async def cti_role(spec: dict[str, Any], out: TextIO) -> None:
    """The product's push path: AgentViews, WebSocketHub, MqttSink and the CallLog behind AgentNotifier
    with RedisSequencer and the per-agent RedisHistory, as ``cti serve`` wires them (the call log only
    looks at a pop: it records ended calls, so its writer task has nothing to do here)."""
    import redis.asyncio as aioredis
    from aiohttp import web

    from cti.config import MqttConfig
    from cti.push.calllog import CallLog, RedisCallStore
    from cti.push.envelope import RedisSequencer
    from cti.push.history import AgentViews, RedisHistory
    from cti.push.mqtt import MqttSink
    from cti.push.notifier import AgentNotifier, Sink
    from cti.push.ws import WebSocketHub

    agents = agent_ids(spec["agents"])
    transports = spec["transports"]
    redis = aioredis.from_url(spec["redis_url"], socket_timeout=5, socket_connect_timeout=5)
    sinks: list[Sink] = [AgentViews()]
    hub = WebSocketHub(agents=frozenset(agents)) if "ws" in transports else None
    mqtt = MqttSink(config=MqttConfig(host="127.0.0.1", port=spec["mqtt_port"], client_id="bench-cti-server",
                                      topic_prefix=TOPIC_PREFIX)) if "mqtt" in transports else None
    sinks += [s for s in (hub, mqtt) if s is not None]
    sinks.append(CallLog(RedisCallStore(redis, key_prefix="bench:")))
    notifier = AgentNotifier(sequencer=RedisSequencer(redis, key_prefix="bench:"), sinks=sinks,
                             history=RedisHistory(redis, key_prefix="bench:"))
    app = web.Application()
    if hub is not None:
        hub.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    submit = notifier.submit

    async def run_phase(cmd: dict[str, Any]) -> dict[str, Any]:
        phase, count, rate = cmd["phase"], cmd["count"], cmd["rate"]
        rng = random.Random(cmd["seed"])
        picks = [agents[rng.randrange(len(agents))] for _ in range(count)]
        stalled = False
        first = time.time()
        if rate:
            async def send(i: int) -> None:
                agent = picks[i]
                submit(agent, "call.offered", pop_payload(i, agent, phase, time.time()))

            await paced(count, rate, send)
        else:
            async def submit_one(j: int) -> None:
                agent = picks[j]
                submit(agent, "call.offered", pop_payload(j, agent, phase, time.time()))

            stalled = await _flood(count, lambda: notifier.backlog >= FLOOD_BACKLOG or (
                mqtt is not None and mqtt.pending >= FLOOD_MQTT_PENDING), submit_one)
        last = time.time()
        await _settle(lambda: notifier.backlog == 0, 30)
        return {"first": first, "last": last, "stalled": stalled,
                "ws_slow_closed": hub.slow_closed if hub is not None else 0,
                "mqtt_dropped": mqtt.dropped if mqtt is not None else 0}

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(notifier.run(), name="bench.notifier")]
            if mqtt is not None:
                tasks.append(tg.create_task(mqtt.run(), name="bench.mqtt"))
                await _settle(lambda: mqtt.connected, 20)
                if not mqtt.connected:
                    raise RuntimeError("the cti MqttSink did not connect to mosquitto")
            settle_heap()  # as cti serve does once started
            _reply(out, {"port": port})
            async for cmd in _commands():
                _reply(out, await run_phase(cmd))
            for task in tasks:
                task.cancel()
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await runner.cleanup()
        await redis.aclose()


async def bare_role(spec: dict[str, Any], out: TextIO) -> None:
    """Libraries only: aiohttp ``send_str`` to the agent's socket, aiomqtt QoS 1 publish to its topic."""
    from aiohttp import WSCloseCode, web

    agents = agent_ids(spec["agents"])
    transports = spec["transports"]
    sockets: dict[str, web.WebSocketResponse] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        agent = request.match_info["agent"]
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        sockets[agent] = ws
        try:
            async for _ in ws:
                pass
        finally:
            if sockets.get(agent) is ws:
                del sockets[agent]
        return ws

    async def close_sockets(_app: web.Application) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY) for ws in list(sockets.values())),
                                     return_exceptions=True)

    app = web.Application()
    app.router.add_get("/bare/agents/{agent}", handler)
    app.on_shutdown.append(close_sockets)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    prefix = os.urandom(8).hex()
    serial = 0
    slots = asyncio.Semaphore(WINDOW)
    in_flight: set[asyncio.Task[None]] = set()
    backlog: deque[tuple[str, bytes]] = deque()  # publishes waiting for a slot of the window
    wakeup = asyncio.Event()

    async with contextlib.AsyncExitStack() as stack:
        client = None
        if "mqtt" in transports:
            client = await stack.enter_async_context(
                _loop_client(spec["mqtt_port"], "bench-bare-pub", max_inflight_messages=WINDOW))

        async def publish(topic: str, body: bytes) -> None:
            assert client is not None
            try:
                await client.publish(topic, body, qos=1)
            finally:
                slots.release()

        def start_publish(topic: str, body: bytes) -> None:
            task = asyncio.create_task(publish(topic, body))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

        async def drain() -> None:
            """Publishes that found the window full, in order (so a full window never holds up the
            WebSocket side: the same decoupling as cti's outbox)."""
            while True:
                if not backlog:
                    wakeup.clear()
                    await wakeup.wait()
                    continue
                await slots.acquire()
                start_publish(*backlog.popleft())

        def mqtt_pending() -> int:
            return len(backlog) + len(in_flight)

        async def send_one(i: int, agent: str, phase: str, ts: str) -> None:
            nonlocal serial
            serial += 1
            now = time.time()
            body = bare_body(f"{prefix}{serial:016x}", 1_700_000_000_000 + serial, ts, agent,
                             pop_payload(i, agent, phase, now))
            ws = sockets.get(agent)
            if ws is not None:
                await ws.send_str(body.decode())
            if client is not None:
                if not backlog and not slots.locked():
                    await slots.acquire()  # free: does not wait
                    start_publish(agent_topic(agent), body)
                else:
                    backlog.append((agent_topic(agent), body))
                    wakeup.set()

        async def run_phase(cmd: dict[str, Any]) -> dict[str, Any]:
            phase, count, rate = cmd["phase"], cmd["count"], cmd["rate"]
            rng = random.Random(cmd["seed"])
            picks = [agents[rng.randrange(len(agents))] for _ in range(count)]
            stalled = False
            first = time.time()
            ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(first))  # cti formats it once a second too

            async def send(i: int) -> None:
                await send_one(i, picks[i], phase, ts)

            if rate:
                await paced(count, rate, send)
            else:  # the same flow control as the cti server's
                stalled = await _flood(count, lambda: mqtt_pending() >= FLOOD_MQTT_PENDING, send)
            last = time.time()
            await _settle(lambda: mqtt_pending() == 0, 30)
            return {"first": first, "last": last, "stalled": stalled, "ws_slow_closed": 0, "mqtt_dropped": 0}

        drainer = asyncio.create_task(drain(), name="bench.bare.drain")
        try:
            settle_heap()  # the same collector settings as the cti server: the code is compared, not them
            _reply(out, {"port": port})
            async for cmd in _commands():
                _reply(out, await run_phase(cmd))
        finally:
            drainer.cancel()
            for task in list(in_flight):
                task.cancel()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await runner.cleanup()


@dataclass(slots=True)
class _Phase:
    ids: set[str] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)
    dups: int = 0
    last: float = 0.0


class Recorder:
    """Receive time - send time of each envelope, once per id, per phase."""

    def __init__(self) -> None:
        self.phases: dict[str, _Phase] = {}

    def add(self, data: str | bytes) -> None:
        now = time.time()
        env = orjson.loads(data)
        payload = env.get("payload")
        if not isinstance(payload, dict) or "bench" not in payload:
            return  # the hub's hello
        phase, sent = payload["bench"]
        record = self.phases.get(phase)
        if record is None:
            record = self.phases[phase] = _Phase()
        key = env["id"]
        if key in record.ids:
            record.dups += 1
            return
        record.ids.add(key)
        record.latencies.append(now - sent)
        record.last = now

    async def wait(self, phase: str, expected: int, idle: float) -> dict[str, Any]:
        """Until ``expected`` arrived, or nothing new came for ``idle`` seconds; then the phase's figures."""
        seen, changed = -1, time.monotonic()
        while True:
            record = self.phases.get(phase)
            count = len(record.ids) if record is not None else 0
            if count >= expected:
                break
            if count != seen:
                seen, changed = count, time.monotonic()
            elif time.monotonic() - changed > idle:
                break
            await asyncio.sleep(0.02)
        record = self.phases.pop(phase, None) or _Phase()
        lat = sorted(record.latencies)
        return {"received": len(record.ids), "dups": record.dups, "last": record.last or None,
                "p50": _pct(lat, 50), "p99": _pct(lat, 99), "max": lat[-1] if lat else None,
                "mean": statistics.fmean(lat) if lat else None}


async def _limited(coros: Sequence[Awaitable[Any]], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[Any]) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def _serve_waits(recorder: Recorder, out: TextIO) -> None:
    async for cmd in _commands():
        _reply(out, await recorder.wait(cmd["phase"], cmd["expected"], cmd["idle"]))


async def ws_clients_role(spec: dict[str, Any], out: TextIO) -> None:
    """One aiohttp WebSocket per agent on the cti server and one on the bare server."""
    import aiohttp

    agents = agent_ids(spec["agents"])
    recorder = Recorder()
    urls = [f"http://127.0.0.1:{spec['cti_port']}/ws/agents/{a}" for a in agents]
    urls += [f"http://127.0.0.1:{spec['bare_port']}/bare/agents/{a}" for a in agents]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets: list[aiohttp.ClientWebSocketResponse] = await _limited(
            [session.ws_connect(u, compress=0) for u in urls], CONNECT_CONCURRENCY)

        async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for frame in ws:
                if frame.type is aiohttp.WSMsgType.TEXT:
                    recorder.add(frame.data)

        readers = [asyncio.create_task(read(ws), name=f"bench.ws.{i}") for i, ws in enumerate(sockets)]
        try:
            _reply(out, {"ready": len(sockets)})
            await _serve_waits(recorder, out)
        finally:
            for task in readers:
                task.cancel()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def mqtt_clients_role(spec: dict[str, Any], out: TextIO) -> None:
    """``mqtt_clients`` aiomqtt subscribers (QoS 1), each on its share of the agents' topics."""
    agents = agent_ids(spec["agents"])
    n = spec["mqtt_clients"]
    shares = [agents[i::n] for i in range(n)]
    recorder = Recorder()
    clients: list[Any] = []
    readers: list[asyncio.Task[None]] = []

    async def read(client: Any) -> None:
        async for msg in client.messages:
            recorder.add(msg.payload)

    async def connect(i: int, share: list[str]) -> None:
        client = _loop_client(spec["mqtt_port"], f"bench-sub-{i}", keepalive=60)
        await client.__aenter__()
        clients.append(client)
        await client.subscribe([(agent_topic(a), 1) for a in share])
        readers.append(asyncio.create_task(read(client), name=f"bench.mqtt.{i}"))

    try:
        await _limited([connect(i, share) for i, share in enumerate(shares)], CONNECT_CONCURRENCY)
        _reply(out, {"ready": len(clients)})
        await _serve_waits(recorder, out)
    finally:
        for task in readers:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.gather(*(c.__aexit__(None, None, None) for c in clients), return_exceptions=True)


ROLES: dict[str, Callable[[dict[str, Any], TextIO], Coroutine[Any, Any, None]]] = {
    "cti": cti_role, "bare": bare_role, "ws-clients": ws_clients_role, "mqtt-clients": mqtt_clients_role,
}


def run_role(role: str, spec: dict[str, Any]) -> None:
    import uvloop

    from cti.logs import configure_logging

    out = os.fdopen(os.dup(1), "w")  # replies to the parent; anything else printed goes to stderr
    os.dup2(2, 1)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of sockets
    configure_logging("json", "WARNING")
    uvloop.run(ROLES[role](spec, out))


# ---------------------------------------------------------------------------------------------- parent


class _Child:
    """A process of the run, spoken to in JSON lines over its stdin/stdout. Its own session, so a
    Ctrl-C reaches the parent only, which kills it; it also ends by itself when its stdin closes."""

    def __init__(self, role: str, proc: asyncio.subprocess.Process) -> None:
        self.role = role
        self.proc = proc

    @classmethod
    async def start(cls, role: str, spec: dict[str, Any]) -> _Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "--role", role, "--spec", json.dumps(spec),
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24,
        )
        return cls(role, proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def read(self, timeout: float) -> Any:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"benchmark child {self.role} ({self.pid}) exited with {await self.proc.wait()}")
        return json.loads(line)

    async def ask(self, command: dict[str, Any], timeout: float) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.read(timeout)

    async def stop(self, grace: float = 10.0) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None:
            self.proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), grace)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@dataclass(slots=True)
class Setup:
    agents: int
    transports: list[str]
    clients: dict[str, _Child]  # transport -> its client process
    broker_pid: int | None


async def measure(setup: Setup, path: str, server: _Child, *, phase: str, count: int, rate: float | None,
                  seed: int) -> list[dict[str, Any]]:
    """One phase on one path; a row per transport."""
    pids = {"server": server.pid, "broker": setup.broker_pid, **{t: c.pid for t, c in setup.clients.items()}}
    cpu_from = {k: _cpu_seconds(p) for k, p in pids.items()}
    timeout = (count / rate if rate else 0) + 600
    sent = await server.ask({"phase": phase, "count": count, "rate": rate, "seed": seed}, timeout)
    transports = list(setup.clients)
    waits = await asyncio.gather(*(setup.clients[t].ask({"phase": phase, "expected": count, "idle": IDLE_S},
                                                        timeout) for t in transports))
    used = {k: _cpu_seconds(p) - cpu_from[k] for k, p in pids.items()}
    lasts = [w["last"] for w in waits if w["last"]]
    wall = max(max(lasts, default=sent["last"]) - sent["first"], 1e-6)
    rows = []
    for transport, w in zip(transports, waits, strict=True):
        span = max((w["last"] or sent["last"]) - sent["first"], 1e-6)
        rows.append({
            "transport": transport, "path": path, "phase": "rate" if rate else "max", "offered": rate or count,
            "events_per_s": w["received"] / span, "p50_ms": _ms(w["p50"]), "p99_ms": _ms(w["p99"]),
            "max_ms": _ms(w["max"]), "mean_ms": _ms(w["mean"]), "received": w["received"],
            "lost": count - w["received"], "dups": w["dups"],
            "server_cpu_us_per_pop": 1e6 * used["server"] / count, "server_core": used["server"] / wall,
            "clients_core": used[transport] / wall,
            "broker_core": used["broker"] / wall if transport == "mqtt" and setup.broker_pid else None,
            "stalled": sent["stalled"], "ws_slow_closed": sent["ws_slow_closed"], "mqtt_dropped": sent["mqtt_dropped"],
        })
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 3)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from cti.devservices import dev_services

    transports = list(dict.fromkeys(args.transports))
    mqtt_clients = min(args.mqtt_clients or args.agents, args.agents)
    count = max(2, int(args.rate * args.seconds))
    children: list[_Child] = []
    started = time.monotonic()
    with dev_services() as services:
        spec: dict[str, Any] = {"agents": args.agents, "transports": transports, "redis_url": services.redis_url,
                                "mqtt_port": services.mqtt_port, "mqtt_clients": mqtt_clients}
        try:
            cti = await _Child.start("cti", spec)
            children.append(cti)
            bare = await _Child.start("bare", spec)
            children.append(bare)
            spec["cti_port"] = (await cti.read(60))["port"]
            spec["bare_port"] = (await bare.read(60))["port"]
            clients: dict[str, _Child] = {}
            for transport in transports:
                clients[transport] = await _Child.start(f"{transport}-clients", spec)
                children.append(clients[transport])
            for child in clients.values():
                await child.read(300)  # every socket open, every topic subscribed
            setup = Setup(args.agents, transports, clients,
                          _pid_with_argument(str(services.workdir / "mosquitto.conf")))
            ready_s = time.monotonic() - started
            paths = [("cti", cti), ("bare", bare)]
            for path, server in paths:  # warm-up: connections, sequence blocks for every agent, caches
                await measure(setup, path, server, phase=f"warm-{path}", count=2 * args.agents, rate=None, seed=-1)
            runs: list[list[dict[str, Any]]] = []
            for k in range(args.runs):
                rows: list[dict[str, Any]] = []
                order = paths if k % 2 == 0 else paths[::-1]
                for phase, n, rate in (("rate", count, args.rate), ("max", args.max_events, None)):
                    for path, server in order:
                        rows += await measure(setup, path, server, phase=f"r{k}-{phase}-{path}", count=n, rate=rate,
                                          seed=1000 * k)
                runs.append(rows)
                if not args.json:
                    print(f"run {k + 1}/{args.runs} done ({time.monotonic() - started:.0f} s)", file=sys.stderr,
                          flush=True)
        finally:
            await asyncio.gather(*(c.stop() for c in children[2:]), return_exceptions=True)
            await asyncio.gather(*(c.stop() for c in children[:2]), return_exceptions=True)
    table = with_ratios(median_rows(runs))
    return {
        "config": {"agents": args.agents, "transports": transports, "mqtt_clients": mqtt_clients,
                   "topics_per_mqtt_client": -(-args.agents // mqtt_clients), "rate": args.rate,
                   "seconds": args.seconds, "rate_events": count, "max_events": args.max_events, "runs": args.runs,
                   "message_bytes": message_bytes(), "cpus": os.cpu_count()},
        "rows": table, "targets": targets(table, args.rate), "runs": runs,
        "setup_s": round(ready_s, 1), "elapsed_s": round(time.monotonic() - started, 1),
    }


KEY = ("transport", "path", "phase", "offered")


def median_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per row (transport, path, phase) and figure, the median over the runs (so one noisy run does not
    decide). Runs list their rows in different orders: cti and bare take turns going first."""
    by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for rows in runs:
        for r in rows:
            by_key.setdefault(tuple(r[k] for k in KEY), []).append(r)
    out = []
    for same in by_key.values():
        row: dict[str, Any] = {k: same[0][k] for k in KEY}
        for name, value in same[0].items():
            if name in KEY:
                continue
            values = [r[name] for r in same if r[name] is not None]
            if isinstance(value, bool):
                row[name] = any(values)
            else:
                row[name] = statistics.median(values) if values else None
        out.append(row)
    return out


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    bare = {(r["transport"], r["phase"]): r for r in rows if r["path"] == "bare"}
    for r in rows:
        b = bare.get((r["transport"], r["phase"]))
        r["throughput_vs_bare"] = r["events_per_s"] / b["events_per_s"] if b and b["events_per_s"] else None
        r["p99_vs_bare"] = r["p99_ms"] / b["p99_ms"] if b and r["p99_ms"] is not None and b["p99_ms"] else None
    rows.sort(key=lambda r: (r["transport"] != "ws", r["phase"] != "rate", r["path"] != "cti"))
    return rows


def targets(rows: list[dict[str, Any]], rate: float) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r["path"] != "cti":
            continue
        if r["phase"] == "max":
            ratio = r["throughput_vs_bare"]
            out.append({"transport": r["transport"], "target": f"max events/s >= {TARGET_RATIO}x bare",
                        "value": ratio, "ok": ratio is not None and ratio >= TARGET_RATIO})
        else:
            p99 = r["p99_ms"]
            out.append({"transport": r["transport"], "target": f"p99 <= {TARGET_P99_MS:g} ms at {rate:g} pops/s",
                        "value": p99, "ok": p99 is not None and p99 <= TARGET_P99_MS and r["lost"] == 0})
    return out


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(result: dict[str, Any]) -> None:
    c = result["config"]
    shape = []
    if "ws" in c["transports"]:
        shape.append(f"{c['agents']} WebSockets per server")
    if "mqtt" in c["transports"]:
        shape.append(f"{c['mqtt_clients']} MQTT subscribers ({c['topics_per_mqtt_client']} agent topic(s) each, QoS 1)")
    print(f"push: {c['agents']} agents, {', '.join(shape)}; call.offered envelope {c['message_bytes']} B; "
          f"rate phase {c['rate']:g} pops/s x {c['seconds']:g} s, max phase {c['max_events']} pops; "
          f"median of {c['runs']} run(s); {c['cpus']} CPUs")
    head = (f"{'transport':<9} {'path':<4} {'offered':>12} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
            f"{'thr/bare':>8} {'p99/bare':>8} {'srv us/pop':>10} {'srv core':>8} {'cli core':>8} {'mosq core':>9} "
            f"{'lost':>5}")
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        offered = f"{r['offered']:g}/s" if r["phase"] == "rate" else f"max ({r['offered']:g})"
        flags = " STALLED" if r["stalled"] else ""
        if r["dups"]:
            flags += f" ({r['dups']:g} duplicates)"
        if r["ws_slow_closed"] or r["mqtt_dropped"]:
            flags += f" (ws slow-closed {r['ws_slow_closed']:g}, mqtt dropped {r['mqtt_dropped']:g})"
        print(f"{r['transport']:<9} {r['path']:<4} {offered:>12} {r['events_per_s']:>9.0f} {_f(r['p50_ms'], '.2f'):>7} "
              f"{_f(r['p99_ms'], '.2f'):>7} {_f(r['max_ms'], '.1f'):>7} {_f(r['throughput_vs_bare'], '.2f'):>8} "
              f"{_f(r['p99_vs_bare'], '.2f'):>8} {r['server_cpu_us_per_pop']:>10.0f} "
              f"{_f(100 * r['server_core'], '.0f') + '%':>8} {_f(100 * r['clients_core'], '.0f') + '%':>8} "
              f"{(_f(100 * r['broker_core'], '.0f') + '%') if r['broker_core'] is not None else '-':>9} "
              f"{r['lost']:>5.0f}{flags}")
    for t in result["targets"]:
        value = _f(t["value"], ".2f") + ("x" if "bare" in t["target"] else " ms")
        print(f"target {t['transport']}: {t['target']}: {value} -> {'ok' if t['ok'] else 'MISSED'}")
    print(f"connections up in {result['setup_s']:.0f} s; whole run {result['elapsed_s']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000, help="agents, each with a WebSocket and a topic")
    parser.add_argument("--rate", type=float, default=500.0, help="pops/s of the rate phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the rate phase")
    parser.add_argument("--max-events", type=int, default=20_000, help="pops of the max-throughput phase")
    parser.add_argument("--runs", type=int, default=3, help="runs; the median of each figure is reported")
    parser.add_argument("--transports", nargs="+", choices=["ws", "mqtt"], default=["ws", "mqtt"],
                        help="sinks the cti server has (and the bare one sends to); every pop goes to each")
    parser.add_argument("--mqtt-clients", type=int, default=0,
                        help="MQTT subscriber connections, the agents' topics shared among them (default: one per "
                             "agent)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)  # a child of a run
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        run_role(args.role, json.loads(args.spec))
        return
    if args.agents < 1 or args.runs < 1 or args.rate <= 0 or args.max_events < 2 or args.mqtt_clients < 0:
        parser.error("--agents, --runs, --rate must be positive, --max-events at least 2")
    from cti.logs import configure_logging

    configure_logging("json", "WARNING")

    async def guarded() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await bench(args)

    try:
        result = asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; child processes stopped", file=sys.stderr)
        raise SystemExit(130) from None
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
