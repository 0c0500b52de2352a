"""The admin API in CTI routing mode, against the whole server (simulator, real Redis and mosquitto):
an invalid change is refused with its field path and nothing changes; a valid one is a new version,
dry-run against the call waiting now, refused if it would strand that call, activated without losing
it, and rolled back; agents cannot call it; every change and forced state is in the audit log; and
versions activated and rolled back while callers keep coming lose none and reorder none."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from cti.config import AuthConfig
from tests.e2e import eventually
from tests.test_e2e_cti_mode import FLOW, ROUTING, cti_config, cti_running, place


async def request(http: aiohttp.ClientSession, url: str, token: str | None, method: str, path: str,
                  **kw: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url + path, headers=headers, **kw) as r:
        return r.status, await r.json()


async def test_versions_dry_run_activate_roll_back_and_audit(redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    config = cti_config(redis_url, mqtt_port, tmp_path)
    config = config.model_copy(update={"auth": AuthConfig(enabled=True)})
    async with cti_running(config) as (sim, server), aiohttp.ClientSession() as http:
        assert server.tokens is not None and server.router is not None and server.routing_admin is not None
        tokens = {role: (await server.tokens.issue(subject, role))[0]  # type: ignore[arg-type]
                  for subject, role in [("root", "admin"), ("sue", "supervisor"), ("alice", "agent")]}
        base = f"http://127.0.0.1:{server.http_port}"

        async def call(method: str, path: str, role: str | None = "admin", **kw: Any) -> tuple[int, Any]:
            return await request(http, base, tokens[role] if role else None, method, path, **kw)

        status, current = await call("GET", "/api/admin/routing")
        assert status == 200 and current["version"] == 1
        assert current["config"]["tiers"]["normal"]["priority"] == 100
        assert (await call("GET", "/api/admin/routing", role=None))[0] == 401
        for method, path in [("GET", "/api/admin/routing"), ("GET", "/api/admin/audit"),
                             ("POST", "/api/admin/routing/versions"), ("POST", "/api/admin/routing/rollback")]:
            status, body = await call(method, path, role="agent", json={})
            assert status == 403 and body["error_id"] == "forbidden", (method, path)
        assert (await call("POST", "/api/admin/routing/versions", role="supervisor", json={}))[0] == 403

        # the supervisor makes both agents not ready (audited), so a caller waits on hold
        for agent in ("alice", "bob"):
            status, _ = await call("POST", f"/api/agents/{agent}/state", role="supervisor",
                                   json={"state": "not_ready", "reason": "break"})
            assert status == 200
        caller = place(sim)

        async def waiting() -> list[str]:
            return [c.id for c in await server.router.store.waiting()]  # type: ignore[union-attr]

        async with asyncio.timeout(20):
            while len(ids := await waiting()) != 1:  # noqa: ASYNC110 - bounded poll of Redis, test only
                await asyncio.sleep(0.05)
        call_id = ids[0]

        data = yaml.safe_load(ROUTING)
        bad = {**data, "tiers": {"normal": {"priority": -5, "service_level": {"percent": 80, "within_s": 20}}}}
        status, body = await call("POST", "/api/admin/routing/versions", json={"config": bad, "comment": "oops"})
        assert status == 422 and body["error_id"] == "invalid-config"
        assert [e["path"] for e in body["details"]["errors"]] == ["tiers.normal.priority"]
        status, body = await call("POST", "/api/admin/routing/versions", json={"yaml": "tiers: [unclosed"})
        assert status == 422 and body["details"]["errors"][0]["path"].startswith("line ")
        assert server.routing_admin.in_force == 1 and server.router.config.tiers["normal"].priority == 100

        good = {**data, "tiers": {"normal": {"priority": 250, "service_level": {"percent": 90, "within_s": 10}}}}
        status, v2 = await call("POST", "/api/admin/routing/versions", json={"config": good, "comment": "campaign"})
        assert status == 201 and v2["version"] == 2 and v2["parent"] == 1 and v2["author"] == "root"
        assert server.router.config.tiers["normal"].priority == 100, "a new version is not in force until activated"
        status, shown = await call("GET", "/api/admin/routing/versions/2", role="supervisor")
        assert "-    priority: 100" in shown["diff"] and "+    priority: 250" in shown["diff"]
        status, report = await call("POST", "/api/admin/routing/versions/2/dry-run", role="supervisor")
        assert status == 200 and report["waiting"] == 1 and report["stranded"] == []
        row = report["calls"][0]
        assert row["call"] == call_id and row["before"]["rank"] == row["after"]["rank"] == 1
        assert row["after"]["score"] > row["before"]["score"], "the higher priority shows in the score"
        assert row["before"]["agent_now"] is None and {"alice", "bob"} <= set(row["before"]["passed"])

        renamed = {**good, "entry_points": {"sales": data["entry_points"]["billing"]}}
        status, v3 = await call("POST", "/api/admin/routing/versions", json={"config": renamed})
        assert status == 201
        status, body = await call("POST", f"/api/admin/routing/versions/{v3['version']}/activate", json={})
        assert status == 409 and body["error_id"] == "would-strand-calls" and body["details"]["stranded"] == [call_id]
        assert server.routing_admin.in_force == 1

        status, body = await call("POST", "/api/admin/routing/versions/2/activate", json={})
        assert status == 200 and body["version"] == 2 and body["previous"] == 1
        assert server.router.config.tiers["normal"].priority == 250
        assert await waiting() == [call_id], "the waiting caller kept their place"
        status, versions = await call("GET", "/api/admin/routing/versions", role="supervisor")
        assert [(v["version"], v["active"]) for v in versions] == [(3, False), (2, True), (1, False)]

        status, body = await call("POST", "/api/admin/routing/rollback", json={})
        assert status == 200 and body["version"] == 1 and body["previous"] == 2
        assert server.router.config.tiers["normal"].priority == 100
        assert await waiting() == [call_id]

        status, audit = await call("GET", "/api/admin/audit", role="supervisor")
        actions = [(e["action"], e["who"], e["detail"].get("version") or e["detail"].get("agent")) for e in audit]
        assert actions == [("routing.rolled_back", "root", 1), ("routing.activated", "root", 2),
                           ("routing.version_added", "root", 3), ("routing.version_added", "root", 2),
                           ("agent.forced", "sue", "bob"), ("agent.forced", "sue", "alice")]

        status, spec = await call("GET", "/api/openapi.json", role=None)
        assert status == 200 and "/api/admin/routing/versions/{version}/activate" in spec["paths"]
        assert "RoutingConfig" in spec["components"]["schemas"]
        sim.sim.hangup(sim.sim.pbx.calls[caller].caller.name)


async def test_activations_during_traffic_lose_no_call_and_reorder_none(
        redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    """Callers keep coming while an admin activates and rolls back versions (each a new tier priority and
    service level): every caller is answered, and the agents get them in the order they came on hold."""
    config = cti_config(redis_url, mqtt_port, tmp_path)
    config = config.model_copy(update={"auth": AuthConfig(enabled=True)})
    async with cti_running(config) as (sim, server), aiohttp.ClientSession() as http:
        assert server.tokens is not None and server.router is not None
        token = (await server.tokens.issue("root", "admin"))[0]
        base = f"http://127.0.0.1:{server.http_port}"

        async def call(method: str, path: str, **kw: Any) -> tuple[int, Any]:
            return await request(http, base, token, method, path, **kw)

        data = yaml.safe_load(ROUTING)
        for priority in (250, 400):
            tiers = {"normal": {"priority": priority, "service_level": {"percent": 90, "within_s": 10}}}
            status, _ = await call("POST", "/api/admin/routing/versions", json={"config": {**data, "tiers": tiers}})
            assert status == 201
        for agent in ("alice", "bob"):
            status, _ = await call("POST", f"/api/agents/{agent}/state", json={"state": "not_ready", "reason": "break"})
            assert status == 200

        def on_hold(linkedid: str) -> bool:
            live = server.model.calls.get(linkedid) or server.model.ended.get(linkedid)
            return live is not None and bool(live.holds)

        async def waiting() -> list[str]:
            return [c.id for c in await server.router.store.waiting()]  # type: ignore[union-attr]

        placed = []
        for _ in range(4):  # these wait: nobody is ready
            placed.append(place(sim, talk=1.0, patience=600))
            await eventually(lambda: on_hold(placed[-1]), timeout=20)
        async with asyncio.timeout(20):
            while len(queue := await waiting()) != 4:  # noqa: ASYNC110 - bounded poll of Redis, test only
                await asyncio.sleep(0.05)
        assert queue == placed, "oldest first"
        for version in (2, 3):
            assert (await call("POST", f"/api/admin/routing/versions/{version}/activate", json={}))[0] == 200
            assert await waiting() == queue, f"activating v{version} kept every caller in place"
        for agent in ("alice", "bob"):
            assert (await call("POST", f"/api/agents/{agent}/state", json={"state": "ready"}))[0] == 200
        rollback = "/api/admin/routing/rollback"
        for path in (rollback, "/api/admin/routing/versions/3/activate", rollback,
                     "/api/admin/routing/versions/1/activate", rollback, "/api/admin/routing/versions/3/activate"):
            placed.append(place(sim, talk=1.0, patience=600))  # more callers while versions come and go
            await eventually(lambda: on_hold(placed[-1]), timeout=20)
            status, body = await call("POST", path, json={})
            assert status == 200, (path, body)
        await eventually(lambda: {r["linkedid"] for r in sim.sim.pbx.records} >= set(placed), timeout=90)

    records = {r["linkedid"]: r for r in sim.sim.pbx.records if r["linkedid"] in placed}
    assert {lid: r["cti"]["outcome"] for lid, r in records.items()} == dict.fromkeys(placed, "answered")
    came = sorted(placed, key=lambda lid: records[lid]["cti"]["enqueued_at"])
    offered = sorted(placed, key=lambda lid: records[lid]["cti"]["rings"][0]["at"])
    assert offered == came, "first come, first offered: no activation moved a caller"
    assert all(len(r["cti"]["rings"]) == 1 for r in records.values()), "nobody rung twice"
    assert server.health()["routing"]["redis_errors"] == 0


async def test_an_ivr_flow_edited_through_the_api_runs_for_the_next_caller(
        redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    """A bad flow is refused with the path of the problem and the flow in service stays; a good one,
    activated, is the file and the registry's flow before the reply, and the next caller runs it to an
    agent; a rollback puts the old one back; an agent's token cannot touch it; all of it audited."""
    config = cti_config(redis_url, mqtt_port, tmp_path)
    config = config.model_copy(update={"auth": AuthConfig(enabled=True)})
    async with cti_running(config) as (sim, server), aiohttp.ClientSession() as http:
        assert server.tokens is not None
        tokens = {role: (await server.tokens.issue(subject, role))[0]  # type: ignore[arg-type]
                  for subject, role in [("root", "admin"), ("alice", "agent")]}
        base = f"http://127.0.0.1:{server.http_port}"

        async def call(method: str, path: str, role: str = "admin", **kw: Any) -> tuple[int, Any]:
            return await request(http, base, tokens[role], method, path, **kw)

        assert await call("GET", "/api/admin/ivr") == (200, [{"name": "onechoice", "version": 1}])
        status, shown = await call("GET", "/api/admin/ivr/onechoice")
        assert status == 200 and shown["yaml"] == FLOW
        assert (await call("POST", "/api/admin/ivr/onechoice/versions", role="agent", json={"yaml": FLOW}))[0] == 403
        status, body = await call("POST", "/api/admin/ivr/onechoice/versions",
                                  json={"yaml": FLOW.replace("1: {next: billing}", "1: {next: nowhere}")})
        assert status == 422 and [e["path"] for e in body["details"]["errors"]] == ["nodes.menu"]
        in_service = server.flows["onechoice"].version

        edited = FLOW.replace("Press 1 for billing.", "Press 1 for bills.")
        status, v2 = await call("POST", "/api/admin/ivr/onechoice/versions",
                                json={"yaml": edited, "comment": "wording"})
        assert status == 201 and v2["version"] == 2 and v2["parent"] == 1
        assert server.flows["onechoice"].version == in_service, "not in force until activated"
        status, diff = await call("GET", "/api/admin/ivr/onechoice/versions/2")
        assert "+  choose: {file: demo/choose, text: {en: Press 1 for bills.}}" in diff["diff"]
        status, body = await call("POST", "/api/admin/ivr/onechoice/versions/2/activate", json={})
        assert status == 200 and body["previous"] == 1
        flow = server.flows["onechoice"]
        assert flow.version != in_service and flow.prompts["choose"].text == {"en": "Press 1 for bills."}
        assert (config.agi.flows / "onechoice.yaml").read_text() == edited

        caller = place(sim, talk=1.0, patience=600)  # the next caller runs the new version to an agent
        await eventually(lambda: caller in server.model.ended, timeout=30)
        assert server.model.ended[caller].agent_id in ("alice", "bob")

        status, body = await call("POST", "/api/admin/ivr/onechoice/rollback", json={})
        assert status == 200 and body["version"] == 1
        assert server.flows["onechoice"].version == in_service
        status, audit = await call("GET", "/api/admin/audit")
        assert [(e["action"], e["detail"]["version"]) for e in audit] == [
            ("ivr.rolled_back", 1), ("ivr.activated", 2), ("ivr.version_added", 2)]
        status, spec = await call("GET", "/api/openapi.json")
        assert "/api/admin/ivr/{name}/versions/{version}/activate" in spec["paths"]
