"""Today's calls, end to end: the simulator's call is answered by alice and ends, she sets a
disposition, and GET /api/agents/alice/calls/today lists the call with it; only her token (or a
supervisor's) reads her list."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from cti.config import Config, HistoryConfig
from cti.push.calllog import RECORD_FIELDS, day_of
from tests.e2e import Inbox, make_config, running, token_headers, with_auth, ws_listener

ZONE = "Asia/Shanghai"


def _config(redis_url: str, mqtt_port: int) -> Config:
    config = with_auth(make_config(redis_url=redis_url, mqtt_port=mqtt_port))
    return config.model_copy(update={"history": HistoryConfig(timezone=ZONE)})


async def test_an_answered_call_is_listed_with_the_disposition_the_agent_set(redis_url: str, mqtt_port: int) -> None:
    async with running(_config(redis_url, mqtt_port)) as (sim, server):
        alice, bob = await token_headers(server, "alice"), await token_headers(server, "bob")
        supervisor = await token_headers(server, "sue", "supervisor")
        base = f"http://127.0.0.1:{server.http_port}"
        inbox, opened = Inbox(), asyncio.Event()
        async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as tg:
            listener = tg.create_task(ws_listener(
                f"{base}/ws/agents/alice?token={alice['Authorization'][7:]}", inbox, opened))
            await asyncio.wait_for(opened.wait(), 10)

            async def command(agent: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
                async with session.post(f"{base}/api/agents/{agent}/commands", json=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    return await r.json()  # type: ignore[no-any-return]

            async def today(agent: str, headers: dict[str, str], query: str = "") -> tuple[int, dict[str, Any]]:
                async with session.get(f"{base}/api/agents/{agent}/calls/today{query}", headers=headers) as r:
                    return r.status, await r.json()

            async with session.get(f"{base}/api/client-config", headers=alice) as r:
                assert (await r.json())["http"]["calls_today"] == "/api/agents/alice/calls/today"
            status, empty = await today("alice", alice)
            assert status == 200 and empty["calls"] == [] and empty["timezone"] == ZONE
            assert empty["day"] in server.calllog.kept_days()

            await command("bob", {"command": "not_ready", "reason": "meeting"}, bob)  # so the call rings alice
            linkedid = sim.sim.place_call("8613900000001", "VIP Wang")
            await inbox.wait_for(lambda e: e["type"] == "call.answered" and e["payload"]["linkedid"] == linkedid)
            await command("alice", {"command": "hangup"}, alice)
            ended = await inbox.wait_for(lambda e: e["type"] == "call.ended" and e["payload"]["linkedid"] == linkedid)
            await command("alice", {"command": "disposition", "linkedid": linkedid, "code": "sales_lead"}, alice)

            # The day of the end of alice's part, in the configured zone: today, unless the test crossed midnight.
            lists = {day: await today("alice", alice, f"?day={day}") for day in server.calllog.kept_days()[:2]}
            [day] = [day for day, (status, body) in lists.items() if status == 200 and body["calls"]]
            status, body = lists[day]
            assert (body["agent"], body["day"], body["timezone"]) == ("alice", day, ZONE)
            [call] = body["calls"]
            assert set(call) == {*RECORD_FIELDS, "disposition"}
            assert (call["linkedid"], call["caller"], call["outcome"], call["reason"], call["disposition"]) == (
                linkedid, "8613900000001", "answered", "hangup", "sales_lead")
            assert call["customer_id"] == ended["payload"]["customer"]["id"] and call["queue"] == "support"
            assert call["answered_at"] is not None and call["talk_s"] is not None
            assert call["offered_at"] <= call["ended_at"] and day_of(call["ended_at"], server.calllog.zone) == day

            status, other = await today("alice", bob, f"?day={day}")
            assert status == 403 and other["error_id"] == "forbidden", "bob's token never reads alice's calls"
            status, seen = await today("alice", supervisor, f"?day={day}")
            assert status == 200 and [c["linkedid"] for c in seen["calls"]] == [linkedid]
            status, mine = await today("bob", bob, f"?day={day}")
            assert status == 200 and mine["calls"] == [], "bob never had the call"
            status, nobody = await today("nobody", supervisor)
            assert status == 404 and nobody["error_id"] == "no-such-agent"
            for bad in ("?day=yesterday", "?day=2020-01-01", "?day=2026-13-01"):
                status, refused = await today("alice", alice, bad)
                assert status == 400 and refused["error_id"] == "bad-day", bad
                assert refused["details"]["kept"] == server.calllog.kept_days()
            listener.cancel()
