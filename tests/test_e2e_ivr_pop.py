"""The IVR reaches the agent's screen: the whole server in CTI routing mode, the simulated Asterisk running the flow
over the server's own FastAGI endpoint and reporting the flow's SET VARIABLEs as AMI VarSets, as Asterisk does.
The pop shows the path and the keys; a caller who hangs up in the IVR finishes ``abandoned_ivr``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cti.sim.server import AmiServer
from tests.e2e import Inbox, eventually, ws_listener
from tests.test_e2e_cti_mode import cti_config, cti_running

pytestmark = pytest.mark.network


def place(sim: AmiServer, keys: str, **kw: Any) -> str:
    pbx: Any = sim.sim.pbx
    return str(pbx.place_call("13800000001", "Caller", now=sim.sim.clock(), keys=keys, **kw))


async def test_the_pop_shows_the_ivr_path_and_keys(redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    config = cti_config(redis_url, mqtt_port, tmp_path)
    async with cti_running(config) as (sim, server):
        inbox, opened = Inbox(), asyncio.Event()
        url = f"http://127.0.0.1:{server.http_port}/ws/agents/alice"
        async with asyncio.TaskGroup() as group:
            listener = group.create_task(ws_listener(url, inbox, opened))
            await opened.wait()
            place(sim, "7,1", talk=1.0, patience=600)  # a wrong key, then billing
            offered = await inbox.wait_for(lambda e: e["type"] == "call.offered", timeout=20)
            listener.cancel()
    ivr = offered["payload"]["ivr"]
    assert ivr is not None, offered
    assert (ivr["flow"], ivr["outcome"], ivr["entry_point"], ivr["language"]) == ("onechoice", "route", "billing", "en")
    assert ivr["path"] == ["menu", "billing"]
    assert ivr["inputs"] == [{"node": "menu", "value": "7"}, {"node": "menu", "value": "1"}]
    assert ivr["version"] == server.flows["onechoice"].version


async def test_a_hangup_in_the_ivr_finishes_abandoned_ivr(redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    config = cti_config(redis_url, mqtt_port, tmp_path)
    async with cti_running(config) as (sim, server):
        linkedid = place(sim, "hangup", patience=600)
        await eventually(lambda: linkedid in server.model.ended, timeout=20)
        finished = server.model.ended[linkedid].snapshot()  # what call.finished carries
    assert finished["outcome"] == "abandoned_ivr" and finished["segments"] == []
    assert finished["ivr"]["outcome"] == "abandoned"
    assert finished["ivr"]["path"] == ["menu"] and finished["ivr"]["inputs"] == [{"node": "menu", "value": "hangup"}]
