"""A config that does not validate stops the server with the file, the key path and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from cti.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_validates() -> None:
    config = load_config(ROOT / "config" / "cti.yaml", environ={})
    assert [a.id for a in config.agents] == ["alice", "bob", "chen"]
    assert config.directory.source == (ROOT / "config" / "customers.yaml").resolve()
    assert config.ami.secret.get_secret_value() == "ctisecret"
    assert "ctisecret" not in repr(config), "secrets are never printed"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cti.yaml"
    path.write_text("ami:\n  host: pbx.example\n  secret: from-file\n")
    config = load_config(path, environ={"CTI_AMI__SECRET": "from-env", "CTI_MQTT__PORT": "1884", "HOME": "/x"})
    assert config.ami.host == "pbx.example"
    assert config.ami.secret.get_secret_value() == "from-env" and config.mqtt.port == 1884


@pytest.mark.parametrize(("text", "where", "why"), [
    ("ami:\n  port: seventy\n", "ami.port", "valid integer"),
    ("ami:\n  port: 70000\n", "ami.port", "less than or equal to 65535"),
    ("agents:\n  - {id: 'al ice', name: A, interface: PJSIP/1}\n", "agents.0.id", "match pattern"),
    ("agents:\n  - {id: a, name: A}\n", "agents.0.interface", "Field required"),
    ("mqtt:\n  topic_prefix: 'cti/#'\n", "mqtt.topic_prefix", "must not contain"),
    ("amii:\n  port: 1\n", "amii", "Extra inputs are not permitted"),
    ("agents:\n  - {id: a, name: A, interface: PJSIP/1}\n  - {id: a, name: B, interface: PJSIP/2}\n",
     "(top level)", "two agents share the id 'a'"),
])
def test_bad_values_name_file_key_and_reason(tmp_path: Path, text: str, where: str, why: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert str(path) in message and f"{where}:" in message and why in message


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={})
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml", environ={})
    (tmp_path / "broken.yaml").write_text("ami: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml", environ={})


def test_the_ivr_clock_start_needs_an_offset() -> None:
    from cti.config import AgiConfig

    with pytest.raises(ValueError, match="timezone"):
        AgiConfig.model_validate({"clock_start": "2026-12-01T10:00:00"})
    start = AgiConfig.model_validate({"clock_start": "2026-12-01T10:00:00+08:00"}).clock_start
    assert start is not None and start.utcoffset() is not None
