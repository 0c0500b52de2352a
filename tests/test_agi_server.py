"""The FastAGI server over real loopback TCP, driven by the simulated Asterisk (``cti.sim.agi_caller``)
through the shipped hotline flow: entry points, VIPs, hangups, flow reloads, limits, failures, shutdown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from cti.agi import AgiServer, AgiSettings, AgiStats, IvrResult
from cti.agi.call import CallSettings, _Call
from cti.sim.agi_caller import CallRecord, Scenario, agi_env, encode_env, parse_args, place_call
from ivr_flows import SetVariable, Timeout, WaitForDigit, load_flow, parse_flow, try_flow

ROOT = Path(__file__).resolve().parents[1]
HOTLINE = load_flow(ROOT / "config" / "ivr" / "hotline.yaml")
OPEN = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)      # Monday 11:00 in Shanghai
EVENING = datetime(2026, 11, 23, 13, 30, tzinfo=UTC)  # Monday 21:30 in Shanghai
WAIT = 30.0  # an upper bound for anything in these tests; none comes near it

VIP = {"id": "c-1002", "numbers": ["8613900000001"], "name": "Li Na", "company": "Orient Bank",
       "company_tier": "enterprise", "role": "Chief information officer", "vip_tier": 3, "account_manager": "chen"}
REGULAR = {"id": "c-1001", "numbers": ["13800000001"], "name": "Wang Lei", "company": "Huaxin Logistics",
           "vip_tier": 0}
BY_NUMBER: dict[str, Mapping[str, object]] = {"8613900000001": VIP, "13800000001": REGULAR}
BY_ACCOUNT: dict[str, Mapping[str, object]] = {"1234": REGULAR}


async def directory(by: str, value: str) -> Mapping[str, object] | None:
    return (BY_NUMBER if by == "number" else BY_ACCOUNT).get(value)


class Served:
    """A running server and the results its ``on_end`` received, in order."""

    def __init__(self, server: AgiServer, results: asyncio.Queue[IvrResult]) -> None:
        self.server = server
        self.results = results

    @property
    def stats(self) -> AgiStats:
        return self.server.stats

    async def result(self) -> IvrResult:
        """on_end runs after the socket closes, so it may come just after the caller saw the close."""
        return await asyncio.wait_for(self.results.get(), WAIT)

    async def call(self, keys: str | list[str] = "", *, caller: str = "13800000001", script: str = "hotline",
                   before_reply: Callable[[str], Awaitable[None]] | None = None, env: Mapping[str, str] | None = None,
                   **scenario: Any) -> CallRecord:
        return await place_call("127.0.0.1", self.server.port, env or agi_env(script, caller=caller),
                                Scenario(keys=keys, **scenario), before_reply=before_reply, timeout=WAIT)


@asynccontextmanager
async def serving(flows: Callable[[], Mapping[str, Any]] | None = None, *, now: datetime = OPEN,
                  lookup: Any = directory, on_end: Any = None, **settings: Any) -> AsyncIterator[Served]:
    results: asyncio.Queue[IvrResult] = asyncio.Queue()

    def collect(result: IvrResult) -> None:
        results.put_nowait(result)

    async with AgiServer(flows=flows or (lambda: {"hotline": HOTLINE}), directory=lookup,
                         on_end=on_end or collect, settings=AgiSettings(port=0, **settings),
                         clock=lambda: now) as server:
        yield Served(server, results)
    assert server.open_connections == 0 and server.active_sessions == 0


def gate_at(prefix: str, *, nth: int = 1) -> tuple[asyncio.Event, asyncio.Event, Callable[[str], Awaitable[None]]]:
    """(reached, release, before_reply): the caller stops before answering the nth command starting with prefix."""
    reached, release = asyncio.Event(), asyncio.Event()
    seen = 0

    async def before_reply(line: str) -> None:
        nonlocal seen
        if line.startswith(prefix):
            seen += 1
            if seen == nth:
                reached.set()
                await release.wait()

    return reached, release, before_reply


def sync_directory(number: str) -> Mapping[str, object] | None:
    return BY_NUMBER.get(number)


# --- the hotline over TCP ---------------------------------------------------------------------


@pytest.mark.parametrize(("keys", "entry_point", "language"), [
    ("2,1", "billing", "en"),
    ("1,2", "tech_support", "zh"),
    ("1,3", "complaints", "zh"),
    ("2,7,2", "tech_support", "en"),       # a wrong key, then the right one
    ("2,9,3", "complaints", "en"),         # "repeat", then a choice
    ("1,timeout,3", "complaints", "zh"),   # silence, then a choice
    ("", "billing", "zh"),                 # a silent caller still reaches a person
])
async def test_a_caller_reaches_the_entry_point_they_chose(keys: str, entry_point: str, language: str) -> None:
    async with serving() as served:
        record = await served.call(keys, caller="13900009999")
        result = await served.result()
    assert (result.kind, result.entry_point, result.language, result.priority, result.tier) == (
        "route", entry_point, language, 0, None)
    assert not result.requirements  # the entry point brings its skills; the flow asks for nothing more
    expected = try_flow(HOTLINE, "13900009999", keys, sync_directory, OPEN)  # the same flow without a socket
    assert list(result.path) == expected["path"] and list(result.inputs) == expected["inputs"]
    assert record.variables["CTI_OUTCOME"] == "route"
    assert record.variables["CTI_ENTRY"] == entry_point
    assert record.variables["CTI_LANGUAGE"] == language
    assert record.variables["CTI_FLOW"] == f"hotline@{HOTLINE.version}"
    assert record.variables["CTI_IVR_PATH"] == ",".join(result.path)
    assert dict(result.variables) == record.variables  # every variable set was acknowledged
    assert record.commands[-1] == f'STREAM FILE hotline/{language}/connecting ""'
    assert record.closed_by_server and not record.disconnected  # back to the dialplan (cti-hold)
    assert served.stats.completed == 1 and served.stats.failed == 0


async def test_a_vip_skips_the_menu_and_asks_for_their_account_manager() -> None:
    async with serving() as served:
        record = await served.call("2", caller="8613900000001")
        result = await served.result()
    assert (result.kind, result.entry_point, result.priority, result.language) == ("route", "vip", 3, "en")
    assert result.requirements.preferred_agents == ("chen",)
    assert result.path == ("welcome", "identify", "language", "hours", "vip_check", "vip")
    assert (result.vars["vip_tier"], result.vars["account_manager"]) == (3, "chen")
    assert result.vars["customer_id"] == "c-1002"
    assert not any(c.startswith("WAIT FOR DIGIT 5000") for c in record.commands)  # the main menu never ran
    assert json.loads(record.variables["CTI_REQUIREMENTS"]) == {"skills": {}, "language": None,
                                                                "preferred_agents": ["chen"]}
    assert (record.variables["CTI_PRIORITY"], record.variables["CTI_CUSTOMER"]) == ("3", "c-1002")
    assert record.commands[-1] == 'STREAM FILE hotline/en/vip_welcome ""'


async def test_keys_pressed_during_a_prompt_choose_at_once() -> None:
    async with serving() as served:
        record = await served.call("2,3", barge_in=True)
        result = await served.result()
    assert (result.entry_point, result.language) == ("complaints", "en")
    assert not any(c.startswith("WAIT FOR DIGIT") for c in record.commands)
    assert "200 result=51 endpos=2400" in record.replies


@pytest.mark.parametrize(("scenario", "path", "last_input"), [
    ({"hangup_at": 2}, ("welcome", "identify", "language"), "language:hangup"),          # during the welcome
    ({"keys": "hangup"}, ("welcome", "identify", "language"), "language:hangup"),        # at the language menu
    ({"keys": "1,hangup"}, ("welcome", "identify", "language", "hours", "vip_check", "main_menu"), "main_menu:hangup"),
    ({"keys": "1", "barge_in": True, "hangup_at": 6}, ("welcome", "identify", "language", "hours", "vip_check",
                                                         "main_menu"), "main_menu:hangup"),  # during the menu prompt
])
async def test_a_hangup_mid_flow_ends_abandoned_with_its_path(scenario: dict[str, Any], path: tuple[str, ...],
                                                              last_input: str) -> None:
    async with serving() as served:
        record = await served.call(**scenario)
        result = await served.result()
    assert (result.kind, result.hung_up, result.failure) == ("abandoned", True, None)
    assert result.path == path and result.inputs[-1] == last_input
    assert record.hung_up and "HANGUP" in record.replies
    # the last words still reach the dead channel: it answers SET VARIABLE
    assert record.variables["CTI_OUTCOME"] == "abandoned"
    assert record.variables["CTI_IVR_PATH"] == ",".join(path)
    assert dict(result.variables) == record.variables
    assert not any(c.startswith(("STREAM FILE", "WAIT FOR DIGIT")) for c in record.commands[
        record.commands.index('SET VARIABLE CTI_OUTCOME "abandoned"'):])
    assert (served.stats.abandoned, served.stats.hangup_notices, served.stats.reply_timeouts) == (1, 1, 0)


async def test_after_hours_the_caller_asks_for_a_callback_and_the_ivr_hangs_up() -> None:
    async with serving(now=EVENING) as served:
        record = await served.call("1,1")
        result = await served.result()
    assert result.kind == "callback" and result.end is not None and result.end.request is not None
    assert result.end.request.number == "13800000001"
    assert json.loads(record.variables["CTI_CALLBACK"])["reason"] == "after_hours"
    assert record.commands[-2:] == ['STREAM FILE hotline/zh/callback_confirmed ""', "HANGUP"]
    assert record.disconnected


async def test_an_account_entered_with_get_data_is_looked_up() -> None:
    flow = parse_flow({
        "id": "acct", "languages": ["en"], "start": "ask",
        "prompts": {"ask": {"file": "acct/ask"}, "bad": {"file": "acct/bad"}},
        "nodes": {
            "ask": {"type": "collect", "prompt": "ask", "var": "account", "min_length": 4, "max_length": 8,
                    "max_retries": 1, "invalid_prompt": "bad", "next": "find", "on_failure": "general"},
            "find": {"type": "lookup", "by": "account", "value": "${account}", "found": "known",
                     "not_found": "general"},
            "known": {"type": "route", "entry_point": "billing"},
            "general": {"type": "route", "entry_point": "general"},
        },
    }, source="test")
    async with serving(lambda: {"acct": flow}) as served:
        record = await served.call("12,#,1234,#", script="acct")
        result = await served.result()
    assert [c for c in record.commands if c.startswith("GET DATA")] == ["GET DATA acct/ask 5000 8"] * 2
    assert record.replies[:1] + [r for r in record.replies if r.startswith("200 result=12")] == [
        "200 result=0", "200 result=12", "200 result=1234"]
    assert (result.entry_point, result.vars["customer_id"]) == ("billing", "c-1001")
    assert result.inputs == ("ask:12", "ask:1234")


# --- flows change, calls keep theirs ----------------------------------------------------------


async def test_a_changed_flow_applies_to_the_next_call_while_the_running_one_keeps_its_version() -> None:
    data = yaml.safe_load((ROOT / "config" / "ivr" / "hotline.yaml").read_text(encoding="utf-8"))
    data["nodes"]["main_menu"]["options"][1] = "tech_support"  # billing moves off key 1
    changed = parse_flow(data, source="edited", default_id="hotline")
    assert changed.version != HOTLINE.version
    current = {"hotline": HOTLINE}
    reached, release, pause = gate_at("WAIT FOR DIGIT 5000")
    async with serving(lambda: current) as served, asyncio.TaskGroup() as tg:
        first = tg.create_task(served.call("1,1", before_reply=pause))
        await asyncio.wait_for(reached.wait(), WAIT)  # mid-flow, at the main menu
        current = {"hotline": changed}
        second = await served.call("1,1")
        new = await served.result()
        release.set()
        old = await served.result()
    assert (new.entry_point, new.version) == ("tech_support", changed.version)
    assert second.variables["CTI_FLOW"] == f"hotline@{changed.version}"
    assert (old.entry_point, old.version) == ("billing", HOTLINE.version)
    assert first.result().variables["CTI_FLOW"] == f"hotline@{HOTLINE.version}"


# --- nothing from a caller ID or a record becomes a command ----------------------------------

EVIL_ENV = agi_env("hotline", caller="13800000001\rEXEC System touch /tmp/pwned",
                   caller_name="Evil\r\nEXEC System touch /tmp/pwned\r\nagi_extra: 1")
SAFE_VERBS = ("ANSWER", "SET VARIABLE ", "STREAM FILE ", "WAIT FOR DIGIT ", "GET DATA ", "HANGUP")


@pytest.mark.parametrize(("now", "keys"), [(OPEN, "1,1"), (EVENING, "1,1"), (EVENING, "1,2")])
async def test_a_caller_id_with_cr_lf_never_reaches_a_command_line(now: datetime, keys: str) -> None:
    looked_up: list[str] = []

    async def evil_directory(by: str, value: str) -> Mapping[str, object]:
        looked_up.append(value)
        return {"id": "c-9\r\nHANGUP", "name": "X\r\nEXEC System y", "vip_tier": 0, "company": "\x00"}

    assert b"\nEXEC System" in encode_env(EVIL_ENV)  # as Asterisk writes it: the name's line feed splits its line
    async with serving(now=now, lookup=evil_directory) as served:
        record = await served.call(keys, env=EVIL_ENV)
        result = await served.result()
    assert result.failure is None and result.kind in ("route", "callback", "hangup")
    assert looked_up == ["13800000001\rEXEC System touch /tmp/pwned"]  # the lookup gets it; no AGI line does
    assert record.commands and record.closed_by_server
    for line in record.commands:
        assert line.startswith(SAFE_VERBS), line
        assert "System" not in line and not any(ord(c) < 32 or ord(c) == 127 for c in line), line
        for arg in parse_args(line):
            assert not any(ord(c) < 32 for c in arg)
    assert served.stats.env_lines_dropped == 1 and served.stats.unsafe_commands == 0


async def test_a_command_the_renderer_refuses_is_never_sent() -> None:
    """Defence in depth: the interpreter already cleans what it puts in variables; were it not to, the line
    would still not be written, and a wait would count as silence."""
    sent: list[str] = []

    class Channel:
        async def request(self, line: str, timeout: float) -> tuple[object, bool]:
            sent.append(line)
            raise AssertionError("nothing should be sent")

    stats = AgiStats()
    call = _Call(Channel(), directory=directory, settings=CallSettings(), stats=stats,  # type: ignore[arg-type]
                 log=structlog.get_logger(), is_cut=lambda: False)
    assert await call.execute(SetVariable("CTI_CUSTOMER", "c-1\r\nEXEC System x")) is None
    assert await call.execute(SetVariable("CTI_X\nY", "1")) is None
    assert await call.execute(WaitForDigit(-5)) == Timeout()
    assert sent == [] and stats.unsafe_commands == 3


# --- refusals and failures --------------------------------------------------------------------


async def test_an_unknown_script_is_refused_and_the_server_carries_on() -> None:
    async with serving() as served:
        record = await served.call(script="nope")
        assert record.commands == [] and record.closed_by_server
        await served.call("1,1")
        result = await served.result()  # the first on_end is the good call's: the refused one has none
    assert result.entry_point == "billing"
    assert (served.stats.unknown_flow, served.stats.sessions) == (1, 1)


async def test_a_call_over_max_sessions_is_refused_until_one_ends() -> None:
    reached, release, pause = gate_at("WAIT FOR DIGIT")
    async with serving(max_sessions=1) as served, asyncio.TaskGroup() as tg:
        first = tg.create_task(served.call("1,1", before_reply=pause))
        await asyncio.wait_for(reached.wait(), WAIT)
        refused = await served.call("1,1")
        release.set()
        await first
        again = await served.call("1,2")
    assert refused.commands == [] and refused.closed_by_server
    assert first.result().variables["CTI_ENTRY"] == "billing" and again.variables["CTI_ENTRY"] == "tech_support"
    assert (served.stats.refused, served.stats.sessions) == (1, 2)


async def test_a_command_asterisk_rejects_is_passed_over() -> None:
    async with serving() as served:
        record = await served.call("1,1", rejects=frozenset({"WAIT FOR DIGIT"}))
        result = await served.result()
    assert (result.kind, result.entry_point) == ("route", "billing")  # every menu timed out: the default
    assert result.inputs == ("language:timeout",) * 2 + ("main_menu:timeout",) * 3
    assert served.stats.rejected_commands == 5
    assert record.variables["CTI_OUTCOME"] == "route"


@pytest.mark.parametrize("trouble", ["raises", "slow"])
async def test_a_failed_or_slow_lookup_means_not_identified(trouble: str) -> None:
    async def broken(by: str, value: str) -> Mapping[str, object] | None:
        if trouble == "raises":
            raise ConnectionError("redis down")
        await asyncio.sleep(WAIT)
        return VIP

    async with serving(lookup=broken, lookup_timeout=0.05) as served:
        await served.call("1,1", caller="8613900000001")
        result = await served.result()
    assert (result.entry_point, result.vars["vip_tier"]) == ("billing", 0)  # a VIP by number, but unknown today
    assert served.stats.lookup_failures == 1


async def env_then(port: int, answer: Callable[[str], bytes | None]) -> list[str]:
    """A raw Asterisk stand-in: the environment, then ``answer(command)`` for each command (None: say nothing).
    Returns the commands received before the server closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    commands: list[str] = []
    try:
        writer.write(encode_env(agi_env("hotline")))
        async with asyncio.timeout(WAIT):
            while line := await reader.readline():
                commands.append(line.decode().rstrip("\n"))
                data = answer(commands[-1])
                if data is not None:
                    writer.write(data)
    except ConnectionError:
        pass
    finally:
        writer.close()
        await writer.wait_closed()
    return commands


