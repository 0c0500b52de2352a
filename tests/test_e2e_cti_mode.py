"""The whole server in CTI routing mode against the simulator playing extensions_cti.conf: a caller
runs a flow over the server's own FastAGI endpoint, waits on hold, and the server picks, rings and
connects an agent; no answer puts the agent not ready (RONA) and the next agent gets the call."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cti.app import CtiServer
from cti.config import AgentConfig, AgiConfig, Config, RoutingModeConfig
from cti.devservices import free_port
from cti.sim.server import AmiServer
from tests.e2e import Inbox, eventually, eventually_status, make_config, status, ws_listener
from tests.kpi_expect import Visit, figures_of, metric_values, on_day, queue_visits, same, wrap_ups

pytestmark = pytest.mark.network

FLOW = """
description: one choice
languages: [en]
default_language: en
start: menu
prompts:
  choose: {file: demo/choose, text: {en: Press 1 for billing.}}
nodes:
  menu:
    type: menu
    prompt: choose
    options:
      1: {next: billing}
    timeout_ms: 3000
    max_retries: 1
    default: billing
  billing: {type: route, entry_point: billing}
"""

ROUTING = """
skills: {billing: bills}
languages: [en]
groups: {front_line: everyone}
not_ready_reasons: [break, rona]
tiers:
  normal: {priority: 100, service_level: {percent: 80, within_s: 20}}
policy: strict
selection: best_proficiency
reservation: {offer_timeout_s: 2, rona_not_ready_reason: rona}
wrapup_s: 1
entry_points:
  billing: {tier: normal, requires: {skills: {billing: 1}}}
agents:
  alice: {skills: {billing: 3}, languages: [en], groups: [front_line]}
  bob:   {skills: {billing: 2}, languages: [en], groups: [front_line]}
  dora:  {skills: {billing: 5}, languages: [en], groups: [front_line]}
