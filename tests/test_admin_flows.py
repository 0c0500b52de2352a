"""IVR flows edited through the admin API: validated as the FastAGI server reads flows (errors with
their paths), versioned in Redis, activated by writing the file, rolled back; a file edited by hand is
kept as a version at start, a stale one (an older stored version) is brought up to date. Real Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from cti.admin.flows import FlowAdmin, validate_flow
from cti.admin.routing import ConfigInvalid
from cti.admin.versions import AuditLog
from tests.test_e2e_cti_mode import FLOW


def paths(text: str) -> list[str]:
    with pytest.raises(ConfigInvalid) as caught:
        validate_flow("onechoice", text)
    return [e["path"] for e in caught.value.errors]


def test_a_flow_is_refused_with_the_path_of_each_problem() -> None:
    assert validate_flow("onechoice", FLOW).id == "onechoice"
    assert paths(FLOW.replace("timeout_ms: 3000", "timeout_ms: -5"))[0].startswith("nodes.menu")
    assert paths(FLOW.replace("1: {next: billing}", "1: {next: nowhere}")) == ["nodes.menu"]
    assert paths("start: [unclosed")[0].startswith("line 1")
    assert paths("- a list") == [""]
    assert "start" in paths("languages: [en]\nnodes: {}\n")


async def admin(redis: aioredis.Redis, flows: Path) -> FlowAdmin:
    made = FlowAdmin(redis=redis, key_prefix="t:", directory=flows, audit=AuditLog(redis, key_prefix="t:"))
    await made.restore()
    return made


async def test_versions_activate_roll_back_and_survive_a_restart(redis_client: aioredis.Redis, tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "onechoice.yaml").write_text(FLOW)
    first = await admin(redis_client, flows)
    assert first.in_force == {"onechoice": 1}, "the file as found is version 1"
    edited = FLOW.replace("description: one choice", "description: one choice, edited")
    v2 = await first.propose("onechoice", edited, who="root", role="admin", comment="wording")
    assert first.text("onechoice") == FLOW, "not in force until activated"
    with pytest.raises(ConfigInvalid):
        await first.propose("onechoice", "nodes: 3", who="root", role="admin")
    assert [v.version for v in await first.versions("onechoice").all()] == [1, 2]
    result = await first.activate("onechoice", v2, who="root", role="admin")
    assert result["previous"] == 1 and first.text("onechoice") == edited
    assert not list(flows.glob(".*")), "the write leaves no temporary file"

    second = await admin(redis_client, flows)  # another server (or a restart) on the same directory
    assert second.in_force == {"onechoice": 2}

    (flows / "onechoice.yaml").write_text(FLOW)  # a stale copy: version 1 again, e.g. a server's old disk
    third = await admin(redis_client, flows)
    assert third.in_force == {"onechoice": 2} and third.text("onechoice") == edited, "Redis's version wins"

    by_hand = edited.replace("edited", "edited by hand")
    (flows / "onechoice.yaml").write_text(by_hand)  # an edit no version holds: kept, as version 3
    fourth = await admin(redis_client, flows)
    assert fourth.in_force == {"onechoice": 3} and fourth.text("onechoice") == by_hand
    assert (await fourth.versions("onechoice").get(3)).author == "file"  # type: ignore[union-attr]

    back = await first.rollback("onechoice", who="root", role="admin")  # first still thinks v2 is in force
    assert back["version"] == 1 and first.text("onechoice") == FLOW
    actions = [(e["action"], e["detail"]["version"]) for e in await first.audit.recent()]
    assert actions == [("ivr.rolled_back", 1), ("ivr.activated", 2), ("ivr.version_added", 2)]


async def test_a_write_that_fails_after_activation_is_put_right_from_redis(redis_client: aioredis.Redis,
                                                                         tmp_path: Path) -> None:
    """Redis is changed first: a flows directory that refuses the write leaves the version in force in
    Redis, and the server's next start (or its follow loop) writes it; never a file ahead of Redis."""
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "onechoice.yaml").write_text(FLOW)
    first = await admin(redis_client, flows)
    edited = FLOW.replace("description: one choice", "description: one choice, edited")
    v2 = await first.propose("onechoice", edited, who="root", role="admin")
    (flows / ".onechoice.yaml.tmp").mkdir()  # the atomic write's temporary file cannot be made
    with pytest.raises(OSError):
        await first.activate("onechoice", v2, who="root", role="admin")
    assert await first.versions("onechoice").active() == 2 and first.text("onechoice") == FLOW
    assert first.in_force == {"onechoice": 1}, "so the follow loop writes it once it can"
    (flows / ".onechoice.yaml.tmp").rmdir()
    again = await admin(redis_client, flows)
    assert again.in_force == {"onechoice": 2} and again.text("onechoice") == edited
