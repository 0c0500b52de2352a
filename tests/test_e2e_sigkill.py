"""`cti serve` killed with SIGKILL under calls and started again: no agent's screen is left on a
call that ended, and every answered call ends with its agent and outcome — the server in its
own process, the simulator here (on a clock the test moves), real Redis and mosquitto."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from cti.config import Config
from cti.devservices import free_port
from cti.sim.server import AmiServer
from tests.e2e import ROOT, Inbox, ManualClock, eventually, mqtt_listener

AGENTS = [{"id": n.lower(), "name": n, "interface": f"Local/{1001 + i}@sim-agents/n", "extension": str(1001 + i)}
          for i, n in enumerate(["Alice", "Bob", "Chen", "Dora"])]


async def _healthy(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def _until_healthy(port: int, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not await _healthy(port):  # noqa: ASYNC110 - polling another process over HTTP
            await asyncio.sleep(0.1)


async def _serve(config_path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cti.cli", "serve", "-c", str(config_path), "--log-format", "json",
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


async def test_sigkill_and_restart_leave_no_screen_stale(tmp_path: Path, redis_url: str, mqtt_port: int) -> None:
    http_port = free_port()
    settings: dict[str, Any] = {
        "ami": {"host": "127.0.0.1", "port": 5038, "ping_interval": 1, "ping_timeout": 10,
                "backoff_initial": 0.2, "backoff_max": 1},
        "redis": {"url": redis_url, "key_prefix": "sigkill:"},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "http": {"host": "127.0.0.1", "port": http_port},
        "agents": AGENTS,
        "directory": {"source": str(ROOT / "config" / "customers.yaml")},
        "sim": {"port": 0, "channel_style": "local", "calls_per_minute": 0, "ring_s": 1, "mean_talk_s": 600,
                "mean_patience_s": 600, "no_answer_prob": 0, "wrapup_s": 0},
    }
    config = Config.model_validate(settings)
    clock = ManualClock()
    inbox, subscribed = Inbox(), asyncio.Event()
    async with AmiServer(config=config.sim, agents=config.agents, port=0, random_arrivals=False,
                         clock=clock) as sim, asyncio.TaskGroup() as tg:
        settings["ami"]["port"] = sim.port
        config_path = tmp_path / "cti.yaml"
        config_path.write_text(yaml.safe_dump(settings))
        listener = tg.create_task(mqtt_listener(mqtt_port, "cti/v1/agents/+/events", inbox, subscribed))
        await asyncio.wait_for(subscribed.wait(), 10)
        server = await _serve(config_path)
        try:
            await _until_healthy(http_port)

            def step(seconds: float) -> None:
                clock.advance(seconds)
                sim.sim.tick()

            # Three calls answered, a fourth ringing Dora when the server dies.
            async def until(kind: str, linkedid: str) -> None:
                """Move the simulator's clock until the server has pushed ``kind`` for the call."""
                for _ in range(100):
                    if any(e["type"] == kind and e["payload"]["linkedid"] == linkedid for e in inbox.items):
                        return
                    step(0.25)
                    await asyncio.sleep(0.05)
                await inbox.wait_for(lambda e: e["type"] == kind and e["payload"]["linkedid"] == linkedid, timeout=20)

            talking = [sim.sim.place_call(f"1380000000{i}", f"Caller {i}", patience=600) for i in range(1, 4)]
            for linkedid in talking:
                await until("call.answered", linkedid)
            ringing = sim.sim.place_call("8613900000001", "Li Na", patience=600)
            await until("call.offered", ringing)
            await asyncio.sleep(0.5)  # the write-behind (0.2 s) has the calls in Redis
            server.send_signal(signal.SIGKILL)
            await server.wait()

            # While it is down: two callers hang up, the ringing call is answered.
            for linkedid in talking[:2]:
                sim.sim.hangup(sim.sim.pbx.calls[linkedid].caller.name)
            for _ in range(6):
                step(0.5)

            server = await _serve(config_path)
            await _until_healthy(http_port)
            for linkedid in talking[:2]:
                ended = await inbox.wait_for(lambda e, c=linkedid: e["type"] == "call.ended"
                                             and e["payload"]["linkedid"] == c, timeout=20)
                assert ended["payload"]["reason"] == "gone_at_resync" and ended["payload"]["outcome"] == "answered"
            await inbox.wait_for(lambda e: e["type"] == "call.answered" and e["payload"]["linkedid"] == ringing
                                 and e["payload"].get("while_disconnected"), timeout=20)

            # Everyone hangs up; every screen must end clear.
            for linkedid in [talking[2], ringing]:
                sim.sim.hangup(sim.sim.pbx.calls[linkedid].caller.name)
            step(0.5)
            await eventually(lambda: not sim.sim.pbx.calls)
            for linkedid in [talking[2], ringing]:
                await inbox.wait_for(lambda e, c=linkedid: e["type"] == "call.ended"
                                     and e["payload"]["linkedid"] == c, timeout=20)
        finally:
            if server.returncode is None:
                server.send_signal(signal.SIGTERM)
                await asyncio.wait_for(server.wait(), 20)
            listener.cancel()

    records = {r["linkedid"]: r for r in sim.sim.pbx.records}
    for linkedid in [*talking, ringing]:
        assert records[linkedid]["outcome"] == "answered"
        last: dict[str, str] = {}
        for e in inbox.items:
            if e["payload"].get("linkedid") == linkedid and e["type"].startswith("call."):
                last[e["agent"]] = e["type"]
        assert last and all(kind in ("call.ended", "call.offer_withdrawn") for kind in last.values()), (
            f"{linkedid}: a screen left on {last}")
        [ended] = [e for e in inbox.items if e["type"] == "call.ended" and e["payload"]["linkedid"] == linkedid]
        member = records[linkedid]["agent"]
        assert ended["payload"]["outcome"] == "answered" and ended["payload"]["segment_agent"] == member
