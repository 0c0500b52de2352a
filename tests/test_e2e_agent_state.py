"""One agent state machine on every transport, in both routing modes: ``agent.state`` carries
``state`` / ``reason`` / ``since`` (CTI mode: every routing status, wrap-up with its end, extended
and ended early), the MQTT ``…/state`` topic keeps the last one retained, and commands arrive over
MQTT too, with the agent's token."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from cti.app import CtiServer
from cti.config import Config
from tests.e2e import Inbox, eventually, make_config, own_topics, running, with_auth, ws_listener
from tests.test_e2e_cti_mode import cti_config, cti_running, place

pytestmark = pytest.mark.network


async def _retained_state(port: int, agent: str, prefix: str) -> dict[str, Any]:
    """What a client that subscribes now is told at once: the retained state envelope (one that
    arrives live, published just as it subscribed, is not it: subscribe again)."""
    async with asyncio.timeout(10):
        while True:
            async with aiomqtt.Client("127.0.0.1", port, identifier=f"test-retained-{agent}") as client:
                await client.subscribe(f"{prefix}/agents/{agent}/state", qos=1)
                async for message in client.messages:
                    if message.retain:
                        return dict(json.loads(message.payload))  # type: ignore[arg-type]
                    break


async def _eventually_retained(port: int, agent: str, state: str, prefix: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            envelope = await _retained_state(port, agent, prefix)
            if envelope["payload"].get("state") == state:
                return envelope
            await asyncio.sleep(0.05)


def _states(inbox: Inbox) -> list[str]:
    return [e["payload"]["state"] for e in inbox.items if e["type"] == "agent.state"]


async def test_cti_mode_pushes_every_routing_state_and_wrap_up_can_be_extended_then_ended(
        redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    config = own_topics(cti_config(redis_url, mqtt_port, tmp_path))
    prefix = config.mqtt.topic_prefix
    (tmp_path / "routing.yaml").write_text((tmp_path / "routing.yaml").read_text().replace("wrapup_s: 1",
                                                                                        "wrapup_s: 120"))
    async with cti_running(config) as (sim, server):
        inbox, opened = Inbox(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            listener = tg.create_task(ws_listener(f"http://127.0.0.1:{server.http_port}/ws/agents/alice",
                                                  inbox, opened))
            await asyncio.wait_for(opened.wait(), 10)
            # every agent shows a state from the start, before any call (the router added them ready)
            await eventually(lambda: (server.views.view("alice").state or {}).get("state") == "ready")
            assert (await _retained_state(mqtt_port, "alice", prefix))["payload"]["state"] == "ready"
            assert (await server.run_command("bob", {"command": "not_ready", "reason": "break"}))[0] == 200
            place(sim, talk=0.5, patience=600)
            wrap = await inbox.wait_for(lambda e: e["type"] == "agent.state"
                                        and e["payload"]["state"] == "wrap_up", timeout=30)
            states = _states(inbox)
            assert states[states.index("offered"):] == ["offered", "on_call", "wrap_up"], states
            payload = wrap["payload"]
            assert payload["mode"] == "cti" and payload["agent_id"] == "alice" and payload["name"] == "Alice"
            assert payload["since"] > 0 and payload["wrap_up_ends_at"] > payload["since"] + 100

            code, reply = await server.run_command("alice", {"command": "extend_wrap_up", "seconds": 30})
            assert code == 200, reply
            assert reply["wrap_up_ends_at"] == pytest.approx(payload["wrap_up_ends_at"] + 30, abs=0.01)
            extended = await inbox.wait_for(lambda e: e["type"] == "agent.state" and e["seq"] > wrap["seq"])
            assert extended["payload"]["wrap_up_ends_at"] == reply["wrap_up_ends_at"]
            retained = await _retained_state(mqtt_port, "alice", prefix)
            assert retained["id"] == extended["id"]  # the same envelope, so a client on both dedupes it

            assert (await server.run_command("alice", {"command": "end_wrap_up"}))[0] == 200
            await inbox.wait_for(lambda e: e["type"] == "agent.state" and e["payload"]["state"] == "ready"
                                 and e["seq"] > extended["seq"])
            await _eventually_retained(mqtt_port, "alice", "ready", prefix)
            code, reply = await server.run_command("alice", {"command": "extend_wrap_up", "seconds": 30})
            assert code == 409 and reply["details"]["current"] == "ready"
            listener.cancel()


async def test_observe_mode_state_follows_the_queue_member_and_is_retained(redis_url: str, mqtt_port: int) -> None:
    config = own_topics(make_config(redis_url=redis_url, mqtt_port=mqtt_port))
    prefix = config.mqtt.topic_prefix
    async with running(config) as (_sim, server):
        envelope = await _eventually_retained(mqtt_port, "alice", "ready", prefix)
        assert envelope["payload"]["mode"] == "observe" and envelope["payload"]["reason"] is None
        assert (await server.run_command("alice", {"command": "not_ready", "reason": "lunch"}))[0] == 200
        paused = await _eventually_retained(mqtt_port, "alice", "not_ready", prefix)
        assert paused["payload"]["reason"] == "lunch" and paused["seq"] > envelope["seq"]
        assert paused["payload"]["since"] >= envelope["payload"]["since"]


def _auth_config(redis_url: str, mqtt_port: int) -> Config:
    return with_auth(own_topics(make_config(redis_url=redis_url, mqtt_port=mqtt_port)))


async def test_commands_over_mqtt_need_the_agents_token(redis_url: str, mqtt_port: int) -> None:
    config = _auth_config(redis_url, mqtt_port)
    async with running(config) as (sim, server):
        assert server.tokens is not None
        alice, _ = await server.tokens.issue("alice", "agent")
        bob, _ = await server.tokens.issue("bob", "agent")
        topic = f"{config.mqtt.topic_prefix}/agents/alice/commands"
        with capture_logs() as logs:
            async with aiomqtt.Client("127.0.0.1", mqtt_port, identifier="test-commands") as client:
                for forged in ({"command": "not_ready", "reason": "break", "id": "no-token"},
                               {"command": "not_ready", "reason": "break", "id": "bobs", "token": bob},
                               {"command": "not_ready", "reason": "break", "id": "bad", "token": "cti_x"}):
                    await client.publish(topic, json.dumps(forged), qos=1)
                await client.publish(topic, json.dumps({"command": "not_ready", "reason": "lunch", "id": "mine",
                                                        "token": alice}), qos=1)
            await eventually(lambda: sum(e["event"] == "mqtt.command_refused" for e in logs) == 3, timeout=20)
        await eventually(lambda: any(a.get("action") == "QueuePause" for a in sim.actions), timeout=20)
        pauses = [a for a in sim.actions if a.get("action") == "QueuePause"]
        assert [p.get("reason") for p in pauses] == ["lunch"]
        # the result reaches alice's screens, once
        async with asyncio.timeout(10):
            while not any(e["payload"].get("id") == "mine" for e in await _history(server, "alice")):  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # a bounded poll of Redis, test only
        results = [e["payload"] for e in await _history(server, "alice") if e["type"] == "command.result"]
        assert [r["id"] for r in results] == ["mine"] and results[0]["ok"] is True


async def _history(server: CtiServer, agent: str) -> list[dict[str, Any]]:
    entries, _ = await server.history.since(agent, 0)
    return [json.loads(body) for _seq, body in entries]
