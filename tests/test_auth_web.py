"""Tokens on the HTTP and WebSocket edge, against the whole server (simulator, real Redis and
mosquitto): no token or a wrong one is refused, an agent's token reaches only that agent, a
supervisor's reaches everyone, only an admin manages tokens, and listed origins get CORS."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from cti.app import CtiServer
from cti.auth.tokens import hash_secret, verify_secret
from cti.config import AuthConfig, Config, HttpConfig
from tests.e2e import Inbox, make_config, running, ws_listener

CRM = "https://crm.example.com"
EVIL = "https://evil.example"


def _config(redis_url: str, mqtt_port: int) -> Config:
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port)
    return config.model_copy(update={"auth": AuthConfig(enabled=True),
                                     "http": HttpConfig(host="127.0.0.1", port=0, allowed_origins=[CRM])})


async def _tokens(server: CtiServer) -> dict[str, str]:
    assert server.tokens is not None
    return {name: (await server.tokens.issue(subject, role))[0]  # type: ignore[arg-type]
            for name, subject, role in [("alice", "alice", "agent"), ("bob", "bob", "agent"),
                                        ("sup", "sup1", "supervisor"), ("admin", "root", "admin")]}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_token_hash_is_mosquittos_format() -> None:
    stored = hash_secret("s3cret", salt=b"0123456789ab")
    assert stored.startswith("$7$101$MDEyMzQ1Njc4OWFi$")
    assert verify_secret("s3cret", stored) and not verify_secret("s3cret!", stored)
    assert not verify_secret("s3cret", "$6$abc$def") and not verify_secret("s3cret", "garbage")


async def test_http_and_websocket_need_a_token_and_see_only_their_agent(redis_url: str, mqtt_port: int) -> None:
    async with running(_config(redis_url, mqtt_port)) as (sim, server):
        tokens = await _tokens(server)
        base = f"http://127.0.0.1:{server.http_port}"
        async with aiohttp.ClientSession() as session:
            for headers in ({}, _bearer("cti_000000000000_" + "x" * 43), _bearer("not-a-token"),
                            _bearer(tokens["alice"][:-1] + ("A" if tokens["alice"][-1] != "A" else "B"))):
                async with session.get(f"{base}/api/calls", headers=headers) as r:
                    assert r.status == 401, headers
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                    assert (await r.json())["error_id"] in ("unauthenticated", "bad-token")
            for url in (f"{base}/ws/agents/alice", f"{base}/ws/agents/alice?token=cti_000000000000_{'x' * 43}"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(url)
                assert refused.value.status == 401
            with pytest.raises(aiohttp.WSServerHandshakeError) as other:
                await session.ws_connect(f"{base}/ws/agents/bob?token={tokens['alice']}")
            assert other.value.status == 403, "alice's token never opens bob's events"

            me = await (await session.get(f"{base}/api/me", headers=_bearer(tokens["alice"]))).json()
            assert me["role"] == "agent" and me["agent"] == {"id": "alice", "name": "Alice"}

            alice, bob, sup = Inbox(), Inbox(), Inbox()
            opened = [asyncio.Event() for _ in range(3)]
            async with asyncio.TaskGroup() as tg:
                listeners = [
                    tg.create_task(ws_listener(f"{base}/ws/agents/alice?token={tokens['alice']}", alice, opened[0])),
                    tg.create_task(ws_listener(f"{base}/ws/agents/bob?token={tokens['bob']}", bob, opened[1])),
                    tg.create_task(ws_listener(f"{base}/ws/agents/bob?token={tokens['sup']}", sup, opened[2])),
                ]
                async with asyncio.timeout(10):
                    for ready in opened:
                        await ready.wait()
                first = sim.sim.place_call("8613900000001", "VIP Wang")
                second = sim.sim.place_call("8613900000002", "Zhang Wei")
                offers = {linkedid: await _offered_to({"alice": alice, "bob": bob}, linkedid)
                          for linkedid in (first, second)}
                assert sorted(offers.values()) == ["alice", "bob"], offers
                assert all(e["agent"] == "alice" for e in alice.items)
                assert all(e["agent"] == "bob" for e in bob.items)
                bobs_call = next(linkedid for linkedid, agent in offers.items() if agent == "bob")
                await sup.wait_for(lambda e: e["payload"].get("linkedid") == bobs_call)

                async def calls(token: str) -> set[str]:
                    async with session.get(f"{base}/api/calls", headers=_bearer(token)) as r:
                        assert r.status == 200
                        return {c["linkedid"] for c in (await r.json())["calls"]}

                assert await calls(tokens["alice"]) == {first, second} - {bobs_call}
                assert await calls(tokens["sup"]) >= {first, second}

                async def states(token: str) -> dict[str, Any]:
                    async with session.get(f"{base}/api/agents/states", headers=_bearer(token)) as r:
                        assert r.status == 200
                        return {a["id"]: a for a in (await r.json())["agents"]}

                assert list(await states(tokens["alice"])) == ["alice"], "an agent's overview is themselves only"
                everyone = await states(tokens["sup"])
                assert sorted(everyone) == sorted(a.id for a in server.config.agents)
                assert everyone["bob"]["ringing"] + everyone["bob"]["on_calls"] == 1
                for task in listeners:
                    task.cancel()


async def _offered_to(inboxes: dict[str, Inbox], linkedid: str) -> str:
    """Which agent's socket got the pop for ``linkedid`` (the simulator rings whoever is free)."""
    waits = {asyncio.ensure_future(inbox.wait_for(lambda e: e["type"] == "call.offered"
                                                  and e["payload"]["linkedid"] == linkedid)): name
             for name, inbox in inboxes.items()}
    done, pending = await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert done, f"no pop for {linkedid}"
    return waits[done.pop()]


