"""Typed configuration: defaults, then the YAML file, then ``CTI_*`` environment variables.

Loaded and validated once at start; a bad file stops the server with an error
that names the file, the key path and the reason (:class:`ConfigError`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from cti.crm import CrmLinks

__all__ = [
    "AgentConfig",
    "AgiConfig",
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
    public_host: str | None = Field(None, description="the broker's address as agents' clients reach it "
                                    "(GET /api/client-config); default: the host the client used for the web server")
    public_port: int | None = Field(None, ge=1, le=65535, description="default: port")

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, v: str) -> str:
        if any(c in v for c in "+#\0") or v.endswith("/"):
            raise ValueError("must not contain '+', '#', NUL or end with '/'")
        return v


class HttpConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="pages on these origins (scheme://host[:port], e.g. a CRM that embeds the agent client) may "
        "call the API and open agents' WebSockets with a token; the server's own pages always may")

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") \
                    or parts.query or parts.fragment or "*" in origin:
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], no path, no wildcard")
        return [o.rstrip("/") for o in v]


class CommandsConfig(_Model):
    """Agents' call control (``POST /api/agents/{id}/commands``, WebSocket frames): where Asterisk
    sends a dialled or transferred call, and the disposition codes agents may set."""

    dial_context: str = Field("from-internal", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                              description="click-to-dial and transfers to a number: Originate / Redirect here")
    transfer_context: str = Field("from-internal", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                                  description="blind transfers to an agent: to their extension in this context")
    dial_timeout_s: float = Field(30.0, gt=0, le=300, description="how long click-to-dial rings the agent's phone")
    dispositions: list[str] = Field(
        default_factory=lambda: ["resolved", "follow_up", "escalated", "wrong_number", "sales_lead"],
        description="the codes an agent may set on a call they took")
    not_ready_reasons: list[str] = Field(
        default_factory=lambda: ["break", "lunch", "training", "meeting"],
        description="observe mode: the pause reasons agents' consoles offer (app_queue takes any); CTI mode "
        "takes routing.yaml's not_ready_reasons instead")


class AuthConfig(_Model):
    """Tokens (``cti token issue``) on every API call and WebSocket. Off only for a private development box:
    then anyone who reaches the port reads every caller's record."""

    enabled: bool = True


