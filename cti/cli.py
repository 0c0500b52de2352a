"""The ``cti`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import click

from cti.config import Config, ConfigError, load_config
from cti.logs import configure_logging

DEFAULT_CONFIG = Path("config/cti.yaml")


def _load(path: Path | None) -> Config:
    try:
        return load_config(path if path is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(path_type=Path, dir_okay=False),
    help="YAML configuration (default: config/cti.yaml when present). CTI_SECTION__KEY variables override it.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cti-server")
def main() -> None:
    """CTI server for Asterisk call centres.

    Follows Asterisk's AMI to keep a live model of every call, queue and agent,
    and pushes screen pops and call events to agents over MQTT and WebSocket.

    \b
    Start here:
      cti demo            the whole thing against the built-in PBX simulator
      cti serve           against the Asterisk named in the config
      cti replay FILE     what the call model makes of an AMI capture
      cti check-config    validate a config file without starting anything
    """


@main.command()
@config_option
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default=None,
              help="auto: readable on a terminal, JSON lines otherwise.")
@click.option("--log-level", default="INFO", show_default=True)
def serve(config_path: Path | None, log_format: str | None, log_level: str) -> None:
    """Run the server against the PBX in the config (Asterisk, or the simulator if sim.enabled).

    Connects to the AMI (reconnecting with backoff and resynchronising after every
    reconnect), Redis and the MQTT broker, and serves the agent pages, the
    WebSocket push endpoint, /api/calls, /healthz and /metrics on http.host:port.
    """
    from cti.app import StartupError, run_server

    config = _load(config_path)
    configure_logging(log_format or config.log_format, log_level)  # type: ignore[arg-type]
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_server(config))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@config_option
@click.option("--http-port", type=int, default=None, help="web port (default from the config, 8080).")
@click.option("--calls-per-minute", type=float, default=None, help="simulated arrival rate.")
@click.option("--seed", type=int, default=None, help="simulator seed: the same seed replays the same day.")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default=None)
def demo(config_path: Path | None, http_port: int | None, calls_per_minute: float | None, seed: int | None,
         log_format: str | None) -> None:
    """Run the simulator, a private Redis and MQTT broker, and the server, all on 127.0.0.1.

    Open the printed URL: each agent has a page where screen pops arrive as the
    simulated callers are queued and offered. Stop with Ctrl-C.
    """
    from cti.app import StartupError, run_demo
    from cti.devservices import ServiceError

    config = _load(config_path)
    configure_logging(log_format or config.log_format)  # type: ignore[arg-type]
    sim_update: dict[str, object] = {"enabled": True, "port": 0}
    if calls_per_minute is not None:
        sim_update["calls_per_minute"] = calls_per_minute
    if seed is not None:
        sim_update["seed"] = seed
    updates: dict[str, object] = {"sim": config.sim.model_copy(update=sim_update)}
    if http_port is not None:
        updates["http"] = config.http.model_copy(update={"port": http_port})
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_demo(config.model_copy(update=updates)))
    except (StartupError, ServiceError) as exc:
        raise click.ClickException(str(exc)) from exc


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(1 << 16):
        yield chunk


@main.command()
@click.argument("capture", type=click.File("rb"))
@config_option
def replay(capture: BinaryIO, config_path: Path | None) -> None:
    """Print one JSON line per call found in a raw AMI capture (use - for stdin).

    CAPTURE holds the bytes an AMI client received: the greeting, responses and
    events, blank-line separated (CRLF or LF). Each line has linkedid, caller,
    queue, agent (the queue member name that answered), outcome (answered,
    abandoned, unanswered, or null for a call that never queued), wait_s and talk_s.
    """
    from cti.replay import replay_chunks

    config = _load(config_path)
    configure_logging("console", "ERROR")
    out = sys.stdout
    for row in replay_chunks(_chunks(capture), agents=config.agents):
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


@main.command("check-config")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False), required=False)
def check_config(path: Path | None) -> None:
    """Validate a config file (default config/cti.yaml) and the environment overrides; exit 1 if bad."""
    config = _load(path)
    click.echo(f"ok: AMI {config.ami.username}@{config.ami.host}:{config.ami.port}, {len(config.agents)} agents, "
               f"Redis {config.redis.url}, MQTT {config.mqtt.host}:{config.mqtt.port}, "
               f"HTTP {config.http.host}:{config.http.port}")


@main.group()
def directory() -> None:
    """The customer directory screen pops are filled from (kept in Redis)."""


@directory.command("import")
@click.argument("source", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@config_option
def directory_import(source: Path, config_path: Path | None) -> None:
    """Replace the directory in Redis with SOURCE (.csv or .yaml); nothing changes if a row is bad."""
    from cti.directory.importer import DirectoryImportError, load_customers

    config = _load(config_path)
    configure_logging("console", "WARNING")
    try:
        customers = load_customers(source)
    except DirectoryImportError as exc:
        raise click.ClickException(str(exc)) from exc

    async def _import() -> int:
        import redis.asyncio as aioredis

        from cti.directory.store import RedisDirectory

        client = aioredis.from_url(config.redis.url)
        try:
            store = RedisDirectory(client, key_prefix=config.redis.key_prefix)
            await store.replace_all(customers)
            return await store.count()
        finally:
            await client.aclose()

    click.echo(f"imported {asyncio.run(_import())} customers from {source}")


if __name__ == "__main__":  # pragma: no cover
    main()