async def test_no_reply_in_time_cuts_the_session() -> None:
    async with serving(reply_timeout=0.2) as served:
        commands = await env_then(served.server.port, lambda line: None)
        result = await served.result()
    assert commands == ["ANSWER"]
    assert (result.kind, result.failure, result.end) == ("failed", "reply_timeout", None)
    assert result.path == ("welcome", "identify")
    assert (served.stats.reply_timeouts, served.stats.failed) == (1, 1)


async def test_a_line_that_is_no_reply_cuts_the_session() -> None:
    async with serving() as served:
        commands = await env_then(served.server.port, lambda line: b"hello there\n")
        result = await served.result()
    assert commands == ["ANSWER"] and (result.kind, result.failure) == ("failed", "protocol_error")
    assert served.stats.protocol_errors == 1


async def test_a_socket_closed_by_asterisk_mid_flow_is_a_hangup() -> None:
    answered = 0

    async with serving() as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
        writer.write(encode_env(agi_env("hotline")))
        for _ in range(3):  # ANSWER, SET VARIABLE CHANNEL(language), STREAM FILE welcome
            await asyncio.wait_for(reader.readline(), WAIT)
            writer.write(b"200 result=0\n")
            answered += 1
        await asyncio.wait_for(reader.readline(), WAIT)  # choose_language: Asterisk goes away instead
        writer.close()
        await writer.wait_closed()
        result = await served.result()
    assert (result.kind, result.hung_up, result.path) == ("abandoned", True, ("welcome", "identify", "language"))
    assert result.variables == {}  # nothing could be written any more