"""

#: Dora is the best for billing, but her phone (PJSIP/1009) is not on the simulated PBX: Asterisk
#: answers the dial with CHANUNAVAIL, which routing treats as no answer.
DORA = AgentConfig(id="dora", name="Dora", interface="PJSIP/1009")


def cti_config(redis_url: str, mqtt_port: int, tmp_path: Path, *, with_dora: bool = False, ring_for_s: int = 2,
               **sim: Any) -> Config:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "onechoice.yaml").write_text(FLOW)
    (tmp_path / "routing.yaml").write_text(ROUTING.replace("offer_timeout_s: 2", f"offer_timeout_s: {ring_for_s}"))
    agi_port = free_port()  # the simulated Asterisk's AGI() needs the address before the server starts
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port, mode="cti", mean_talk_s=1,
                         agi_url=f"agi://127.0.0.1:{agi_port}/onechoice", agi_scenarios=["1"], **sim)
    agents = [*config.agents, DORA] if with_dora else config.agents
    return config.model_copy(update={
        "agents": agents,
        "agi": AgiConfig(enabled=True, port=agi_port, flows=tmp_path / "flows"),
        "routing": RoutingModeConfig(mode="cti", file=tmp_path / "routing.yaml", sweep_s=0.2),
    })


@contextlib.asynccontextmanager
async def cti_running(config: Config) -> AsyncIterator[tuple[AmiServer, CtiServer]]:
    """The simulated PBX knows only alice's and bob's phones; the server may know more agents."""
    phones = [a for a in config.agents if a.id in ("alice", "bob")]
    async with AmiServer(config=config.sim, agents=phones, port=0, random_arrivals=False) as sim:
        config = config.model_copy(update={"ami": config.ami.model_copy(update={"port": sim.port})})
        async with CtiServer(config) as server:
            await eventually(lambda: server.health()["ok"])
            assert server.agi is not None
            yield sim, server


def place(sim: AmiServer, **kw: Any) -> str:
    pbx: Any = sim.sim.pbx
    return str(pbx.place_call("13800000001", "Caller", now=sim.sim.clock(), keys="1", **kw))


def counters(server: CtiServer) -> dict[str, Any]:
    return dict(server.health()["routing"])


async def test_a_caller_goes_through_the_ivr_and_hold_to_the_best_agent(
        redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    config = cti_config(redis_url, mqtt_port, tmp_path)
    async with cti_running(config) as (sim, server):
        inbox, opened = Inbox(), asyncio.Event()
        url = f"http://127.0.0.1:{server.http_port}/ws/agents/alice"
        async with asyncio.TaskGroup() as group:
            listener = group.create_task(ws_listener(url, inbox, opened))
            await opened.wait()
            place(sim, talk=1.0, patience=600)
            offered = await inbox.wait_for(lambda e: e["type"] == "call.offered", timeout=20)
            assert offered["payload"]["caller"] == "13800000001"
            await inbox.wait_for(lambda e: e["type"] == "call.answered", timeout=20)
            await eventually(lambda: counters(server)["answered"] == 1, timeout=20)
            await inbox.wait_for(lambda e: e["type"] == "call.ended", timeout=20)
            listener.cancel()
        await eventually(lambda: any(r.get("cti") for r in sim.sim.pbx.records), timeout=20)
        record = next(r for r in sim.sim.pbx.records if r.get("cti"))
        assert record["cti"]["answered_by"] == "alice" and record["cti"]["entry"] == "billing"
        # After the call and its wrap-up the agent is ready for the next one.
        await eventually_status(server, "alice", ("ready", None))


async def test_no_answer_puts_the_agent_not_ready_and_the_call_goes_to_the_next(
        redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    config = cti_config(redis_url, mqtt_port, tmp_path, with_dora=True)
    async with cti_running(config) as (sim, server):
        place(sim, talk=1.0, patience=600)
        await eventually(lambda: counters(server)["rona"] == 1, timeout=20)
        await eventually_status(server, "dora", ("not_ready", "rona"))
        await eventually(lambda: counters(server)["answered"] == 1, timeout=20)
        await eventually(lambda: any(r.get("cti") for r in sim.sim.pbx.records), timeout=20)  # the call ended
        record = next(r for r in sim.sim.pbx.records if r.get("cti"))
        assert next(ring["outcome"] for ring in record["cti"]["rings"]) == "chanunavail"
        assert record["cti"]["answered_by"] == "alice"

        base = f"http://127.0.0.1:{server.http_port}/api/agents"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/dora/state", json={"state": "ready"}) as r:
                assert r.status == 200 and (await r.json())["state"] == "ready"
            async with http.post(f"{base}/nobody/state", json={"state": "ready"}) as r:
                assert r.status == 404 and (await r.json())["error_id"] == "no-such-agent"
            async with http.post(f"{base}/dora/state", json={"state": "not_ready", "reason": "nap"}) as r:
                assert r.status == 400 and (await r.json())["error_id"] == "bad-reason"
            async with http.post(f"{base}/dora/state", json={"state": "not_ready"}) as r:
                assert r.status == 400 and (await r.json())["error_id"] == "reason-required"
            async with http.post(f"{base}/dora/state", json={"state": "on_call"}) as r:
                assert r.status == 400 and (await r.json())["error_id"] == "bad-state"
        assert await status(server, "dora") == ("ready", None)
        # Why: dora first (the best level), then alice once dora was not ready. With trunk
        # callers the held channel is the first one, so the router's call id is the call's linkedid.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{server.http_port}/api/routing/calls/{record['linkedid']}") as r:
                assert r.status == 200
                explained = await r.json()
            async with http.get(f"http://127.0.0.1:{server.http_port}/api/routing/calls/nope") as r:
                assert r.status == 404
    assert [d["agent"] for d in explained["decisions"]] == ["dora", "alice"]
    assert explained["waiting"] is None  # answered: no longer waiting


async def set_state(server: CtiServer, agent: str, state: str, reason: str | None = None) -> int:
    async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{server.http_port}/api/agents/{agent}/state",
            json={"state": state, "reason": reason}) as r:
        return r.status


async def ended_record(sim: AmiServer) -> dict[str, Any]:
    await eventually(lambda: any(r.get("cti") for r in sim.sim.pbx.records), timeout=20)
    return next(r for r in sim.sim.pbx.records if r.get("cti"))


async def test_a_caller_who_gives_up_on_hold_is_abandoned_and_nobody_is_offered_it(
        redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    config = cti_config(redis_url, mqtt_port, tmp_path)
    async with cti_running(config) as (sim, server):
        for agent in ("alice", "bob"):
            assert await set_state(server, agent, "not_ready", "break") == 200
        place(sim, patience=1.0)
        record = await ended_record(sim)
        await eventually(lambda: counters(server)["abandoned_hold"] == 1, timeout=20)
        assert record["cti"]["outcome"] == "abandoned_hold" and record["cti"]["rings"] == []
        assert counters(server)["offered"] == 0
        assert server.router is not None and await server.router.store.waiting() == []


async def test_a_caller_who_hangs_up_while_the_agent_rings_frees_the_agent_without_rona(
        redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    # Alice's phone rings for 30 s before she would answer; the routing rings her for up to 60 s;
    # the caller gives up after 2 s, while it rings.
    config = cti_config(redis_url, mqtt_port, tmp_path, ring_for_s=60, ring_s=30)
    async with cti_running(config) as (sim, server):
        assert await set_state(server, "bob", "not_ready", "break") == 200
        place(sim, patience=2.0)
        record = await ended_record(sim)
        await eventually(lambda: counters(server)["abandoned_ringing"] == 1, timeout=20)
        assert record["cti"]["outcome"] == "abandoned_ringing"
        assert [r["outcome"] for r in record["cti"]["rings"]] == ["cancel"]
        await eventually_status(server, "alice", ("ready", None))
        assert counters(server)["rona"] == 0


async def test_an_agent_who_blind_transfers_the_caller_wraps_up_and_is_ready_again(
        redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    config = cti_config(redis_url, mqtt_port, tmp_path, transfer_share=1.0, transfer_to_agent_share=1.0)
    async with cti_running(config) as (sim, server):
        assert await set_state(server, "bob", "not_ready", "break") == 200
        place(sim, talk=1.0, patience=600)
        await eventually(lambda: counters(server)["answered"] == 1, timeout=20)
        await eventually(lambda: any(s.get("transferred_from") for r in sim.sim.pbx.records
                                     for s in r.get("segments", [])), timeout=30)
        await eventually_status(server, "alice", ("ready", None))
        record = next(r for r in sim.sim.pbx.records if r.get("cti"))
        assert record["cti"]["answered_by"] == "alice"


async def test_agent_commands_drive_the_routing_state_and_refuse_illegal_steps(
        redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    """CTI mode: the commands are the router's manual steps; a refusal names the current state."""
    config = cti_config(redis_url, mqtt_port, tmp_path)
    async with cti_running(config) as (_sim, server):
        status, reply = await server.run_command("alice", {"command": "not_ready", "reason": "break"})
        assert status == 200 and reply["state"] == "not_ready"
        await eventually_status(server, "alice", ("not_ready", "break"))
        status, reply = await server.run_command("alice", {"command": "not_ready", "reason": "nap"})
        assert status == 400 and reply["error_id"] == "bad-reason"
        status, reply = await server.run_command("alice", {"command": "logout"})
        assert status == 200
        await eventually_status(server, "alice", ("logged_out", None))
        status, reply = await server.run_command("alice", {"command": "end_wrap_up"})
        assert status == 409 and reply["error_id"] == "illegal-transition"
        assert reply["details"]["current"] == "logged_out" and "logged_out" in reply["message"]
        status, reply = await server.run_command("alice", {"command": "login"})
        assert status == 200 and reply["state"] == "ready"
        await eventually_status(server, "alice", ("ready", None))


