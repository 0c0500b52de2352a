"""The ``cti`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import quote, urlsplit, urlunsplit

import click

from cti.config import Config, ConfigError, load_config
from cti.logs import configure_logging

DEFAULT_CONFIG = Path("config/cti.yaml")
#: Signals that stop ``serve`` and ``demo`` the way Ctrl-C does (``kill``, systemd, a closed terminal).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _load(path: Path | None) -> Config:
    try:
        return load_config(path if path is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _redacted(url: str) -> str:
    """A Redis URL fit to print: any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "(unparseable URL)"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__


def _run_until_stopped(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)``; Ctrl-C, SIGTERM or SIGHUP cancel ``main``, so everything it started is stopped
    and cleaned up by its own ``finally`` blocks and context managers (the demo's Redis, broker and folder)."""

    async def guarded() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stopped: list[int] = []

        def stop(signum: int) -> None:
            stopped.append(signum)
            task.cancel()

        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, stop, signum)
        try:
            await main
        except asyncio.CancelledError:
            if not stopped:
                raise
        finally:
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)

    # Ctrl-C: the runner cancels main the same way
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(guarded())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed: a call costs 10-25% less server CPU with it (README, Performance)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


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
    Ctrl-C, SIGTERM and SIGHUP stop it cleanly.
    """
    from cti.app import StartupError, run_server

    config = _load(config_path)
    configure_logging(log_format or config.log_format, log_level)  # type: ignore[arg-type]
    try:
        _run_until_stopped(run_server(config))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@config_option
@click.option("--http-port", type=int, default=None, help="web port (default from the config, 8080).")
@click.option("--calls-per-minute", type=float, default=None, help="simulated arrival rate.")
@click.option("--seed", type=int, default=None, help="simulator seed: the same seed replays the same day.")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default=None)
@click.option("--mode", type=click.Choice(["cti", "observe"]), default="cti", show_default=True,
              help="cti: callers go through the IVR flow over FastAGI and the server routes them "
              "(config/asterisk/extensions_cti.conf); observe: Asterisk's Queue() routes, the server follows.")
def demo(*, config_path: Path | None, http_port: int | None, calls_per_minute: float | None, seed: int | None,
         log_format: str | None, mode: str) -> None:
    """Run the simulator, a private Redis and MQTT broker, and the server, all on 127.0.0.1.

    Open the printed URL: each agent has a page where screen pops arrive as the
    simulated callers are queued and offered. In CTI mode each caller first runs the
    hotline IVR (config/ivr/hotline.yaml) over FastAGI, then waits on hold until the
    server picks an agent by skill and VIP tier (config/routing.yaml). Stop with Ctrl-C
    (or SIGTERM, SIGHUP): the private Redis and broker are stopped and their temporary
    folder removed.
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
    updates: dict[str, object] = {}
    if mode == "cti":
        from cti.devservices import free_port

        agi_port = config.agi.port if config.agi.enabled else free_port()
        # A simulated caller need not be let finish the IVR at Ctrl-C: 2 s, not the 10 s a real one gets.
        updates["agi"] = config.agi.model_copy(update={"enabled": True, "port": agi_port,
                                                       "drain_timeout": min(config.agi.drain_timeout, 2.0)})
        updates["routing"] = config.routing.model_copy(update={"mode": "cti"})
        sim_update |= {"mode": "cti", "agi_url": f"agi://127.0.0.1:{agi_port}/hotline"}  # config/ivr/hotline.yaml
    updates["sim"] = config.sim.model_copy(update=sim_update)
    if http_port is not None:
        updates["http"] = config.http.model_copy(update={"port": http_port})
    try:
        _run_until_stopped(run_demo(config.model_copy(update=updates)))
    except (StartupError, ServiceError) as exc:
        raise click.ClickException(str(exc)) from exc


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(1 << 16):
        yield chunk


class _NotACapture(Exception):
    """The file given to ``cti replay`` is not AMI traffic; the message says what it seems to be."""


