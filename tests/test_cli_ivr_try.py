"""``cti ivr try`` finds the caller where the server would: ``--directory FILE``, else the config's directory
source, else the customer directory in the config's Redis (a real redis-server here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cti.cli import main
from cti.devservices import free_port

ROOT = Path(__file__).resolve().parents[1]
HOTLINE = str(ROOT / "config" / "ivr" / "hotline.yaml")
OPEN = "2026-11-23T11:00+08:00"
CUSTOMERS = """
- id: c-77
  numbers: ["13700000077"]
  name: Zhao Min
  company: Bright Ports
  vip_tier: 2
  account_manager: alice
"""


def try_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["ivr", "try", HOTLINE, "--caller", "13700000077", "--at", OPEN, "--json",
                                       *args])
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def test_directory_file_names_the_customers(tmp_path: Path) -> None:
    (tmp_path / "vips.yaml").write_text(CUSTOMERS, encoding="utf-8")
    out = try_json("--directory", str(tmp_path / "vips.yaml"), "-c", str(ROOT / "config" / "cti.yaml"))
    assert (out["end"], out["entry_point"], out["priority"]) == ("route", "vip", 2)
    assert out["requirements"] == {"skills": {}, "language": None, "preferred_agents": ["alice"]}
    unknown = try_json("-c", str(ROOT / "config" / "cti.yaml"))  # the config's customers.yaml lacks them
    assert unknown["entry_point"] == "billing"


@pytest.mark.network
def test_without_a_file_the_configs_redis_directory_is_asked(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "cti.yaml"
    config.write_text(f"redis:\n  url: {redis_url}\n  key_prefix: 'ivrtry:'\n", encoding="utf-8")
    (tmp_path / "vips.yaml").write_text(CUSTOMERS, encoding="utf-8")
    imported = CliRunner().invoke(main, ["directory", "import", "-c", str(config), str(tmp_path / "vips.yaml")])
    assert imported.exit_code == 0, imported.output
    out = try_json("-c", str(config))
    assert (out["entry_point"], out["priority"]) == ("vip", 2)
    assert out["vars"]["customer_id"] == "c-77"


def test_an_unreachable_redis_is_said_not_taken_for_an_unknown_caller(tmp_path: Path) -> None:
    config = tmp_path / "cti.yaml"
    config.write_text(f"redis:\n  url: redis://:s3cret@127.0.0.1:{free_port()}/0\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["ivr", "try", HOTLINE, "--caller", "13700000077", "--at", OPEN,
                                       "-c", str(config)])
    assert result.exit_code == 1
    assert "did not answer" in result.output and "--directory FILE" in result.output
    assert "s3cret" not in result.output
