"""The whole server in CTI routing mode against the simulator, reconciling: an agent on a call of the
dialplan's fallback ``Queue()`` is not offered a routed call; an agent left on_call by a lost Hangup is
put right by their phone's device state; a server restarted while a call talked frees the agent once
that call is gone, and one restarted while a caller waited on hold routes that caller.

The agents are Local-channel members (``Local/1001@sim-agents/n``), whose ``DeviceStateChange`` events the
simulator sends as Asterisk 22 does. The server is built as ``cti/app.py`` builds it
(:class:`ReconcilingServer` only adds a filter that loses chosen events on their way to the router)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from cti.ami.client import AmiClient
from cti.ami.codec import Message
from cti.app import CtiServer
from cti.config import AgentConfig, Config, RoutingModeConfig
from cti.sim.server import AmiServer
from tests.e2e import eventually, eventually_status, make_config, status

pytestmark = pytest.mark.network

ROUTING = """
skills: {billing: bills, rare: what no agent has}
languages: [en]
not_ready_reasons: [break, rona]
tiers:
  normal: {priority: 100, service_level: {percent: 80, within_s: 20}}
policy: strict
selection: longest_idle
reservation: {offer_timeout_s: 5, rona_not_ready_reason: rona}
wrapup_s: 1
entry_points:
  billing: {tier: normal, requires: {skills: {billing: 1}}}
  rare: {tier: normal, requires: {skills: {rare: 1}}}
agents:
  alice: {skills: {billing: 3}, languages: [en]}
  bob:   {skills: {billing: 3}, languages: [en]}
