"""A client written from docs/events.md alone ("writing a client") survives a server restart: it
resumes from the last ``seq`` it saw, is sent what it missed once, and ends with the same view as
the server's snapshot, ringing offers included — simulator, real Redis and mosquitto.

The client here deliberately does not import the server's code: it folds envelopes by the rules the
docs state (dedupe by ``id``, ignore a ``seq`` not above the last, offered/answered show a call,
ended/withdrawn clear it, updated refreshes it, agent.state replaces the state)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from cti.app import CtiServer
from cti.config import AuthConfig
from cti.sim.server import AmiServer
from tests.e2e import ManualClock, eventually, make_config


@dataclass
class DocClient:
    """One agent's client: snapshot, then the WebSocket with ``?since=``, folding what arrives."""

    base: str
    agent: str
    token: str
    seq: int = 0
    state: dict[str, Any] | None = None
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)  # linkedid -> {"type", "seq", "payload"}
    ids: list[str] = field(default_factory=list)  # every envelope id received, duplicates included
    hellos: list[dict[str, Any]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {"seq": self.seq, "state": self.state,
                "offers": sorted(k for k, c in self.calls.items() if c["type"] == "call.offered"),
                "calls": sorted(k for k, c in self.calls.items() if c["type"] == "call.answered")}

    async def load_snapshot(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"{self.base}/api/agents/{self.agent}/snapshot",
                               headers={"Authorization": f"Bearer {self.token}"}) as r:
            assert r.status == 200, await r.text()
            snap: dict[str, Any] = await r.json()
        return snap

    def take(self, snap: dict[str, Any]) -> None:
        self.seq, self.state = snap["seq"], snap["state"]
        self.calls = {c["payload"]["linkedid"]: c for c in snap["offers"] + snap["calls"]}

    def apply(self, env: dict[str, Any]) -> None:
        self.ids.append(env["id"])
        if env["seq"] <= self.seq:
            return
        self.seq = env["seq"]
        payload = env["payload"]
        if env["type"] == "agent.state":
            self.state = payload
        elif env["type"] in ("call.offered", "call.answered"):
            self.calls[payload["linkedid"]] = {"type": env["type"], "seq": env["seq"], "payload": payload}
        elif env["type"] in ("call.ended", "call.offer_withdrawn"):
            self.calls.pop(payload["linkedid"], None)
        elif env["type"] == "call.updated" and payload["linkedid"] in self.calls:
            self.calls[payload["linkedid"]]["payload"] = payload

    async def follow(self, session: aiohttp.ClientSession, opened: asyncio.Event) -> None:
        url = f"{self.base}/ws/agents/{self.agent}?token={self.token}&since={self.seq}"
        async with session.ws_connect(url) as ws:
            async for frame in ws:
                data = json.loads(frame.data)
                if data["type"] == "hello":
                    self.hellos.append(data)
                    if not data["resume"]["complete"]:
                        self.take(await self.load_snapshot(session))
                    opened.set()
                    continue
                self.apply(data)


async def _connect(client: DocClient, session: aiohttp.ClientSession, tg: asyncio.TaskGroup) -> asyncio.Task[None]:
    opened = asyncio.Event()
    task = tg.create_task(client.follow(session, opened))
    await asyncio.wait_for(opened.wait(), 10)
    return task


async def _server_view(server: CtiServer, agent: str) -> dict[str, Any]:
    snap = await server.snapshot(agent)
    return {"seq": snap["seq"], "state": snap["state"],
            "offers": sorted(c["payload"]["linkedid"] for c in snap["offers"]),
            "calls": sorted(c["payload"]["linkedid"] for c in snap["calls"])}


async def test_a_docs_only_client_resumes_across_a_restart(redis_url: str, mqtt_port: int) -> None:
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port, ring_s=1)
    config = config.model_copy(update={"auth": AuthConfig(enabled=True)})
    clock = ManualClock()
    async with AmiServer(config=config.sim, agents=config.agents, port=0, random_arrivals=False,
                         clock=clock) as sim, aiohttp.ClientSession() as session, asyncio.TaskGroup() as tg:
        config = config.model_copy(update={"ami": config.ami.model_copy(update={"port": sim.port})})
        async with CtiServer(config) as first:
            await eventually(lambda: first.health()["ok"])
            assert first.tokens is not None
            base = f"http://127.0.0.1:{first.http_port}"
            clients = {a.id: DocClient(base, a.id, (await first.tokens.issue(a.id, "agent"))[0])
                       for a in config.agents}
            for client in clients.values():
                client.take(await client.load_snapshot(session))
            tasks = [await _connect(client, session, tg) for client in clients.values()]

            talks = sim.sim.place_call("13800000001", "Wang Lei")
            await eventually(lambda: any(talks in c.calls for c in clients.values()))
            clock.advance(1.5)  # the ring is answered
            await eventually(lambda: any(c.calls.get(talks, {}).get("type") == "call.answered"
                                         for c in clients.values()))
            for task in tasks:  # the clients go away (a laptop closed) ...
                task.cancel()
            rings = sim.sim.place_call("13800000002", "Zhang Wei")  # ... and miss this pop
            await eventually(lambda: any(
                c.offers for c in (first.model.calls.get(rings),) if c is not None))
            for agent in clients:
                await first.snapshot(agent)  # published and stored
            await eventually(lambda: not first.store._dirty)  # the calls are in Redis too
        # The server is gone too; meanwhile the answered caller hangs up.
        sim.sim.hangup(sim.sim.pbx.calls[talks].caller.name)
        await eventually(lambda: talks not in sim.sim.pbx.calls)

        async with CtiServer(config.model_copy(update={"http": config.http.model_copy(
                update={"port": first.http_port})})) as second:
            await eventually(lambda: second.health()["ok"])
            for client in clients.values():
                client.base = f"http://127.0.0.1:{second.http_port}"
            tasks = [await _connect(client, session, tg) for client in clients.values()]
            for client in clients.values():
                resume = client.hellos[-1]["resume"]
                assert resume["complete"], resume
            await eventually(lambda: not any(talks in c.calls for c in clients.values()))

            for agent, client in clients.items():
                await eventually(lambda a=agent, c=client: c.seq == second.views.view(a).seq)
                assert client.view() == await _server_view(second, agent)
                assert len(client.ids) == len(set(client.ids)), "no event sent twice"
            ringing = [a for a, c in clients.items() if rings in c.view()["offers"]]
            assert len(ringing) == 1, "the pop missed while away is on the screen after the restart"
            for task in tasks:
                task.cancel()