#: How far into a file ``cti replay`` looks for a first AMI message before deciding it is something else.
SNIFF_LIMIT = 1 << 20


def _capture_chunks(stream: BinaryIO, name: str) -> Iterator[bytes]:
    """The stream's chunks, passed on unchanged, raising :class:`_NotACapture` unless an AMI message with an
    ``Event`` or ``Response`` key appears within :data:`SNIFF_LIMIT` bytes (decoded here with the public
    codec, as the replay decodes them)."""
    from cti.ami.codec import GREETING_PREFIX, Decoder, ProtocolError

    decoder: Decoder | None = None
    seen = 0
    found = False
    for chunk in _chunks(stream):
        if not found:
            if decoder is None:
                if b"\0" in chunk[:4096]:
                    raise _NotACapture(f"{name}: a binary file, not an AMI capture")
                decoder = Decoder(expect_greeting=chunk.startswith(GREETING_PREFIX.encode()))
            try:
                messages = decoder.feed(chunk)
            except ProtocolError as exc:
                raise _NotACapture(f"{name}: not an AMI capture ({exc})") from None
            found = any("Event" in m or "Response" in m for m in messages)
            seen += len(chunk)
            if not found and seen >= SNIFF_LIMIT:
                raise _NotACapture(f"{name}: not an AMI capture: no AMI Event or Response message in its first "
                                   f"{SNIFF_LIMIT >> 20} MiB")
        yield chunk
    if not found:
        raise _NotACapture(f"{name}: empty, not an AMI capture" if seen == 0 and decoder is None else
                           f"{name}: not an AMI capture: no AMI message with an Event or Response line in it "
                           f"(cti replay reads the raw bytes an AMI client received)")


@main.command()
@click.argument("capture", type=click.File("rb"))
@config_option
def replay(capture: BinaryIO, config_path: Path | None) -> None:
    """Print one JSON line per call found in a raw AMI capture (use - for stdin).

    CAPTURE holds the bytes an AMI client received: the greeting, responses and
    events, blank-line separated (CRLF or LF). Each line has linkedid, caller,
    queue, agent (the queue member name that answered), outcome (answered,
    abandoned, unanswered, or null for a call that never queued), wait_s and talk_s.
    A file with no AMI Event or Response message in it (an image, a CSV, an empty
    file) is refused with exit status 1.
    """
    from cti.ami.codec import ProtocolError
    from cti.replay import replay_chunks

    config = _load(config_path)
    configure_logging("console", "ERROR")
    name = getattr(capture, "name", "-")
    name = "(stdin)" if name in ("-", "<stdin>") else str(name)
    out = sys.stdout
    try:
        rows = list(replay_chunks(_capture_chunks(capture, name), agents=config.agents))
    except _NotACapture as exc:
        raise click.ClickException(str(exc)) from None
    except ProtocolError as exc:
        raise click.ClickException(f"{name}: not readable as AMI: {exc}") from None
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