async def test_only_admins_manage_tokens_and_revoked_tokens_stop(redis_url: str, mqtt_port: int) -> None:
    async with running(_config(redis_url, mqtt_port)) as (_sim, server):
        tokens = await _tokens(server)
        base = f"http://127.0.0.1:{server.http_port}"
        async with aiohttp.ClientSession() as session:
            for who in ("alice", "sup"):
                async with session.post(f"{base}/api/tokens", json={"subject": "bob", "role": "agent"},
                                        headers=_bearer(tokens[who])) as r:
                    assert r.status == 403 and (await r.json())["error_id"] == "forbidden"
            admin = _bearer(tokens["admin"])
            async with session.post(f"{base}/api/tokens", json={"subject": "nobody", "role": "agent"},
                                    headers=admin) as r:
                assert r.status == 400 and (await r.json())["error_id"] == "bad-subject"
            async with session.post(f"{base}/api/tokens", json={"subject": "bob", "role": "agent",
                                                                "label": "desk 4"}, headers=admin) as r:
                assert r.status == 201
                issued = await r.json()
            listed = await (await session.get(f"{base}/api/tokens", headers=admin)).json()
            assert {"id": issued["id"], "subject": "bob", "role": "agent", "label": "desk 4"}.items() <= \
                next(t for t in listed if t["id"] == issued["id"]).items()
            assert all("hash" not in t and "token" not in t for t in listed)
            async with session.get(f"{base}/api/me", headers=_bearer(issued["token"])) as r:
                assert r.status == 200
            async with session.delete(f"{base}/api/tokens/{issued['id']}", headers=admin) as r:
                assert r.status == 200
            async with session.get(f"{base}/api/me", headers=_bearer(issued["token"])) as r:
                assert r.status == 401, "revoked through this server: refused at once"


async def test_listed_origins_get_cors_and_others_do_not(redis_url: str, mqtt_port: int) -> None:
    async with running(_config(redis_url, mqtt_port)) as (_sim, server):
        tokens = await _tokens(server)
        base = f"http://127.0.0.1:{server.http_port}"
        async with aiohttp.ClientSession() as session:
            preflight = {"Origin": CRM, "Access-Control-Request-Method": "GET",
                         "Access-Control-Request-Headers": "authorization"}
            async with session.options(f"{base}/api/calls", headers=preflight) as r:
                assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == CRM
                assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
            async with session.options(f"{base}/api/calls", headers={**preflight, "Origin": EVIL}) as r:
                assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
            async with session.get(f"{base}/api/calls", headers={"Origin": CRM, **_bearer(tokens["alice"])}) as r:
                assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == CRM
            async with session.get(f"{base}/api/calls", headers={"Origin": CRM}) as r:
                assert r.status == 401 and r.headers["Access-Control-Allow-Origin"] == CRM, "the page reads the 401"
            ws = await session.ws_connect(f"{base}/ws/agents/alice?token={tokens['alice']}", headers={"Origin": CRM})
            assert (await ws.receive_json())["type"] == "hello"
            await ws.close()
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{base}/ws/agents/alice?token={tokens['alice']}",
                                         headers={"Origin": EVIL})
            assert refused.value.status == 403

            conf = await (await session.get(f"{base}/api/client-config", headers=_bearer(tokens["alice"]))).json()
            assert conf["agent"] == "alice"
            assert conf["websocket"]["url"] == f"ws://127.0.0.1:{server.http_port}/ws/agents/alice"
            assert conf["mqtt"]["port"] == mqtt_port and conf["mqtt"]["username"] == "alice"
            assert conf["mqtt"]["topics"]["events"] == "cti/v1/agents/alice/events"
            assert conf["mqtt"]["topics"]["commands"] == "cti/v1/agents/alice/commands"
            assert conf["commands"] == {"mode": "observe", "dispositions": server.config.commands.dispositions,
                                        "not_ready_reasons": ["break", "lunch", "training", "meeting"]}
            async with session.get(f"{base}/api/client-config?agent=bob", headers=_bearer(tokens["alice"])) as r:
                assert r.status == 403


async def test_the_wallboard_and_kpis_are_for_supervisors(redis_url: str, mqtt_port: int) -> None:
    """The board names every agent and their state: an agent's token is refused, on HTTP and WebSocket."""
    async with running(_config(redis_url, mqtt_port)) as (_sim, server):
        tokens = await _tokens(server)
        base = f"http://127.0.0.1:{server.http_port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/api/kpis") as r:
                assert r.status == 401
            async with session.get(f"{base}/api/kpis", headers=_bearer(tokens["alice"])) as r:
                assert r.status == 403 and (await r.json())["error_id"] == "forbidden"
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{base}/ws/wallboard?token={tokens['alice']}")
            assert refused.value.status == 403
            async with session.get(f"{base}/api/kpis", headers=_bearer(tokens["sup"])) as r:
                assert r.status == 200
                board = await r.json()
            assert {a["id"] for a in board["agents"]} == {a.id for a in server.config.agents}
            async with session.ws_connect(f"{base}/ws/wallboard?token={tokens['sup']}") as ws:
                first = await ws.receive_json(timeout=10)
            assert first["type"] == "kpi.board" and "today" in first and "rolling" in first
