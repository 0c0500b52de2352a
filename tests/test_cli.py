"""The command line as support staff and admins use it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from cti.cli import main
from tests.traces import TRACES

ROOT = Path(__file__).resolve().parents[1]


def test_help_explains_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "demo", "replay", "check-config", "directory"):
        assert command in result.output
    replay_help = CliRunner().invoke(main, ["replay", "--help"]).output
    assert "unanswered" in replay_help and "wait_s" in replay_help


def test_replay_prints_one_json_line_per_call() -> None:
    result = CliRunner().invoke(main, ["replay", str(TRACES / "abandon" / "ami-raw.txt"),
                                       "-c", str(ROOT / "config" / "cti.yaml")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 5
    assert {"linkedid", "caller", "queue", "agent", "outcome", "wait_s", "talk_s"} <= set(rows[0])
    assert sorted(r["outcome"] for r in rows) == ["abandoned"] + ["answered"] * 4


def test_replay_reads_stdin_and_survives_garbage() -> None:
    capture = (TRACES / "basic" / "ami-raw.txt").read_bytes()
    junk = b"Event: AgentCalled\r\nLinkedid: x\r\n\r\nnot a header line\r\n\r\n"
    cut = capture.index(b"Event: QueueCallerJoin")
    result = CliRunner().invoke(main, ["replay", "-"], input=capture[:cut] + junk + capture[cut:])
    assert result.exit_code == 0, result.output
    [row] = [json.loads(line) for line in result.stdout.splitlines() if '"linkedid": "1795391524.70"' in line]
    assert row["outcome"] == "answered" and row["agent"] == "Bob"


def test_check_config_reports_the_key_path(tmp_path: Path) -> None:
    good = CliRunner().invoke(main, ["check-config", str(ROOT / "config" / "cti.yaml")])
    assert good.exit_code == 0 and "3 agents" in good.output
    bad = tmp_path / "cti.yaml"
    bad.write_text("http:\n  port: -1\n")
    result = CliRunner().invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}: 1 invalid setting(s)" in result.output and "http.port:" in result.output


def test_directory_import_rejects_a_bad_file_before_touching_redis(tmp_path: Path) -> None:
    bad = tmp_path / "customers.yaml"
    bad.write_text("- {id: c1, numbers: ['138'], name: A, vip_tier: 9}\n")
    result = CliRunner().invoke(main, ["directory", "import", str(bad), "-c", str(ROOT / "config" / "cti.yaml")])
    assert result.exit_code == 1 and "vip_tier" in result.output


def test_directory_import_loads_redis(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "cti.yaml"
    config.write_text(f"redis:\n  url: {redis_url}\n  key_prefix: 'clitest:'\n")
    result = CliRunner().invoke(main, ["directory", "import", str(ROOT / "config" / "customers.yaml"),
                                       "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("imported 12 customers")


def test_serve_without_redis_says_so_and_exits(tmp_path: Path) -> None:
    from cti.devservices import free_port

    config = tmp_path / "cti.yaml"
    config.write_text(f"redis:\n  url: redis://127.0.0.1:{free_port()}/0\nhttp:\n  port: 0\nmqtt:\n  enabled: false\n")
    result = CliRunner().invoke(main, ["serve", "-c", str(config)])
    assert result.exit_code == 1
    assert "Redis at redis://127.0.0.1:" in result.output and "not reachable" in result.output


def test_ivr_try_runs_the_shipped_hotline_without_a_pbx() -> None:
    """A known VIP (config/customers.yaml) skips the menu to the vip entry point, account manager first."""
    result = CliRunner().invoke(main, ["ivr", "try", "hotline", "--caller", "8613900000001", "--keys", "1",
                                       "--at", "2026-12-02T10:00+08:00", "--json",
                                       "-c", str(ROOT / "config" / "cti.yaml")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["end"], out["entry_point"]) == ("route", "vip")
    assert out["requirements"]["preferred_agents"] == ["chen"] and out["vars"]["customer_id"] == "c-1002"
    night = CliRunner().invoke(main, ["ivr", "try", "hotline", "--keys", "2,1", "--at", "2026-12-02T23:00+08:00",
                                      "--json", "-c", str(ROOT / "config" / "cti.yaml")])
    assert json.loads(night.stdout)["end"] in {"callback", "hangup"}, "after hours: no queue"
    missing = CliRunner().invoke(main, ["ivr", "try", "nosuch", "-c", str(ROOT / "config" / "cti.yaml")])
    assert missing.exit_code == 1 and "no flow 'nosuch'" in missing.output


def test_check_config_reports_ivr_flow_problems_with_file_and_node(tmp_path: Path) -> None:
    (tmp_path / "ivr").mkdir()
    (tmp_path / "ivr" / "broken.yaml").write_text(
        "languages: [en]\ndefault_language: en\nstart: menu\n"
        "prompts: {p: {file: x/p, text: {en: Hi}}}\n"
        "nodes:\n"
        "  menu: {type: menu, prompt: p, options: {1: {next: nowhere}}, timeout_ms: 1000, max_retries: 1,"
        " default: out}\n"
        "  out: {type: route, entry_point: no_such_entry}\n")
    (tmp_path / "routing.yaml").write_text((ROOT / "config" / "routing.yaml").read_text())
    config = tmp_path / "cti.yaml"
    config.write_text("agi: {flows: ivr}\n")
    result = CliRunner().invoke(main, ["check-config", str(config)])
    assert result.exit_code == 1, result.output
    assert "broken.yaml: node menu" in result.output and "nowhere" in result.output
    assert "no_such_entry" in result.output and "error(s) in the IVR flows" in result.output
    good = CliRunner().invoke(main, ["check-config", str(ROOT / "config" / "cti.yaml")])
    assert good.exit_code == 0 and "ok: IVR flow hotline" in good.output


@pytest.mark.network
def test_simulate_prints_one_json_summary_with_the_invariants() -> None:
    """A small day: the command's JSON has every tier and entry point, and nothing double-assigned or lost."""
    result = CliRunner().invoke(main, ["simulate", "--calls", "60", "--agents", "8", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # a warning logged meanwhile goes to stderr
    assert summary["double_assignments"] == 0 and summary["lost_calls"] == 0
    assert "normal" in set(summary["tiers"]) <= {"vip_platinum", "vip_gold", "vip_silver", "normal"}
    assert set(summary["entry_points"]) <= {"billing", "tech_support", "complaints", "vip"}
    offered = sum(t["offered"] for t in summary["tiers"].values())
    done = sum(t["answered"] + t["abandoned"] + t["fallback"] for t in summary["tiers"].values())
    assert offered == 60 and done == offered
    for tier in summary["tiers"].values():
        assert {"offered", "answered", "abandoned", "service_level", "mean_wait_s", "p90_wait_s",
                "max_wait_s"} <= set(tier)


def test_token_issue_list_revoke(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "cti.yaml"
    config.write_text(f"redis:\n  url: {redis_url}\n  key_prefix: 'tok{uuid.uuid4().hex[:6]}:'\n"
                      "agents:\n  - {id: alice, name: Alice, interface: PJSIP/1001}\n")
    runner = CliRunner()
    refused = runner.invoke(main, ["token", "issue", "mallory", "-c", str(config)])
    assert refused.exit_code == 1 and "no agent 'mallory'" in refused.output
    clash = runner.invoke(main, ["token", "issue", "alice", "--role", "supervisor", "-c", str(config)])
    assert clash.exit_code == 1 and "is an agent id" in clash.output
    issued = runner.invoke(main, ["token", "issue", "alice", "--label", "desk 4", "-c", str(config)])
    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip()
    assert token.startswith("cti_") and "not shown again" in issued.stderr
    listed = runner.invoke(main, ["token", "list", "-c", str(config)])
    [line] = listed.stdout.splitlines()
    token_id = token.split("_")[1]
    assert line.startswith(token_id) and "agent" in line and "alice" in line and "desk 4" in line
    assert token not in listed.output, "a token is shown once, when issued"
    gone = runner.invoke(main, ["token", "revoke", token_id, "-c", str(config)])
    assert gone.exit_code == 0 and "revoked 1 token(s)" in gone.stdout
    again = runner.invoke(main, ["token", "revoke", token_id, "-c", str(config)])
    assert again.exit_code == 1 and f"no such token: {token_id}" in again.output
    assert runner.invoke(main, ["token", "list", "-c", str(config)]).stdout == ""