"""

AGENTS = [
    AgentConfig(id="alice", name="Alice", interface="Local/1001@sim-agents/n", extension="1001"),
    AgentConfig(id="bob", name="Bob", interface="Local/1002@sim-agents/n", extension="1002"),
]


def reconcile_config(redis_url: str, mqtt_port: int, tmp_path: Path, **sim: Any) -> Config:
    (tmp_path / "routing.yaml").write_text(ROUTING)
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port, mode="cti", **sim)
    # reservation_timeout_s 1: an idle phone under an on_call agent is believed after 2 s
    return config.model_copy(update={
        "agents": AGENTS,
        "routing": RoutingModeConfig(mode="cti", file=tmp_path / "routing.yaml", sweep_s=0.2,
                                     reservation_timeout_s=1),
    })


class ReconcilingServer(CtiServer):
    """The server as app.py builds it (the router's resync hook in ``EventPipeline.after_resync``);
    ``drop`` keeps the events it matches from the router (the call model still gets them)."""

    drop: Callable[[Message], bool] | None = None

    def _route_calls(self, redis: aioredis.Redis) -> Callable[[Message], None]:
        on_event = super()._route_calls(redis)
        router = self.router
        assert router is not None
        assert router.on_connect in self.pipeline.after_resync, "app.py wires the resync hook"
        drop, model_only = self.drop, self.pipeline.on_event
        if drop is None:
            return on_event

        def filtered(msg: Message) -> None:
            (model_only if drop(msg) else on_event)(msg)

        return filtered


@contextlib.asynccontextmanager
async def simulator(config: Config) -> AsyncIterator[tuple[AmiServer, Config]]:
    async with AmiServer(config=config.sim, agents=config.agents, port=0, random_arrivals=False) as sim:
        yield sim, config.model_copy(update={"ami": config.ami.model_copy(update={"port": sim.port})})


@contextlib.asynccontextmanager
async def serving(config: Config, *, drop: Callable[[Message], bool] | None = None
                  ) -> AsyncIterator[ReconcilingServer]:
    server = ReconcilingServer(config)
    server.drop = drop
    async with server:
        await eventually(lambda: server.health()["ok"], timeout=20)
        yield server


def place(sim: AmiServer, entry: str = "billing", **kw: Any) -> str:
    pbx: Any = sim.sim.pbx
    return str(pbx.place_call("13800000001", "Caller", now=sim.sim.clock(), entry=entry, language="en",
                              tier="normal", **kw))


def live_call(sim: AmiServer, linkedid: str) -> Any:
    return sim.sim.pbx.calls.get(linkedid)


def agent_on(sim: AmiServer, linkedid: str) -> str | None:
    """The agent talking to the caller, on the simulated PBX (a routed Dial() or app_queue's)."""
    call = live_call(sim, linkedid)
    leg = call.talking if call is not None else None
    return None if leg is None else str(leg.member.agent.id)


def counters(server: CtiServer) -> dict[str, Any]:
    return dict(server.health()["routing"])


async def test_the_simulator_lists_the_phones_it_reports_as_asterisk_does(
        redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    config = reconcile_config(redis_url, mqtt_port, tmp_path, hold_max_s=1)  # no router: Queue() takes the call
    async with simulator(config) as (sim, config):
        client = AmiClient(config=config.ami, on_event=lambda _msg: None)
        task = asyncio.create_task(client.run())
        try:
            async with asyncio.timeout(10):
                await client.wait_connected()
            response, items = await client.action_list("DeviceStateList")
            call = place(sim, talk=600, patience=600)
            await eventually(lambda: agent_on(sim, call) is not None, timeout=20)
            _, during = await client.action_list("DeviceStateList")
        finally:
            await client.close()
            await task
    assert (response["EventList"], response["Message"]) == ("start", "Device State Changes will follow")
    assert [(m.event, m["Device"], m["State"]) for m in items] == [
        ("DeviceStateChange", "Local/1001@sim-agents", "NOT_INUSE"),
        ("DeviceStateChange", "Local/1002@sim-agents", "NOT_INUSE")]
    assert sorted(m["State"] for m in during) == ["INUSE", "NOT_INUSE"]


async def test_an_agent_on_a_fallback_queue_call_is_not_offered_a_routed_call(
        redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    """No agent has the skill the first caller needs: after CTI_HOLD_MAX the dialplan gives them to
    Asterisk's Queue(), whose member answers. The next caller goes to the other agent."""
    config = reconcile_config(redis_url, mqtt_port, tmp_path, hold_max_s=1)
    async with simulator(config) as (sim, config), serving(config) as server:
        outside = place(sim, entry="rare", talk=600, patience=600)
        await eventually(lambda: agent_on(sim, outside) is not None, timeout=20)
        taken = agent_on(sim, outside)
        assert taken is not None
        other = "bob" if taken == "alice" else "alice"
        await eventually_status(server, taken, ("on_call", None))
        assert counters(server)["busy_outside"] == 1 and counters(server)["fallback"] == 1

        routed = place(sim, talk=600, patience=600)
        await eventually(lambda: agent_on(sim, routed) is not None, timeout=20)
        assert agent_on(sim, routed) == other
        assert counters(server)["rona"] == 0, "nobody was rung who could not answer"

        sim.sim.hangup(live_call(sim, outside).caller.name)  # the fallback call ends: ready after wrap-up
        await eventually_status(server, taken, ("ready", None))
        assert counters(server)["busy_outside_over"] == 1


async def test_an_agent_left_on_call_by_a_lost_hangup_is_freed_by_the_phone_state(
        redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    config = reconcile_config(redis_url, mqtt_port, tmp_path)
    async with simulator(config) as (sim, config), serving(config, drop=lambda m: m.event == "Hangup") as server:
        call = place(sim, talk=1, patience=600)
        await eventually(lambda: counters(server)["answered"] == 1, timeout=20)
        agent = agent_on(sim, call)
        assert agent is not None
        await eventually(lambda: live_call(sim, call) is None, timeout=20)  # talked, hung up: unseen by routing
        await eventually(lambda: counters(server)["stuck_on_call"] == 1, timeout=20)
        await eventually_status(server, agent, ("ready", None))


async def test_a_restart_while_talking_frees_the_agent_when_the_call_is_gone(
        redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    """Two calls talk when the server stops. One ends while it is down, the other after it is back:
    each agent is wrapped up and ready again."""
    config = reconcile_config(redis_url, mqtt_port, tmp_path)
    async with simulator(config) as (sim, config):
        async with serving(config) as server:
            first = place(sim, talk=600, patience=600)
            await eventually(lambda: agent_on(sim, first) is not None, timeout=20)
            second = place(sim, talk=600, patience=600)
            await eventually(lambda: counters(server)["answered"] == 2, timeout=20)
        ended, talking = agent_on(sim, first), agent_on(sim, second)
        assert {ended, talking} == {"alice", "bob"}
        sim.sim.hangup(live_call(sim, first).caller.name)
        async with serving(config) as server:
            await eventually(lambda: counters(server)["resync_ended"] == 1, timeout=20)
            assert ended is not None and talking is not None
            await eventually_status(server, ended, ("ready", None))
            assert await status(server, talking) == ("on_call", None)
            assert counters(server)["resync_followed"] == 1
            sim.sim.hangup(live_call(sim, second).caller.name)
            await eventually_status(server, talking, ("ready", None))
            assert counters(server)["stuck_on_call"] == 0, "followed again: its Hangup ended it"


@pytest.mark.parametrize("redis_kept", [True, False], ids=["store_kept", "store_lost"])
async def test_a_restart_while_a_caller_waits_on_hold_routes_that_caller(
        redis_url: str, mqtt_port: int, tmp_path: Path, redis_kept: bool) -> None:
    config = reconcile_config(redis_url, mqtt_port, tmp_path)
    async with simulator(config) as (sim, config):
        async with serving(config) as server:
            assert server.router is not None
            for agent in ("alice", "bob"):
                await server.router.set_not_ready(agent, "break")
            call = place(sim, talk=600, patience=600)
            async with asyncio.timeout(20):  # the CtiHold handled: the caller waits in the store
                while not await server.router.store.waiting():  # noqa: ASYNC110 - bounded poll of Redis, test only
                    await asyncio.sleep(0.05)
        if not redis_kept:  # Redis restarted without persistence: the agents come back ready
            client = aioredis.from_url(config.redis.url)
            keys = [k async for k in client.scan_iter(match=f"{config.redis.key_prefix}router:*")]
            await client.unlink(*keys)
            await client.aclose()
        async with serving(config) as server:
            assert server.router is not None
            if redis_kept:
                await eventually(lambda: counters(server)["resync_followed"] == 1, timeout=20)
                await server.router.set_ready("alice")
            else:
                await eventually(lambda: counters(server)["resync_enqueued"] == 1, timeout=20)
            await eventually(lambda: counters(server)["answered"] == 1, timeout=20)
            assert agent_on(sim, call) == "alice"


async def test_an_offer_to_a_caller_already_gone_is_dropped_and_the_agent_stays_ready(
        redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    """The caller's Hangup never reached the router (lost), so it still holds the call; when an agent
    becomes free it is offered, Asterisk answers the Setvar with ``No such channel``, and the router
    drops the call (counted ``gone``) and keeps the agent ready rather than putting them not ready."""
    config = reconcile_config(redis_url, mqtt_port, tmp_path)

    def caller_hangup(msg: Message) -> bool:
        return msg.event == "Hangup" and "cti-entry" in (msg.get("Channel") or "")

    async with simulator(config) as (sim, config), serving(config, drop=caller_hangup) as server:
        assert server.router is not None
        for agent in ("alice", "bob"):
            await server.router.set_not_ready(agent, "break")
        linkedid = place(sim, patience=1.0)
        await eventually(lambda: live_call(sim, linkedid) is None, timeout=20)  # hung up on hold
        assert len(await server.router.store.waiting()) == 1, "the router never heard of the hang-up"
        await server.router.set_ready("alice")
        await eventually(lambda: counters(server)["gone"] == 1, timeout=20)
        assert await server.router.store.waiting() == []
        assert await status(server, "alice") == ("ready", None)
        assert counters(server)["rona"] == 0 and counters(server)["offered"] == 0