HOLD_OUTCOMES = {"answered": "answered", "abandoned_hold": "abandoned", "abandoned_ringing": "abandoned",
                 "fallback": "unanswered"}


async def test_kpis_count_each_hold_as_a_visit_of_its_entry_point(
        redis_url: str, redis_client: Any, mqtt_port: int, tmp_path: Path) -> None:
    """CTI routing mode: a caller's wait for the router is one visit of its entry point (and of the
    skills it asked for and its routing tier), ending answered, abandoned (on hold or while an agent
    rang) or handed to the fallback queue, whose own visit counts in that queue: every figure equal to
    what the simulator's records say, and the waiting callers on the board while they wait."""
    config = cti_config(redis_url, mqtt_port, tmp_path, hold_max_s=4)
    thresholds = {"billing": 2.0, "support": 20.0}
    config = config.model_copy(update={"kpi": config.kpi.model_copy(update={
        "short_abandon_s": 1.5, "service_level_by_queue": {"billing": 2.0}})})
    # Two agents, 1 s talks and 1 s wrap-up: four answered, the rest handed on at 4 s on hold, but
    # for the two (behind the first four) who give up: patience counts from 1.4 s after the call comes
    # in, the hold from the IVR's route, half a second after (a short abandon, then one that is not).
    patience = [600, 600, 600, 600, 0.3, 2.0, 600, 600, 600, 600]
    async with cti_running(config) as (sim, server), aiohttp.ClientSession() as http:
        placed = [place(sim, talk=1.0, patience=p) for p in patience]
        await eventually(lambda: server.kpis.board()["entry_points"].get("billing", {}).get("waiting", 0) >= 2,
                         timeout=20)
        await eventually(lambda: all(c in server.model.ended for c in placed)
                         and {r["linkedid"] for r in sim.sim.pbx.records} >= set(placed), timeout=60)
        held = [r for r in sim.sim.pbx.records if r["linkedid"] in placed and r["cti"]["enqueued_at"] is not None]
        answered = sum(r["cti"]["outcome"] == "answered" for r in held)
        await eventually(lambda: (today := server.kpis.book.figures(server.kpis.board()["at"])["today"]["all"][""])
                         ["arrivals"] == len(held) and today["wrap_ups"] == answered, timeout=20)
        wraps = await wrap_ups(redis_client, config.redis.key_prefix)
        base = f"http://127.0.0.1:{server.http_port}"
        async with http.get(f"{base}/api/kpis") as response:
            api = await response.json()
        async with http.get(f"{base}/metrics") as response:
            metrics = metric_values(await response.text())

    records = [r for r in sim.sim.pbx.records if r["linkedid"] in placed]
    day = api["day"]
    visits = list(queue_visits(records, day, thresholds, tier="normal"))
    for r in records:
        cti = r["cti"]
        if cti["enqueued_at"] is None or not on_day(cti["enqueued_at"] + cti["hold_s"], day):
            continue
        outcome = HOLD_OUTCOMES[cti["outcome"]]
        talk = next((s["talk_s"] for s in r["segments"] if s["queue"] is None and s["outcome"] == "answered"), None)
        visits.append(Visit((("all", ""), ("entry", "billing"), ("skill", "billing"), ("tier", "normal")),
                            outcome, cti["hold_s"], thresholds["billing"], talk if outcome == "answered" else None,
                            "fallback" if outcome == "unanswered" else None,
                            wraps[r["linkedid"]] if outcome == "answered" else None))
    want = figures_of(visits, 1.5)
    outcomes = {r["cti"]["outcome"] for r in records}
    assert {"answered", "fallback"} <= outcomes and outcomes & {"abandoned_hold", "abandoned_ringing"}, outcomes
    assert want[("entry", "billing")]["short_abandons"] >= 1 and want[("queue", "support")]["offered"] >= 1
    assert 0 < want[("entry", "billing")]["service_level"] < 1
    for (kind, value), w in want.items():
        same(api["today"][kind][value], w, f"today {kind} {value}")
    assert api["entry_points"]["billing"]["waiting"] == 0
    assert want[("entry", "billing")]["acw_s"] > 0.9, "the routing config's 1 s wrap-up, in handle time"
    for key in ("offered", "answered", "abandoned", "service_level", "asa_s", "aht_s", "acw_s"):
        labels = (("kind", "entry"), ("value", "billing"), ("window", "today"))
        assert math.isclose(metrics[(f"cti_kpi_{key}", labels)], want[("entry", "billing")][key], abs_tol=2e-3), key
    fallbacks = (("kind", "entry"), ("reason", "fallback"), ("value", "billing"), ("window", "today"))
    assert metrics[("cti_kpi_unanswered", fallbacks)] == want[("entry", "billing")]["unanswered"]["fallback"]
    assert metrics[("cti_kpi_entry_calls_waiting", (("entry_point", "billing"),))] == 0
