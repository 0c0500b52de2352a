"""The whole server against the simulator, with real Redis and mosquitto, for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from cti.app import CtiServer
from cti.config import AgentConfig, Config
from cti.sim.server import AmiServer

ROOT = Path(__file__).resolve().parents[1]
AGENTS = [
    AgentConfig(id="alice", name="Alice", interface="PJSIP/1001"),
    AgentConfig(id="bob", name="Bob", interface="PJSIP/1002"),
]


def make_config(*, redis_url: str, mqtt_port: int, **sim: Any) -> Config:
    return Config.model_validate({
        # A Pong that a loaded machine answers late must not look like a dead link: the tests cut
        # the link with drop_connections(), which the client sees at once.
        "ami": {"host": "127.0.0.1", "port": 5038, "ping_interval": 1, "ping_timeout": 10,
                "backoff_initial": 0.2, "backoff_max": 1},
        "redis": {"url": redis_url, "key_prefix": f"t{uuid.uuid4().hex[:8]}:"},  # each test its own keys
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "http": {"host": "127.0.0.1", "port": 0},
        "auth": {"enabled": False},  # tests/test_auth_web.py runs the server with tokens
        "agents": [a.model_dump() for a in AGENTS],
        "directory": {"source": str(ROOT / "config" / "customers.yaml")},
        "sim": {"enabled": True, "port": 0, "calls_per_minute": 0, "ring_s": 0.3, "mean_talk_s": 60,
                "mean_patience_s": 600, "no_answer_prob": 0, "wrapup_s": 0, "tick_s": 0.02, **sim},
    })


def with_auth(config: Config) -> Config:
    """The config with tokens required (make_config turns auth off for the tests that are not about it)."""
    return config.model_copy(update={"auth": config.auth.model_copy(update={"enabled": True})})


async def token_headers(server: CtiServer, subject: str, role: str = "agent") -> dict[str, str]:
    """A new token for ``subject``, as the header that sends it."""
    assert server.tokens is not None
    token, _ = await server.tokens.issue(subject, role)  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {token}"}


def own_topics(config: Config) -> Config:
    """A topic prefix of the test's own: retained messages on the session's broker outlive a test, and
    the next one must not read them as its own."""
    return config.model_copy(update={"mqtt": config.mqtt.model_copy(
        update={"topic_prefix": f"t{uuid.uuid4().hex[:8]}/v1"})})


@dataclass
class Inbox:
    """Envelopes one agent client received, with a way to wait for the one a test needs."""

    items: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def add(self, envelope: dict[str, Any]) -> None:
        async with self.changed:
            self.items.append(envelope)
            self.changed.notify_all()

    async def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: any(pred(e) for e in self.items))
        return next(e for e in self.items if pred(e))

    def types(self, linkedid: str) -> list[str]:
        return [e["type"] for e in self.items if e["payload"].get("linkedid") == linkedid]


async def mqtt_listener(port: int, topic: str, inbox: Inbox, subscribed: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"test-{id(inbox)}") as client:
        await client.subscribe(topic, qos=1)
        subscribed.set()
        async for message in client.messages:
            await inbox.add(json.loads(message.payload))  # type: ignore[arg-type]


async def ws_listener(url: str, inbox: Inbox, opened: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        async for frame in ws:
            data = json.loads(frame.data)
            if data.get("type") == "hello":
                opened.set()
                continue
            await inbox.add(data)


async def eventually(pred: Callable[[], bool], timeout: float = 10) -> None:
    """Poll state the server exposes no event for (the model, the simulator's PBX)."""
    async with asyncio.timeout(timeout):
        while not pred():  # noqa: ASYNC110 - nothing to wait on: these are plain attributes
            await asyncio.sleep(0.02)


@dataclass
class ManualClock:
    """The simulator's time, moved only by the test: no ring, talk or patience timer fires by itself
    however slow the machine is. Starts at the wall-clock time so event Timestamps look real."""

    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


#: The server stops in well under a second; this only bounds a stop that never comes.
STOP_WITHIN_S = 20.0


def _await_chain(task: asyncio.Task[Any]) -> str:
    """Where a task is suspended: each coroutine it awaits, outermost first."""
    chain: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_name} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " > ".join(chain) or repr(task)


async def _report_a_stuck_stop(stuck: list[str]) -> None:
    """If the server has not stopped after STOP_WITHIN_S, name each task that was asked to stop
    and is still running (it swallowed its cancellation), then cancel it again so the test fails
    with that report instead of hanging until pytest's timeout."""
    await asyncio.sleep(STOP_WITHIN_S)
    me = asyncio.current_task()
    for task in asyncio.all_tasks():
        if task is not me and not task.done() and task.cancelling():
            stuck.append(f"{task.get_name()}: {_await_chain(task)}")
            task.cancel()
    if stuck:
        print("server did not stop; cancelled but still running:", *stuck, sep="\n  ", file=sys.stderr)


@contextlib.asynccontextmanager
async def running(
    config: Config, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[tuple[AmiServer, CtiServer]]:
    """The simulator (on ``clock``; pass a :class:`ManualClock` to drive its timers) and the server.

    Leaving it stops both; a server that does not stop fails the test, naming the task that hung."""
    stuck: list[str] = []
    watchdog: asyncio.Task[None] | None = None
    async with AmiServer(config=config.sim, agents=config.agents, port=0, random_arrivals=False,
                         clock=clock) as sim:
        config = config.model_copy(update={"ami": config.ami.model_copy(update={"port": sim.port})})
        try:
            async with CtiServer(config) as server:
                try:
                    await eventually(lambda: server.health()["ok"])
                    yield sim, server
                finally:
                    watchdog = asyncio.create_task(_report_a_stuck_stop(stuck), name="test.stop_watchdog")
        finally:
            if watchdog is not None:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
    assert not stuck, f"the server did not stop within {STOP_WITHIN_S:.0f}s: " + "; ".join(stuck)


async def status(server: CtiServer, agent: str) -> tuple[str, str | None]:
    """An agent's routing status and not-ready reason, as the router's store has them (CTI mode)."""
    assert server.router is not None
    state = await server.router.store.agent(agent)
    assert state is not None
    return state.status, state.not_ready_reason


async def eventually_status(server: CtiServer, agent: str, want: tuple[str, str | None]) -> None:
    async with asyncio.timeout(20):
        while await status(server, agent) != want:  # noqa: ASYNC110 - bounded poll of Redis, test only
            await asyncio.sleep(0.05)