@main.command("check-config")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False), required=False)
def check_config(path: Path | None) -> None:
    """Validate a config file (default config/cti.yaml) and the environment overrides, the routing config
    (routing.file, by default routing.yaml beside it) and the IVR flows of agi.flows: unknown or
    unreachable nodes, loops with no exit, missing prompts, entry points, skills or tiers routing does
    not have. Exit 1 on any error."""
    from ivr_flows import FlowError, check_flow, load_flows
    from routing.config import RoutingConfigError, load_routing_config

    config = _load(path)
    click.echo(f"ok: AMI {config.ami.username}@{config.ami.host}:{config.ami.port}, {len(config.agents)} agents, "
               f"Redis {config.redis.url}, MQTT {config.mqtt.host}:{config.mqtt.port}, "
               f"HTTP {config.http.host}:{config.http.port}")
    routing = None
    routing_file = config.routing.file  # resolved beside the config file
    if routing_file.exists() or config.routing.mode == "cti":
        try:
            routing = load_routing_config(routing_file)
        except RoutingConfigError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"ok: routing ({config.routing.mode} mode) {routing_file}: {len(routing.entry_points)} entry "
                   f"points, {len(routing.tiers)} tiers, policy {routing.policy}")
    if not config.agi.flows.is_dir():
        return
    try:
        flows = load_flows(config.agi.flows)
    except FlowError as exc:
        raise click.ClickException(str(exc)) from None
    errors = 0
    for name, flow in sorted(flows.items()):
        problems = check_flow(flow, entry_points=routing.entry_points if routing else None,
                              skills=routing.skills if routing else None, tiers=routing.tiers if routing else None)
        errors += sum(p.severity == "error" for p in problems)
        for problem in problems:
            click.echo(str(problem), err=True)
        click.echo(f"{'ok' if not any(p.severity == 'error' for p in problems) else 'bad'}: IVR flow {name} "
                   f"({len(flow.nodes)} nodes, {len(problems)} problem(s))")
    if errors:
        raise click.ClickException(f"{errors} error(s) in the IVR flows")


@main.group()
def directory() -> None:
    """The customer directory screen pops are filled from (kept in Redis)."""


