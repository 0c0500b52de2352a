"""Agents' commands over HTTP and the WebSocket, against the simulator: each reaches Asterisk as the
matching AMI action, answers with a result (and a command.result envelope), and a refusal says why."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from cti.config import Config
from tests.e2e import Inbox, make_config, running, token_headers, with_auth, ws_listener


def _config(redis_url: str, mqtt_port: int) -> Config:
    return with_auth(make_config(redis_url=redis_url, mqtt_port=mqtt_port))


def _sent(sim: Any, action: str) -> list[dict[str, str]]:
    return [a for a in sim.actions if a.get("action", "").lower() == action.lower()]


async def test_not_ready_ready_hangup_and_dial_reach_asterisk(redis_url: str, mqtt_port: int) -> None:
    async with running(_config(redis_url, mqtt_port)) as (sim, server):
        alice = await token_headers(server, "alice")
        base = f"http://127.0.0.1:{server.http_port}"
        inbox, opened = Inbox(), asyncio.Event()
        async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as tg:
            listener = tg.create_task(ws_listener(
                f"{base}/ws/agents/alice?token={alice['Authorization'][7:]}", inbox, opened))
            await asyncio.wait_for(opened.wait(), 10)

            async def command(body: dict[str, Any], headers: dict[str, str] = alice) -> tuple[int, dict[str, Any]]:
                async with session.post(f"{base}/api/agents/alice/commands", json=body, headers=headers) as r:
                    return r.status, await r.json()

            status, reply = await command({"command": "not_ready", "reason": "lunch", "id": "c1"})
            assert (status, reply["ok"], reply["state"], reply["id"]) == (200, True, "not_ready", "c1")
            [pause] = _sent(sim, "QueuePause")
            assert pause["interface"] == "PJSIP/1001" and pause["paused"] == "true" and pause["reason"] == "lunch"
            state = await inbox.wait_for(lambda e: e["type"] == "agent.state" and e["payload"].get("paused"))
            assert state["payload"]["paused_reason"] == "lunch"
            result = await inbox.wait_for(lambda e: e["type"] == "command.result" and e["payload"]["id"] == "c1")
            assert result["payload"] == reply, "every screen of the agent learns the answer"

            status, reply = await command({"command": "end_wrap_up"})
            assert status == 409 and reply["error_id"] == "not-in-observe-mode"
            status, reply = await command({"command": "dial", "number": "1001\r\nAction: Originate"})
            assert status == 400 and reply["error_id"] == "bad-command" and "number" in reply["message"]
            status, reply = await command({"command": "teleport"})
            assert status == 400 and "known" in reply["details"]
            bob = await token_headers(server, "bob")
            status, reply = await command({"command": "ready"}, bob)
            assert status == 403, "bob's token never commands alice"

            # The WebSocket takes the same commands as text frames; the answer is an envelope.
            ws = await session.ws_connect(f"{base}/ws/agents/alice?token={alice['Authorization'][7:]}")
            assert (await ws.receive_json())["type"] == "hello"
            await ws.send_str(json.dumps({"command": "ready", "id": "w1"}))
            done = await inbox.wait_for(lambda e: e["type"] == "command.result" and e["payload"]["id"] == "w1")
            assert done["payload"]["ok"] and done["payload"]["state"] == "ready"
            assert _sent(sim, "QueuePause")[-1]["paused"] == "false"
            await ws.send_str("not json")
            bad = await inbox.wait_for(lambda e: e["type"] == "command.result" and e["seq"] > done["seq"])
            assert bad["payload"]["error_id"] == "bad-command"
            await ws.close()

            status, reply = await command({"command": "hangup"})
            assert status == 409 and reply["error_id"] == "no-call"
            async with session.post(f"{base}/api/agents/bob/commands", headers=bob,
                                    json={"command": "not_ready", "reason": "meeting"}) as r:
                assert r.status == 200  # so the next call rings alice
            linkedid = sim.sim.place_call("8613900000001", "VIP Wang")
            await inbox.wait_for(lambda e: e["type"] == "call.answered" and e["payload"]["linkedid"] == linkedid)
            status, reply = await command({"command": "hangup"})
            assert status == 200 and reply["linkedid"] == linkedid, reply
            assert _sent(sim, "Hangup")[-1]["channel"] == reply["channel"]
            assert reply["channel"].startswith("PJSIP/1001-"), "alice's own leg, not the caller's"
            ended = await inbox.wait_for(lambda e: e["type"] == "call.ended" and e["payload"]["linkedid"] == linkedid)
            assert ended["agent"] == "alice"
            status, reply = await command({"command": "disposition", "linkedid": linkedid, "code": "resolved"})
            assert status == 200 and reply["code"] == "resolved"
            assert await server.commands._dispositions.of(linkedid) == {"alice": "resolved"}  # type: ignore[attr-defined]
            status, reply = await command({"command": "disposition", "linkedid": linkedid, "code": "meh"})
            assert status == 400 and reply["error_id"] == "bad-code"

            status, reply = await command({"command": "dial", "number": "+8613900000009"})
            assert status == 200
            originate = _sent(sim, "Originate")[-1]
            assert originate["channel"] == "PJSIP/1001" and originate["exten"] == "+8613900000009"
            assert originate["context"] == "from-internal"

            second = sim.sim.place_call("8613900000002", "Zhang Wei")
            await inbox.wait_for(lambda e: e["type"] == "call.answered" and e["payload"]["linkedid"] == second)
            status, reply = await command({"command": "transfer", "to_number": "5555", "to_agent": "bob"})
            assert status == 400 and "exactly one" in reply["message"]
            status, reply = await command({"command": "transfer", "to_number": "5555"})
            assert status == 200, reply
            redirect = _sent(sim, "Redirect")[-1]
            assert redirect["channel"] == reply["channel"] and not redirect["channel"].startswith("PJSIP/1001-")
            assert (redirect["context"], redirect["exten"], redirect["priority"]) == ("from-internal", "5555", "1")
            listener.cancel()
