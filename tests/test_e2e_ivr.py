"""The server with its FastAGI endpoint on: a simulated Asterisk runs the shipped hotline through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cti.config import AgiConfig
from cti.sim.agi_caller import Scenario, agi_env, place_call
from tests.e2e import eventually, make_config, running

pytestmark = pytest.mark.network


#: No business hours in it, so the test means the same at any time of day (the hotline's are tested in
#: tests/test_agi_server.py with a clock of their own).
FLOW = """
description: two choices
languages: [en]
default_language: en
start: menu
prompts:
  choose: {file: demo/choose, text: {en: Press 1 for billing or 2 for support.}}
nodes:
  menu:
    type: menu
    prompt: choose
    options:
      1: {next: billing}
      2: {next: support}
    timeout_ms: 3000
    max_retries: 1
    default: billing
  billing: {type: route, entry_point: billing}
  support: {type: route, entry_point: tech_support}
"""


async def test_a_caller_runs_a_flow_through_the_server(redis_url: str, mqtt_port: int, tmp_path: Path) -> None:
    (tmp_path / "twochoices.yaml").write_text(FLOW)
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port)
    config = config.model_copy(update={"agi": AgiConfig(enabled=True, port=0, flows=tmp_path)})
    async with running(config) as (_sim, server):
        assert server.agi is not None and set(server.flows) == {"twochoices"}
        port = server.agi.port
        record = await place_call("127.0.0.1", port, agi_env("twochoices", port=port, caller="13800000001"),
                                  Scenario(keys="1"), timeout=60)
        assert not record.hung_up and record.variables.get("CTI_ENTRY") == "billing"
        await eventually(lambda: server.health()["agi"]["ended"] == {"route": 1})
        hung_up = await place_call("127.0.0.1", port, agi_env("twochoices", port=port, caller="13800000001"),
                                   Scenario(keys="hangup"), timeout=60)
        assert hung_up.hung_up
        await eventually(lambda: server.health()["agi"]["ended"] == {"route": 1, "abandoned": 1})