def _encoding(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    import codecs

    if value is not None:
        try:
            codecs.lookup(value)
        except LookupError:
            raise click.BadParameter(f"unknown encoding {value!r} (e.g. utf-8, gb18030, big5, utf-16)") from None
    return value


@directory.command("import")
@click.argument("source", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@config_option
@click.option("--encoding", default=None, callback=_encoding, metavar="NAME",
              help="the file's text encoding (gb18030, big5, cp1252, ...); default: detected.")
def directory_import(source: Path, config_path: Path | None, encoding: str | None) -> None:
    """Replace the directory in Redis with SOURCE; nothing changes if a row is bad.

    SOURCE is a .csv (or tab-separated .tsv/.txt) with a header row of column
    names, or a .yaml list. Its text encoding is detected: a byte-order mark
    (UTF-8, or UTF-16 as Excel's "Unicode text"), else UTF-8, else GB18030 (GBK,
    as a Chinese Excel saves CSV); --encoding NAME overrides.

    Redis is the one in the config (redis.url, redis.key_prefix; CTI_REDIS__URL
    and other CTI_* variables override it, as for the server).

    A phone number that several customers list is ambiguous: it is reported
    (the number and the customer ids, on stderr), those customers are imported,
    but calls from that number pop no customer record until it belongs to one
    customer. The exit status stays 0.
    """
    from cti.directory.importer import DirectoryEncodingError, DirectoryImportError, load_directory
    from cti.directory.store import shared_numbers

    config = _load(config_path)
    configure_logging("console", "ERROR")  # the command reports for itself
    try:
        loaded = load_directory(source, encoding=encoding)
    except DirectoryEncodingError as exc:
        raise click.ClickException(f"{exc}, or name the encoding: cti directory import --encoding NAME "
                                   f"(e.g. gb18030, big5, shift_jis, cp1252)") from None
    except DirectoryImportError as exc:
        raise click.ClickException(str(exc)) from None
    url = _redacted(config.redis.url)

    async def _import() -> int:
        import redis.asyncio as aioredis
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        from cti.directory.store import RedisDirectory

        try:
            client = aioredis.from_url(config.redis.url, socket_connect_timeout=5, socket_timeout=30)
        except ValueError as exc:
            raise click.ClickException(f"redis.url {url} is not a Redis URL ({_one_line(exc)}): set redis.url "
                                       f"in the config (-c PATH) or CTI_REDIS__URL") from None
        try:
            store = RedisDirectory(client, key_prefix=config.redis.key_prefix)
            await client.ping()
            return await store.replace_all(loaded.customers)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise click.ClickException(
                f"cannot reach Redis at {url} ({_one_line(exc)}); nothing imported: start Redis, or point the "
                f"import at yours with -c PATH (redis.url) or CTI_REDIS__URL") from None
        except RedisError as exc:
            raise click.ClickException(f"Redis at {url} refused the import ({_one_line(exc)}); nothing "
                                       f"imported") from None
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    count = asyncio.run(_import())
    click.echo(f"imported {count} customers from {source} ({loaded.encoding}) into {url}")
    shared = shared_numbers(loaded.customers)
    for number, ids in shared.items():
        click.echo(f"warning: number {number} is listed by customers {', '.join(ids)}: calls from it pop no "
                   f"customer record until one customer has it", err=True)
    if shared:
        click.echo(f"warning: {len(shared)} shared number(s) left unmatched; the other numbers of those "
                   f"customers match as usual", err=True)


@main.group()
def ivr() -> None:
    """IVR flows (agi.flows): try them without a phone, or call the FastAGI server as Asterisk would."""


def _flow(config: Config, name: str) -> Any:
    from ivr_flows import FlowError, load_flow, load_flows

    try:
        if name.endswith((".yaml", ".yml")) or "/" in name:
            return load_flow(name)
        flows = load_flows(config.agi.flows)
    except FlowError as exc:
        raise click.ClickException(str(exc)) from None
    if name not in flows:
        raise click.ClickException(
            f"no flow {name!r} in {config.agi.flows} (there: {', '.join(sorted(flows)) or 'none'})")
    return flows[name]


@ivr.command("try")
@click.argument("flow")
@click.option("--caller", default="13800000001", show_default=True, help="the calling number")
@click.option("--keys", default="", help='what the caller does, in order: "2,timeout,1", "hangup"')
@click.option("--at", "at", default=None, metavar="ISO-TIME", help="when the call comes, with offset (default now)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object: path, vars, end, entry_point ...")
@click.option("--directory", "directory_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="customers to look the caller up in (.csv, .tsv or .yaml, as directory import "
                                 "reads); default: the config's directory.source, else the config's Redis")
@config_option
def ivr_try(*, flow: str, caller: str, keys: str, at: str | None, as_json: bool, directory_file: Path | None,
            config_path: Path | None) -> None:
    """Run FLOW (an id in agi.flows or a .yaml path) for --caller pressing --keys; no PBX.

    The caller (or an account number entered in the flow) is looked up in --directory FILE, else in the
    config's directory source file, else in the customer directory in the config's Redis, as the server does.
    """
    from datetime import UTC, datetime

    from cti.directory.importer import DirectoryImportError, load_customers
    from cti.directory.numbers import normalise_number
    from cti.directory.oneshot import DirectoryUnavailable, redis_lookup
    from ivr_flows import try_flow

    config = _load(config_path)
    chosen = _flow(config, flow)
    records: dict[str, dict[str, object]] = {}
    source = directory_file or config.directory.source
    if source is not None:
        try:
            for customer in load_customers(source):
                records.update({n: customer.model_dump() for n in customer.numbers})
                records.setdefault(customer.id, customer.model_dump())
        except DirectoryImportError as exc:
            raise click.ClickException(str(exc)) from None
    in_redis = redis_lookup(config.redis.url, key_prefix=config.redis.key_prefix) if source is None else None
    try:
        now = datetime.fromisoformat(at) if at else datetime.now(UTC)
    except ValueError:
        raise click.BadParameter(f"{at!r} is not an ISO time", param_hint="--at") from None
    if now.tzinfo is None:
        raise click.BadParameter("give a UTC offset, e.g. 2026-11-23T21:30+08:00", param_hint="--at")
    try:
        out = try_flow(chosen, caller, keys, in_redis or (lambda v: records.get(normalise_number(v) or v)
                                                          or records.get(v)), now)
    except DirectoryUnavailable as exc:
        raise click.ClickException(f"{exc} ({_redacted(config.redis.url)}; give --directory FILE to try "
                                   f"without Redis)") from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--keys") from None
    if as_json:
        click.echo(json.dumps(out, ensure_ascii=False))
        return
    click.echo(f"{out['flow']}@{out['version']}: {out['end']}"
               + (f" -> {out['entry_point']}" if out.get("entry_point") else ""))
    click.echo("  path:    " + " > ".join(out["path"]))
    click.echo("  inputs:  " + (", ".join(out["inputs"]) or "(none)"))
    click.echo("  prompts: " + (", ".join(out["prompts"]) or "(none)"))


@ivr.command("call")
@click.argument("flow")
@click.option("--host", default=None, help="default: agi.host")
@click.option("--port", type=int, default=None, help="default: agi.port")
@click.option("--caller", default="13800000001", show_default=True)
@click.option("--keys", default="", help='what the caller does, in order: "2,timeout,1", "hangup"')
@click.option("--barge-in", is_flag=True, help="keys interrupt prompts, as on a phone")
@click.option("--json", "as_json", is_flag=True)
@config_option
def ivr_call(*, flow: str, host: str | None, port: int | None, caller: str, keys: str, barge_in: bool,
             as_json: bool, config_path: Path | None) -> None:
    """Call a running FastAGI server as Asterisk's AGI(agi://host:port/FLOW) would; print the transcript."""
    import dataclasses

    from cti.sim.agi_caller import Scenario, agi_env, place_call

    config = _load(config_path)
    host, port = host or config.agi.host, port or config.agi.port
    try:
        record = asyncio.run(place_call(host, port, agi_env(flow, host=host, port=port, caller=caller),
                                        Scenario(keys=keys, barge_in=barge_in), timeout=120))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--keys") from None
    except TimeoutError:
        raise click.ClickException("the call did not end within 120 s") from None
    except OSError as exc:
        raise click.ClickException(f"no FastAGI server at {host}:{port}: {_one_line(exc)}") from None
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(record), ensure_ascii=False))
        return
    click.echo("\n".join(record.transcript))


@main.group()
def prompts() -> None:
    """The IVR flows' prompt audio: speak the prompt text into sound files until a studio records them."""


def _voices(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        language, sep, voice = value.partition("=")
        if not sep or not language.strip() or not voice.strip():
            raise click.BadParameter(f"{value!r}: give LANG=VOICE, e.g. zh=cmn or en=en-gb")
        out[language.strip()] = voice.strip()
    return out


@prompts.command("build")
@click.option("--flows", "flows_path", type=click.Path(path_type=Path, exists=True), default=None,
              help="a directory of flows (*.yaml) or one flow file (default: agi.flows of the config)")
@click.option("--sounds", type=click.Path(path_type=Path, file_okay=False), default=Path("/var/lib/asterisk/sounds"),
              show_default=True, help="Asterisk's sounds directory (astdatadir/sounds in asterisk.conf)")
@click.option("--voice", "voices", multiple=True, metavar="LANG=VOICE", callback=_voices,
              help="espeak-ng voice for a flow language, repeatable (default zh=cmn, en=en-us, yue=yue)")
@click.option("--prune", is_flag=True, help="also remove files made before that no flow plays any more")
@click.option("--dry-run", is_flag=True, help="print what would be made or removed; change nothing")
@config_option
def prompts_build(*, flows_path: Path | None, sounds: Path, voices: dict[str, str], prune: bool, dry_run: bool,
                  config_path: Path | None) -> None:
    """Speak every prompt that has no recording into <sounds>/<file>.wav (8 kHz mono 16-bit, as Asterisk
    plays without transcoding), with espeak-ng and sox (Debian: apt-get install espeak-ng sox).

    A prompt's file is its sound name in the flow with {lang} filled in (hotline/zh/main_menu.wav); a
    name shared by every language is one recording in all of them, in the flow's language order.

    Recorded files always win: a prompt recorded in any format, under its name or under <sounds>/<lang>/,
    is never made, and a file made earlier is removed when a recording arrives. Made files are listed in
    <sounds>/.cti_prompts.json with what they were made from, so a rebuild remakes those whose words or
    voice changed and leaves every other file alone. Exit 1 if a file could not be made.
    """
    from cti.prompts import SynthesisError, build_prompts, describe, espeak_sox, plan_for
    from ivr_flows import FlowError, load_flow, load_flows

    source = flows_path if flows_path is not None else _load(config_path).agi.flows
    try:
        flows = [load_flow(source)] if source.is_file() else list(load_flows(source).values())
    except FlowError as exc:
        raise click.ClickException(str(exc)) from None
    if not flows:
        raise click.ClickException(f"no flows (*.yaml) in {source}")
    if not sounds.is_dir() and not dry_run:
        raise click.ClickException(f"no sounds directory {sounds}: give --sounds DIR (Asterisk's astdatadir/sounds, "
                                   f"see asterisk.conf), or create it")
    if dry_run:
        lines, failed = describe(plan_for(flows, sounds, voices=voices, prune=prune), None)
    else:
        try:
            report = build_prompts(flows, sounds, synthesize=espeak_sox(), voices=voices, prune=prune)
        except SynthesisError as exc:
            raise click.ClickException(str(exc)) from None
        lines, failed = describe(report.plan, report)
    for line in lines:
        click.echo(line, err=line.startswith(("note:", "failed:")))
    if failed:
        raise click.ClickException(f"{failed} prompt file(s) could not be made")


def _server_url(config_path: Path | None, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    http = _load(config_path).http
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::", "") else http.host
    return f"http://{host}:{http.port}"


def _call_server(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request to a running server's API, with the token from ``CTI_TOKEN``; its JSON error
    becomes the message."""
    import os
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if os.environ.get("CTI_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['CTI_TOKEN']}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return cast(dict[str, Any], json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", exc.reason)
        except ValueError:
            message = exc.reason
        if exc.code == 404 and "/state" in url and message == "Not Found":
            message = "this server does not route (routing.mode is observe)"
        if exc.code == 401:
            message += " - set CTI_TOKEN to a token from `cti token issue`"
        raise click.ClickException(f"{message} (HTTP {exc.code})") from None
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"no CTI server at {url}: {_one_line(exc)}") from None


_url_option = click.option("--url", default=None, metavar="URL",
                           help="the server's web address (default: http.host and http.port of the config)")


@main.command()
@click.option("--calls", type=click.IntRange(1), default=2000, show_default=True, help="callers to simulate")
@click.option("--agents", type=click.IntRange(1), default=40, show_default=True,
              help="agents, generated with skills, languages and groups that serve every entry point")
@click.option("--vip-share", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="share of callers in a VIP tier (the routing config's tiers with 'vip' in the name)")
@click.option("--seed", type=int, default=1, show_default=True, help="the same seed simulates the same day")
@click.option("--servers", type=click.IntRange(1, 8), default=1, show_default=True,
              help="routing servers sharing one Redis, each with its own AMI connection")
@click.option("--speed", type=click.FloatRange(1, 400), default=60.0, show_default=True,
              help="simulated seconds per wall second")
@click.option("--routing", "routing_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=None, help="routing config (default config/routing.yaml)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
def simulate(*, calls: int, agents: int, vip_share: float, seed: int, servers: int, speed: float,
             routing_path: Path | None, as_json: bool) -> None:
    """Simulate a day of CTI routing on accelerated time: the PBX simulator in CTI mode and SERVERS
    routing servers on a private Redis. Prints per tier and entry point offered, answered, abandoned,
    service level (answered within the tier's target over offered), mean / p90 / max wait, and the
    invariants: double_assignments and lost_calls (both must be 0), from the simulator's own records.
    Exit status 1 if an invariant is broken."""
    from cti.devservices import ServiceError
    from cti.router.simulate import DEFAULT_ROUTING, SimulationError, format_summary
    from cti.router.simulate import simulate as run_simulation
    from routing.config import RoutingConfigError

    configure_logging("console", "WARNING")  # every routing step logs at info: thousands of lines
    try:
        summary = asyncio.run(run_simulation(calls=calls, agents=agents, vip_share=vip_share, seed=seed,
                                             servers=servers, speed=speed,
                                             routing_config_path=routing_path or DEFAULT_ROUTING))
    except (ValueError, SimulationError, RoutingConfigError, ServiceError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(summary, ensure_ascii=False) if as_json else format_summary(summary))
    if summary["double_assignments"] or summary["lost_calls"]:
        raise SystemExit(1)

@main.group()
def agent() -> None:
    """Set an agent's routing state on a running server (CTI routing mode).

    The server needs a token (CTI_TOKEN): the agent's own, or a supervisor's."""


def _set_state(agent_id: str, state: str, reason: str | None, config_path: Path | None, url: str | None) -> None:
    base = _server_url(config_path, url)
    reply = _call_server("POST", f"{base}/api/agents/{quote(agent_id, safe='')}/state",
                         {"state": state, "reason": reason})
    click.echo(f"{reply['agent']}: {reply['state']}" + (f" ({reply['reason']})" if reply.get("reason") else ""))


@agent.command("ready")
@click.argument("agent_id", metavar="ID")
@config_option
@_url_option
def agent_ready(agent_id: str, config_path: Path | None, url: str | None) -> None:
    """Make agent ID ready for calls (from not ready, logged out, or wrap-up cut short)."""
    _set_state(agent_id, "ready", None, config_path, url)


@agent.command("not-ready")
@click.argument("agent_id", metavar="ID")
@click.option("--reason", required=True, help="one of the routing config's not_ready_reasons")
@config_option
@_url_option
def agent_not_ready(agent_id: str, reason: str, config_path: Path | None, url: str | None) -> None:
    """Take agent ID out of routing for a reason (break, training ...)."""
    _set_state(agent_id, "not_ready", reason, config_path, url)


@agent.command("logout")
@click.argument("agent_id", metavar="ID")
@config_option
@_url_option
def agent_logout(agent_id: str, config_path: Path | None, url: str | None) -> None:
    """Log agent ID out of routing."""
    _set_state(agent_id, "logged_out", None, config_path, url)


@main.command()
@click.argument("call_id", metavar="CALL_ID")
@click.option("--json", "as_json", is_flag=True, help="the server's answer as JSON")
@config_option
@_url_option
def explain(call_id: str, as_json: bool, config_path: Path | None, url: str | None) -> None:
    """Why a call went to its agent, or why it still waits: the escalation step, the score, and every
    agent passed over with the reason (not ready, wrap-up, level too low, reserved elsewhere ...).
    CALL_ID is the held channel's Uniqueid (in the logs as call)."""
    reply = _call_server("GET", f"{_server_url(config_path, url)}/api/routing/calls/{quote(call_id, safe='')}")
    if as_json:
        click.echo(json.dumps(reply, ensure_ascii=False))
        return
    for d in reply["decisions"]:
        t = d["trace"]
        click.echo(f"offered to {d['agent']} ({'a free agent took it' if d['side'] == 'agent' else 'as it queued'}):"
                   f" step {t['step']}, waited {t['wait_ms'] / 1000:.1f}s, score {t['score']}")
        for p in t["agents_passed"]:
            click.echo(f"  passed over {p['id']}: {p['reason']}")
    if reply.get("waiting"):
        t = reply["waiting"]
        click.echo(f"waiting: step {t['step']}, {t['wait_ms'] / 1000:.1f}s so far")
        for p in t["agents_passed"]:
            click.echo(f"  not {p['id']}: {p['reason']}")


def _on_redis(config: Config, action: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``action(redis client)`` against the config's Redis; an unreachable Redis is one clear line."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    url = _redacted(config.redis.url)

    async def run() -> Any:
        try:
            client = aioredis.from_url(config.redis.url, socket_connect_timeout=5, socket_timeout=30)
        except ValueError as exc:
            raise click.ClickException(f"redis.url {url} is not a Redis URL ({_one_line(exc)})") from None
        try:
            return await action(client)
        except (RedisError, OSError) as exc:
            raise click.ClickException(f"Redis at {url}: {_one_line(exc)} (redis.url in the config, or "
                                       f"CTI_REDIS__URL)") from None
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    return asyncio.run(run())


@main.group()
def token() -> None:
    """Tokens for agents' clients, supervisors and admins, kept hashed in Redis (redis.url).

    An agent's token reads only that agent's events, calls and commands (HTTP, WebSocket, and MQTT once
    `cti mqtt-acl` has written the broker's files); a supervisor's reads every agent's; an admin's may
    also issue and revoke tokens over the API. A token is shown once, when issued."""


@token.command("issue")
@click.argument("subject")
@click.option("--role", type=click.Choice(["agent", "supervisor", "admin"]), default="agent", show_default=True)
@click.option("--label", default="", help="what it is for (a desk, a softphone), shown by `cti token list`")
@config_option
def token_issue(subject: str, role: str, label: str, config_path: Path | None) -> None:
    """Issue a token for SUBJECT: an agent id (role agent) or a login name (supervisor, admin)."""
    from cti.auth.store import TokenStore

    config = _load(config_path)
    agent_ids = {a.id for a in config.agents}
    if role == "agent" and subject not in agent_ids:
        raise click.ClickException(f"no agent {subject!r} in the config (agents: {', '.join(sorted(agent_ids))})")
    if role != "agent" and subject in agent_ids:
        raise click.ClickException(f"{subject!r} is an agent id: a {role}'s login must differ (both are MQTT users)")

    async def issue(redis: Any) -> tuple[str, Any]:
        return await TokenStore(redis, key_prefix=config.redis.key_prefix).issue(subject, role, label=label)  # type: ignore[arg-type]

    try:
        secret, record = _on_redis(config, issue)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(secret)
    click.echo(f"issued token {record.id} for {role} {subject}: keep it secret, it is not shown again", err=True)


@token.command("list")
@config_option
def token_list(config_path: Path | None) -> None:
    """Every token: id, role, subject, when issued, label (never the secret)."""
    import time

    from cti.auth.store import TokenStore

    config = _load(config_path)

    async def records(redis: Any) -> list[Any]:
        return await TokenStore(redis, key_prefix=config.redis.key_prefix).records()

    for r in _on_redis(config, records):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at))
        click.echo(f"{r.id}  {r.role:<10} {r.subject:<20} {when}  {r.label}")


@token.command("revoke")
@click.argument("token_ids", nargs=-1, metavar="[ID]...")
@click.option("--subject", default=None, help="revoke every token of this agent or login")
@config_option
def token_revoke(token_ids: tuple[str, ...], subject: str | None, config_path: Path | None) -> None:
    """Revoke tokens by id, or all of one subject. Effective at once on new connections (within 5 s on
    other servers); run `cti mqtt-acl` again and reload mosquitto for MQTT."""
    from cti.auth.store import TokenStore

    if not token_ids and subject is None:
        raise click.UsageError("name token ids, or --subject")
    config = _load(config_path)

    async def revoke(redis: Any) -> list[str]:
        store = TokenStore(redis, key_prefix=config.redis.key_prefix)
        missing = [t for t in token_ids if not await store.revoke(t)]
        if subject is not None:
            click.echo(f"revoked {await store.revoke_subject(subject)} token(s) of {subject}")
        return missing

    missing = _on_redis(config, revoke)
    if token_ids:
        click.echo(f"revoked {len(token_ids) - len(missing)} token(s)")
    if missing:
        raise click.ClickException(f"no such token: {', '.join(missing)}")


def _register_mqtt_acl() -> None:
    from cti.auth.mqtt_acl import mqtt_acl_command

    main.add_command(mqtt_acl_command)


_register_mqtt_acl()

if __name__ == "__main__":  # pragma: no cover
    main()