@pytest.mark.parametrize("kind", ["sync_raises", "async_raises", "async_ok"])
async def test_on_end_failures_are_contained(kind: str) -> None:
    got: list[IvrResult] = []

    def sync_raises(result: IvrResult) -> None:
        raise RuntimeError("routing is down")

    async def async_raises(result: IvrResult) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("routing is down")

    async def async_ok(result: IvrResult) -> None:
        await asyncio.sleep(0)
        got.append(result)

    handler = {"sync_raises": sync_raises, "async_raises": async_raises, "async_ok": async_ok}[kind]
    async with serving(on_end=handler) as served:
        first = await served.call("1,1")
        second = await served.call("1,2")
        for _ in range(1000):  # bounded: on_end runs just after the socket closes
            if served.stats.on_end_failures + len(got) == 2:
                break
            await asyncio.sleep(0.01)
    assert first.variables["CTI_ENTRY"] == "billing" and second.variables["CTI_ENTRY"] == "tech_support"
    assert served.stats.on_end_failures == (0 if kind == "async_ok" else 2)
    assert [r.entry_point for r in got] == (["billing", "tech_support"] if kind == "async_ok" else [])


# --- shutdown ---------------------------------------------------------------------------------


async def test_close_lets_a_running_call_finish_and_refuses_new_ones() -> None:
    reached, release, pause = gate_at("WAIT FOR DIGIT 5000")
    async with serving(drain_timeout=WAIT) as served, asyncio.TaskGroup() as tg:
        running = tg.create_task(served.call("1,3", before_reply=pause))
        await asyncio.wait_for(reached.wait(), WAIT)
        closing = tg.create_task(served.server.close())
        for _ in range(1000):
            if served.server.closing:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", served.server.port)
        release.set()
        await closing
        result = await served.result()
    assert running.result().variables["CTI_ENTRY"] == "complaints"
    assert (result.kind, result.failure) == ("route", None)


