"""Typed configuration: defaults, then the YAML file, then ``CTI_*`` environment variables.

Loaded and validated once at start; a bad file stops the server with an error
that names the file, the key path and the reason (:class:`ConfigError`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "AgentConfig",
    "AmiConfig",
    "Config",
    "ConfigError",
    "DirectoryConfig",
    "HttpConfig",
    "MqttConfig",
    "RedisConfig",
    "SimConfig",
    "load_config",
]

ENV_PREFIX = "CTI_"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AmiConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(5038, ge=1, le=65535)
    username: str = "cti"
    secret: SecretStr = SecretStr("ctisecret")
    ping_interval: float = Field(10.0, gt=0, description="seconds between keepalive Pings")
    ping_timeout: float = Field(5.0, gt=0, description="a Ping with no reply in this time drops the connection")
    action_timeout: float = Field(10.0, gt=0, description="an action with no complete reply in this time fails")
    connect_timeout: float = Field(5.0, gt=0)
    backoff_initial: float = Field(0.5, gt=0, description="first reconnect delay, doubled per failure")
    backoff_max: float = Field(30.0, gt=0, description="reconnect delay cap")
    resync_interval: float = Field(300.0, ge=0, description="seconds between resyncs on a live link; 0 = only on login")


class RedisConfig(_Model):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "cti:"


class MqttConfig(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    topic_prefix: str = "cti/v1"
    client_id: str = "cti-server"

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, v: str) -> str:
        if any(c in v for c in "+#\0") or v.endswith("/"):
            raise ValueError("must not contain '+', '#', NUL or end with '/'")
        return v


class HttpConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class AgentConfig(_Model):
    """An agent as the CTI server knows them; ``id`` names their push topic and WebSocket path."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    name: str
    interface: str = Field(description="the queue member's state interface, e.g. PJSIP/1001")
    extension: str | None = None


class DirectoryConfig(_Model):
    """Where the customer directory is imported from at start (CSV or YAML); None keeps what Redis has."""

    source: Path | None = None


class SimConfig(_Model):
    """The embedded PBX simulator that stands in for Asterisk in the demo."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(5038, ge=0, le=65535)
    seed: int = 1
    calls_per_minute: float = Field(6.0, ge=0)
    mean_talk_s: float = Field(20.0, gt=0)
    mean_patience_s: float = Field(60.0, gt=0)
    ring_s: float = Field(2.0, ge=0)
    wrapup_s: float = Field(3.0, ge=0)
    vip_share: float = Field(0.2, ge=0, le=1)
    queue: str = Field("support", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the app_queue queue callers join")
    no_answer_prob: float = Field(0.1, ge=0, le=1, description="chance an agent lets a ring time out")
    ring_timeout_s: float = Field(8.0, gt=0, description="queue member ring timeout (queues.conf timeout)")
    retry_s: float = Field(1.0, ge=0, description="pause before a member that did not answer is rung again")
    tick_s: float = Field(0.05, gt=0, description="how often the simulation clock advances in real time")


class Config(_Model):
    ami: AmiConfig = AmiConfig()
    redis: RedisConfig = RedisConfig()
    mqtt: MqttConfig = MqttConfig()
    http: HttpConfig = HttpConfig()
    agents: list[AgentConfig] = []
    directory: DirectoryConfig = DirectoryConfig()
    sim: SimConfig = SimConfig()
    log_format: Literal["auto", "json", "console"] = "auto"

    @model_validator(mode="after")
    def _unique_agents(self) -> Config:
        for attr in ("id", "interface"):
            seen: set[str] = set()
            for agent in self.agents:
                value = getattr(agent, attr)
                if value.lower() in seen:
                    raise ValueError(f"two agents share the {attr} {value!r}")
                seen.add(value.lower())
        return self


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``CTI_AMI__SECRET=x`` sets ``ami.secret``: secrets need not live in the file."""
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return data


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} invalid setting(s)"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_config(path: Path | str | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, merge and validate; raise :class:`ConfigError` naming the file and key path."""
    environ = os.environ if environ is None else environ
    source = str(path) if path else "(defaults)"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping, not {type(loaded).__name__}")
        data = loaded
    data = _apply_env(data, environ)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from exc
    if config.directory.source is not None and path is not None and not config.directory.source.is_absolute():
        resolved = (Path(path).parent / config.directory.source).resolve()
        config = config.model_copy(update={"directory": DirectoryConfig(source=resolved)})
    return config