class HistoryConfig(_Model):
    """Agents' call history (``GET /api/agents/{id}/calls/today``): a day starts at local midnight here."""

    timezone: str = Field("UTC", description="IANA name, e.g. Asia/Shanghai")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"unknown timezone {v!r} (an IANA name such as Asia/Shanghai)") from None
        return v


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
    """The embedded PBX simulator that stands in for Asterisk in the demo.

    The call-centre features beyond one queue (overflow, transfers, agents in two queues, breaks)
    are off by default; ``config/cti.yaml`` turns them on modestly for the demo and
    :meth:`all_features` turns every one of them on for tests.
    """

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
    channel_style: Literal["auto", "local", "pjsip"] = Field(
        "auto",
        description="local: callers and agents are Local channel pairs, with the full dialplan of the recorded "
        "Asterisk 22 (about 95 events per answered call); pjsip: one PJSIP channel per party, few events; "
        "auto: local when every agent interface is a Local/ member",
    )
    entry_context: str = Field("ivr-entry", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                               description="local style: the dialplan context callers enter (Local/s@<context>)")
    xfer_context: str = Field("xfer-queue", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                              description="transfers to a queue go to extension <queue> here (it runs Queue(<queue>))")
    queue_timeout_s: float = Field(0.0, ge=0, description="Queue() timeout: QUEUESTATUS=TIMEOUT after this; 0 = none")
    overflow_queue: str = Field("sales", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                                description="the second queue: overflow target, transfer target, second membership")
    overflow_share: float = Field(0.0, ge=0, le=1, description="share of callers who wait overflow_timeout_s in "
                                  "`queue`, then are sent to overflow_queue")
    overflow_timeout_s: float = Field(6.0, gt=0, description="the first queue's timeout for overflow callers")
    second_queue_share: float = Field(0.0, ge=0, le=1, description="share of the agents (the last ones listed) who "
                                      "are members of overflow_queue as well (unless queue_members says who)")
    queue_members: dict[str, list[str]] = Field(
        default_factory=dict,
        description="queue -> agent ids (or names, interfaces) in ring order; overrides the default membership "
        "(every agent in `queue`, second_queue_share of them in overflow_queue)",
    )
    transfer_share: float = Field(0.0, ge=0, le=1, description="share of answered calls the agent blind-transfers")
    transfer_to_agent_share: float = Field(0.5, ge=0, le=1, description="of those, the share sent straight to "
                                           "another agent's extension; the rest go to a queue (xfer_context)")
    caller_hangup_share: float = Field(0.0, ge=0, le=1, description="share of answered calls the caller ends")
    pauses_per_hour: float = Field(0.0, ge=0, description="per agent: breaks taken, each paused in one queue only")
    mean_pause_s: float = Field(120.0, gt=0, description="mean length of a break")
    mode: Literal["observe", "cti"] = Field(
        "observe",
        description="observe: callers run a small IVR, then app_queue's Queue() routes them (the recorded dialplan); "
        "cti: the PBX plays config/asterisk/extensions_cti.conf (cti-entry, cti-hold, cti-connect) and a CTI "
        "server routes callers with Setvar and Redirect (cti/sim/cti_mode.py)",
    )
    agi_url: str | None = Field(
        None,
        description="cti mode: the FastAGI address and flow callers' AGI() runs (agi://127.0.0.1:4573/hotline), "
        "played for real with cti/sim/agi_caller.py; None: the simulator plays the AGI's AMI footprint itself and "
        "writes the caller's drawn choice to CTI_OUTCOME, CTI_ENTRY, CTI_TIER, CTI_LANGUAGE ...",
    )
    agi_scenarios: list[str] = Field(
        default_factory=lambda: ["1,1", "1,2", "1,3", "2,1", "2,2", "2,3"],
        min_length=1,
        description="cti mode with agi_url: the keys a random caller presses in the IVR (as for `cti ivr try`), one "
        "entry drawn per call",
    )
    entry_points: dict[str, float] = Field(
        default_factory=lambda: {"billing": 0.4, "tech_support": 0.35, "complaints": 0.15, "vip": 0.1},
        description="cti mode without agi_url: the IVR's choices (routing.yaml entry points) and the share of "
        "callers choosing each (CTI_ENTRY)",
    )
    vip_tiers: list[str] = Field(
        default_factory=lambda: ["vip_platinum", "vip_gold", "vip_silver"],
        min_length=1,
        description="cti mode without agi_url: a VIP caller's CTI_TIER is one of these (routing.yaml tiers, highest "
        "first; CTI_PRIORITY is 3, 2, 1 for them), everyone else's is normal; vip_share says how many are VIPs",
    )
    languages: dict[str, float] = Field(
        default_factory=lambda: {"zh": 0.7, "en": 0.3},
        description="cti mode without agi_url: CTI_LANGUAGE and the share of callers speaking each",
    )
    ivr_hangup_share: float = Field(0.0, ge=0, le=1, description="cti mode: share of callers who hang up in the IVR")
    hold_max_s: int = Field(300, ge=0, description="cti mode: CTI_HOLD_MAX, seconds on hold in all (across returns "
                            "from cti-connect) before CtiFallback and the fallback queue")
    fallback_queue: str = Field("support", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                                description="cti mode: CTI_FALLBACK_QUEUE, the app_queue queue a caller held too long "
                                "joins (every agent is a member unless queue_members names it)")
    fallback_timeout_s: int = Field(600, ge=0, description="cti mode: CTI_FALLBACK_TIMEOUT, Queue()'s timeout there")

    @field_validator("agi_url")
    @classmethod
    def _agi_address(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme != "agi" or not parts.hostname or not parts.path.strip("/"):
            raise ValueError("must look like agi://host[:port]/flow")
        _ = parts.port  # raises ValueError for a bad port
        return v

    @field_validator("entry_points", "languages")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(share < 0 for share in v.values()) or sum(v.values()) <= 0:
            raise ValueError("needs at least one name with a positive share, and no negative share")
        return v

    @classmethod
    def all_features(cls, **overrides: Any) -> SimConfig:
        """Every feature on, at shares high enough that ten simulated minutes show each of them (tests)."""
        settings: dict[str, Any] = {
            "channel_style": "local", "calls_per_minute": 10, "mean_talk_s": 20, "mean_patience_s": 50,
            "ring_s": 1, "wrapup_s": 2, "no_answer_prob": 0.15, "ring_timeout_s": 6, "retry_s": 1,
            "queue_timeout_s": 30, "overflow_share": 0.25, "overflow_timeout_s": 6, "second_queue_share": 0.5,
            "transfer_share": 0.3, "transfer_to_agent_share": 0.5, "caller_hangup_share": 0.1,
            "pauses_per_hour": 20, "mean_pause_s": 60,
        }
        return cls.model_validate(settings | overrides)


class AgiConfig(_Model):
    """The FastAGI server for ``AGI(agi://host:port/<flow>)``; no authentication: keep it on loopback or a LAN."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(4573, ge=0, le=65535)
    flows: Path = Field(Path("ivr"), description="directory of flow files (*.yaml), relative to this file")
    max_sessions: int = Field(1000, ge=1)
    max_connections: int = Field(2000, ge=1, description="keep below ulimit -n")
    header_timeout: float = Field(5.0, gt=0)
    reply_timeout: float = Field(60.0, gt=0, description="per command, beyond the command's own wait")
    exec_timeout: float = Field(600.0, gt=0)
    lookup_timeout: float = Field(2.0, gt=0)
    on_end_timeout: float = Field(5.0, gt=0)
    drain_timeout: float = Field(10.0, ge=0)
    clock_start: AwareDatetime | None = Field(
        None, description="the flows' clock starts at this time (with offset) and runs at real speed: the demo "
        "sets a weekday morning so business hours are open whenever it runs; None: the real time")


class RoutingModeConfig(_Model):
    """How calls reach agents. ``observe``: Asterisk's ``Queue()`` routes and the server follows it.
    ``cti``: the server routes (``config/asterisk/extensions_cti.conf``): callers parked in the hold
    context are matched under ``file`` (``routing/README.md``) and redirected to the connect context."""

    mode: Literal["observe", "cti"] = "observe"
    file: Path = Field(Path("routing.yaml"), description="the routing config, relative to this file")
    hold_context: str = Field("cti-hold", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    connect_context: str = Field("cti-connect", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    reservation_timeout_s: float = Field(
        10.0, gt=0, description="a reserved call whose agent's phone has not rung in this time is queued again")
    sweep_s: float = Field(1.0, gt=0, description="how often waiting calls are re-matched (escalation steps, "
                           "stale reservations)")


class KpiConfig(_Model):
    """How the wallboard, ``/api/kpis`` and ``/metrics`` count (docs/kpis.md defines each figure).
    The day starts at midnight in ``history.timezone``."""

    service_level_s: float = Field(20.0, gt=0, le=3600, description="answered within this many seconds counts as good")
    service_level_by_queue: dict[str, float] = Field(
        default_factory=dict, description="a threshold of its own per queue, e.g. {complaints: 20, sales: 10}")
    service_level_basis: Literal["answered", "offered", "sl2"] = Field(
        "answered", description="answered: of answered visits (Asternic, Wazo, app_queue's ServicelevelPerf); "
        "offered: of offered visits (NethVoice); sl2: abandons within the threshold count as good, over "
        "answered + abandoned (app_queue's ServicelevelPerf2)")
    target_service_level: float = Field(0.8, gt=0, lt=1, description="the share Erlang C staffs for")
    short_abandon_s: float = Field(5.0, ge=0, le=120, description="abandons quicker than this are not counted "
                                   "as offered or abandoned (QueueMetrics' short calls); 0 counts them all")
    window_s: float = Field(900.0, ge=60, le=86_400, description="the rolling window")
    repeat_window_h: float = Field(168.0, gt=0, le=24 * 90, description="a call from a number seen within this "
                                   "many hours is a repeat call")

    @field_validator("service_level_by_queue")
    @classmethod
    def _thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        for queue, seconds in v.items():
            if not 0 < seconds <= 3600:
                raise ValueError(f"queue {queue!r}: a threshold is more than 0 and at most 3600 seconds")
        return v


class Config(_Model):
    ami: AmiConfig = AmiConfig()
    redis: RedisConfig = RedisConfig()
    mqtt: MqttConfig = MqttConfig()
    http: HttpConfig = HttpConfig()
    auth: AuthConfig = AuthConfig()
    commands: CommandsConfig = CommandsConfig()
    agents: list[AgentConfig] = []
    directory: DirectoryConfig = DirectoryConfig()
    sim: SimConfig = SimConfig()
    agi: AgiConfig = AgiConfig()
    routing: RoutingModeConfig = RoutingModeConfig()
    history: HistoryConfig = HistoryConfig()
    kpi: KpiConfig = KpiConfig()
    crm: CrmLinks = []  # cti/crm.py: screen-pop links into CRMs
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


#: Which ``CTI_*`` variable set which key path, so a bad value is reported under the variable's name.
_EnvPaths = dict[tuple[str, ...], str]


def _apply_env(data: dict[str, Any], environ: Mapping[str, str], origins: _EnvPaths | None = None) -> dict[str, Any]:
    """``CTI_AMI__SECRET=x`` sets ``ami.secret``: secrets need not live in the file.

    ``origins``, when given, collects each key path set and the variable that set it.
    """
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
        if origins is not None:
            origins[tuple(path)] = name
    return data


def _env_source(loc: tuple[str, ...], origins: _EnvPaths) -> str | None:
    """How to name an error at ``loc`` that a variable caused (it set that key, a key inside it, or a key
    below it: ``CTI_AMII__PORT`` makes the unknown section ``amii``); None when the file caused it."""
    if not loc:
        return None
    for path, name in origins.items():
        if path == loc:
            return name
        if path[: len(loc)] == loc or loc[: len(path)] == path:
            return f"{name} ({'.'.join(loc)})"
    return None


def _format_errors(source: str, exc: ValidationError, origins: _EnvPaths | None = None) -> str:
    """One line per error, under the variable's name when the value came from the environment."""
    lines: list[str] = []
    from_file = from_env = False
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        where = _env_source(loc, origins or {})
        if where is None:
            from_file = True
            where = ".".join(loc) or "(top level)"
        else:
            from_env = True
        lines.append(f"  {where}: {err['msg']}")
    env = "environment (CTI_* variables)"
    head = (f"{source} and {env}" if from_file else env) if from_env else source
    return "\n".join([f"{head}: {exc.error_count()} invalid setting(s)", *lines])


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
    origins: _EnvPaths = {}
    data = _apply_env(data, environ, origins)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc, origins)) from exc
    if config.directory.source is not None and path is not None and not config.directory.source.is_absolute():
        resolved = (Path(path).parent / config.directory.source).resolve()
        config = config.model_copy(update={"directory": DirectoryConfig(source=resolved)})
    if path is not None and not config.agi.flows.is_absolute():
        config = config.model_copy(update={"agi": config.agi.model_copy(update={
            "flows": (Path(path).parent / config.agi.flows).resolve()})})
    if path is not None and not config.routing.file.is_absolute():
        config = config.model_copy(update={"routing": config.routing.model_copy(update={
            "file": (Path(path).parent / config.routing.file).resolve()})})
    return config