async def test_close_cuts_calls_that_outlast_the_drain() -> None:
    reached, release, pause = gate_at("WAIT FOR DIGIT")
    async with serving(drain_timeout=0.2) as served, asyncio.TaskGroup() as tg:
        stuck = tg.create_task(served.call("1", before_reply=pause))
        await asyncio.wait_for(reached.wait(), WAIT)
        await served.server.close()
        result = await served.result()
        release.set()  # the caller tries to answer on the cut socket
    assert stuck.result().closed_by_server
    assert (result.kind, result.failure, result.path) == ("failed", "shutdown", ("welcome", "identify", "language"))


async def test_a_port_in_use_fails_at_start_and_leaves_nothing_running() -> None:
    async with serving() as served:
        taken = served.server.port
        with pytest.raises(OSError):
            async with AgiServer(flows=dict, directory=directory, on_end=lambda r: None,
                                 settings=AgiSettings(port=taken)):
                pass  # pragma: no cover


async def test_no_reply_during_the_last_words_keeps_the_callers_choice() -> None:
    _, release, pause = gate_at("SET VARIABLE CTI_OUTCOME")
    async with serving(reply_timeout=0.2) as served, asyncio.TaskGroup() as tg:
        call = tg.create_task(served.call("1,1", before_reply=pause))
        result = await served.result()
        release.set()  # the caller's side answers, too late, on a socket the server has cut
    assert (result.kind, result.entry_point, result.failure) == ("route", "billing", "reply_timeout")
    assert "CTI_FLOW" in result.variables and "CTI_OUTCOME" not in result.variables
    assert call.result().closed_by_server and served.stats.failed == 1
