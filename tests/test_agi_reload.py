"""Editing a flow file on a running server, over real loopback TCP: the call already in the flow finishes on the
version it started, the next call runs the edit; a bad edit is rejected, logged, and the old version serves on."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from cti.agi import FlowRegistry
from ivr_flows import FlowError, load_flow
from tests.test_agi_server import HOTLINE, ROOT, WAIT, gate_at, serving


def copy_hotline(directory: Path) -> Path:
    path = directory / "hotline.yaml"
    shutil.copy(ROOT / "config" / "ivr" / "hotline.yaml", path)
    return path


def edit(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    """Rewrite the file with ``change(data)`` applied, with a new mtime even within one clock tick."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    before = path.stat().st_mtime_ns
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def billing_to_tech(data: dict[str, Any]) -> None:
    data["nodes"]["main_menu"]["options"][1] = "tech_support"


async def test_an_edited_file_applies_to_the_next_call_while_the_running_one_keeps_its_version(
        tmp_path: Path) -> None:
    path = copy_hotline(tmp_path)
    registry = FlowRegistry(tmp_path, check_every=0)
    assert registry.load()["hotline"].version == HOTLINE.version
    reached, release, pause = gate_at("WAIT FOR DIGIT 5000")
    async with serving(registry.current) as served, asyncio.TaskGroup() as tg:
        first = tg.create_task(served.call("1,1", before_reply=pause))
        await asyncio.wait_for(reached.wait(), WAIT)  # the first caller is at the main menu
        edit(path, billing_to_tech)
        second = await served.call("1,1")
        new = await served.result()
        release.set()
        old = await served.result()
    edited = load_flow(path)
    assert edited.version != HOTLINE.version
    assert (new.entry_point, new.version) == ("tech_support", edited.version)
    assert second.variables["CTI_FLOW"] == f"hotline@{edited.version}"
    assert (old.entry_point, old.version) == ("billing", HOTLINE.version)
    assert first.result().variables["CTI_FLOW"] == f"hotline@{HOTLINE.version}"
    assert registry.reloads == 1


async def test_a_bad_edit_is_rejected_and_logged_and_the_old_version_serves_on(tmp_path: Path) -> None:
    path = copy_hotline(tmp_path)
    registry = FlowRegistry(tmp_path, check_every=0)
    registry.load()
    async with serving(registry.current) as served:
        with structlog.testing.capture_logs() as logs:
            edit(path, lambda d: d["nodes"]["main_menu"]["options"].update({1: "no_such_node"}))  # graph error
            await served.call("1,1")
            kept = await served.result()
            path.write_text("nodes: [", encoding="utf-8")  # not even YAML: a save cut short
            await served.call("1,1")
            still = await served.result()
        rejected = [e for e in logs if e["event"] == "agi.flow_rejected"]
        assert len(rejected) == 2 and all(e["kept"] == f"hotline@{HOTLINE.version}" for e in rejected)
        assert "no_such_node" in rejected[0]["error"] and "not valid YAML" in rejected[1]["error"]
        assert (kept.entry_point, kept.version) == ("billing", HOTLINE.version)
        assert (still.entry_point, still.version) == ("billing", HOTLINE.version)
        assert str(path) in registry.problems
        with structlog.testing.capture_logs() as quiet:
            await served.call("1,1")
            await served.result()
        assert not [e for e in quiet if e["event"] == "agi.flow_rejected"]  # logged once per save, not per call
        shutil.copy(ROOT / "config" / "ivr" / "hotline.yaml", path)
        edit(path, billing_to_tech)  # the admin fixes it
        await served.call("1,1")
        fixed = await served.result()
    assert fixed.entry_point == "tech_support" and not registry.problems
    assert (registry.reloads, registry.rejected) == (1, 2)


async def test_a_new_file_is_a_new_flow_and_a_removed_one_is_refused(tmp_path: Path) -> None:
    registry = FlowRegistry(tmp_path, check_every=0)
    assert registry.load() == {}
    async with serving(registry.current) as served:
        path = copy_hotline(tmp_path)
        await served.call("2,2")
        assert (await served.result()).entry_point == "tech_support"
        path.unlink()
        record = await served.call("2,2")
        assert not record.commands  # refused before the first command: Asterisk leaves AGI() at once
        assert served.stats.unknown_flow == 1


def test_the_files_are_looked_at_at_most_every_check_every_seconds(tmp_path: Path) -> None:
    path = copy_hotline(tmp_path)
    now = [100.0]
    registry = FlowRegistry(tmp_path, check_every=1.0, clock=lambda: now[0])
    before = registry.load()["hotline"].version
    edit(path, billing_to_tech)
    now[0] += 0.5
    assert registry.current()["hotline"].version == before  # too soon: not even a scandir
    now[0] += 0.5
    assert registry.current()["hotline"].version != before


def test_a_save_without_a_change_keeps_the_version_and_counts_no_reload(tmp_path: Path) -> None:
    path = copy_hotline(tmp_path)
    registry = FlowRegistry(tmp_path, check_every=0)
    flow = registry.load()["hotline"]
    edit(path, lambda d: None)  # re-saved (reformatted), same content
    assert registry.current()["hotline"] is flow and registry.reloads == 0


def test_two_files_with_one_id_keep_the_first(tmp_path: Path) -> None:
    copy_hotline(tmp_path)
    registry = FlowRegistry(tmp_path, check_every=0)
    registry.load()
    (tmp_path / "zz-copy.yaml").write_text((tmp_path / "hotline.yaml").read_text(encoding="utf-8").replace(
        "description:", "id: hotline\ndescription:", 1), encoding="utf-8")
    assert registry.current()["hotline"].source == str(tmp_path / "hotline.yaml")
    assert "also the id of" in registry.problems[str(tmp_path / "zz-copy.yaml")]


def test_the_first_load_is_strict(tmp_path: Path) -> None:
    copy_hotline(tmp_path)
    (tmp_path / "broken.yaml").write_text("nodes: [", encoding="utf-8")
    with pytest.raises(FlowError, match=r"broken\.yaml"):
        FlowRegistry(tmp_path).load()
    with pytest.raises(FlowError, match="cannot read the flows directory"):
        FlowRegistry(tmp_path / "missing").load()


def test_the_registry_reads_as_the_flows_in_service(tmp_path: Path) -> None:
    copy_hotline(tmp_path)
    registry = FlowRegistry(tmp_path)
    assert len(registry) == 0
    registry.load()
    assert set(registry) == {"hotline"} and registry["hotline"].version == HOTLINE.version and len(registry) == 1


def test_a_file_that_is_not_text_is_rejected_once_and_the_flow_serves_on(tmp_path: Path) -> None:
    path = copy_hotline(tmp_path)
    registry = FlowRegistry(tmp_path, check_every=0)
    registry.load()
    path.write_bytes(b"\xff\xfe\x00garbage")  # an editor saved UTF-16, or a binary landed here
    assert registry.current()["hotline"].version == HOTLINE.version
    assert "not UTF-8" in registry.problems[str(path)]
    assert registry.current()["hotline"].version == HOTLINE.version and registry.rejected == 1
