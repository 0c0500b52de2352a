"""The simulated Asterisk side of FastAGI answers as the recorded Asterisk 22.11 did, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from cti.sim.agi_caller import DEAD_CHANNEL, Scenario, SimChannel, agi_env, encode_env, parse_args
from ivr_flows import parse_reply

FIXTURES = Path(__file__).parent / "fixtures" / "agi"


def recording(name: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The environment lines (up to and with the blank one) and the (direction, line) pairs after it."""
    pairs = [(line[0], line[2:]) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()
             if not line.startswith("#")]
    blank = pairs.index(("<", ""))
    return [text for _, text in pairs[: blank + 1]], pairs[blank + 1 :]


def test_env_has_the_recorded_keys_in_the_recorded_order_and_bytes() -> None:
    env_lines, _ = recording("cti-main.txt")
    recorded = {line.partition(": ")[0]: line.partition(": ")[2] for line in env_lines if line}
    ours = agi_env("main", caller="13800000301", channel=recorded["agi_channel"], uniqueid=recorded["agi_uniqueid"],
                   agi_threadid=recorded["agi_threadid"])
    assert list(ours) == list(recorded)
    assert encode_env(ours) == ("\n".join(env_lines) + "\n").encode()  # agi_accountcode keeps its trailing space


@pytest.mark.parametrize(("line", "args"), [
    ('SET VARIABLE CTI_SKILL "billing"', ["SET", "VARIABLE", "CTI_SKILL", "billing"]),
    ('SET VARIABLE X "say \\"hi\\""', ["SET", "VARIABLE", "X", 'say "hi"']),
    ('SET VARIABLE X "back\\\\slash"', ["SET", "VARIABLE", "X", "back\\slash"]),
    ('SET VARIABLE X ""', ["SET", "VARIABLE", "X", ""]),
    ('STREAM FILE hotline/welcome ""', ["STREAM", "FILE", "hotline/welcome", ""]),
    ('EXEC VoiceMail "100@default,s"', ["EXEC", "VoiceMail", "100@default,s"]),
    ("WAIT FOR DIGIT  4000", ["WAIT", "FOR", "DIGIT", "4000"]),
])
def test_parse_args_reads_lines_as_res_agi_does(line: str, args: list[str]) -> None:
    assert parse_args(line) == args


def run(channel: SimChannel, commands: list[str]) -> list[str]:
    return [reply for command in commands for reply in channel.answer(command)]


def test_the_recorded_session_gets_the_recorded_replies() -> None:
    """cti-main: the caller presses 2 during WAIT FOR DIGIT 4000."""
    _, session = recording("cti-main.txt")
    commands = [text for d, text in session if d == ">"]
    channel = SimChannel(Scenario(keys="2"), agi_env("main", caller="13800000301"))
    assert run(channel, commands) == [text for d, text in session if d == "<"]
    assert channel.variables == {"CTI_SKILL": "billing", "CTI_PRIORITY": "5"}
    assert not channel.hung_up


def test_the_recorded_hangup_gets_the_recorded_lines_in_the_recorded_order() -> None:
    """ctiedge 501 hangs up during WAIT FOR DIGIT: -1, then the bare HANGUP before the next reply, then a dead
    channel that still answers (the recording stops before the last command's reply: res_agi gives 511)."""
    _, session = recording("ctiedge-hangup-in-ivr.txt")
    commands = [text for d, text in session if d == ">"]
    channel = SimChannel(Scenario(keys="hangup"), agi_env("main", caller="13800000501"))
    sent = run(channel, commands)
    assert sent == [text for d, text in session if d == "<"] + [DEAD_CHANNEL]
    assert channel.hung_up and channel.dead


def test_reply_shapes() -> None:
    channel = SimChannel(Scenario(keys=["7", "1", "2", "3", "#", "4", "timeout"], barge_in=True,
                                  missing_files=frozenset({"gone"})), {})
    assert channel.answer('STREAM FILE menu "0123456789*#"') == ["200 result=55 endpos=2400"]
    assert channel.answer('STREAM FILE hello ""') == ["200 result=0 endpos=16000"]  # no escape digits: plays on
    assert channel.answer('STREAM FILE gone ""') == ["200 result=-1 endpos=0"]
    assert channel.answer("WAIT FOR DIGIT 5000") == ["200 result=49"]
    assert channel.answer("GET DATA account 5000 8") == ["200 result=23"]  # ended by #
    assert channel.answer("GET DATA account 5000 8") == ["200 result=4 (timeout)"]
    assert channel.answer("GET DATA account 5000 8") == ["200 result= (timeout)"]
    assert channel.answer("WAIT FOR DIGIT 5000") == ["200 result=0"]
    assert channel.answer('EXEC VoiceMail "100@default,u"') == ["200 result=0"]
    assert channel.answer("ANSWER") == ["200 result=0"]
    assert channel.answer("SAY ALPHA x") == ["510 Invalid or unknown command"]
    assert channel.answer("STREAM FILE") == ["520 Invalid command syntax.  Proper usage not available."]
    assert channel.answer("HANGUP") == ["200 result=1"]
    assert channel.disconnected and not channel.hung_up
    assert channel.answer('SET VARIABLE CTI_X "1"') == ["HANGUP", "200 result=1"]
    for line in (channel.answer('SET VARIABLE CTI_X "1"') + channel.answer("WAIT FOR DIGIT 1")
                 + channel.answer('STREAM FILE x ""') + channel.answer("GET DATA x 1 1")):
        parse_reply(line)


def test_get_data_ends_at_its_length() -> None:
    channel = SimChannel(Scenario(keys="123456"), {})
    assert channel.answer("GET DATA pin 3000 4") == ["200 result=1234"]
    assert channel.answer("WAIT FOR DIGIT 1000") == ["200 result=53"]


@pytest.mark.parametrize(("hangup_at", "reply"), [
    (0, "200 result=-1"),                # ANSWER
    (1, "200 result=1"),                 # SET VARIABLE: runs, then the caller is gone
    (2, "200 result=-1 endpos=2400"),    # STREAM FILE
    (3, "200 result=-1"),                # WAIT FOR DIGIT
])
def test_hangup_at_a_command(hangup_at: int, reply: str) -> None:
    commands = ["ANSWER", 'SET VARIABLE CHANNEL(language) "zh"', 'STREAM FILE welcome ""', "WAIT FOR DIGIT 4000",
                'SET VARIABLE CTI_OUTCOME "abandoned"']
    channel = SimChannel(Scenario(keys="1", hangup_at=hangup_at), {})
    replies = [channel.answer(c) for c in commands]
    assert replies[hangup_at] == [reply]
    assert replies[hangup_at + 1][0] == "HANGUP"
    assert channel.hung_up
    assert channel.variables["CTI_OUTCOME"] == "abandoned"  # the dead channel still takes SET VARIABLE


def test_rejected_commands_are_answered_510() -> None:
    channel = SimChannel(Scenario(rejects=frozenset({"WAIT FOR DIGIT"})), {})
    assert channel.answer("WAIT FOR DIGIT 1000") == ["510 Invalid or unknown command"]
    assert channel.answer("ANSWER") == ["200 result=0"]


async def test_a_call_transcript_has_the_fixtures_format() -> None:
    """What ``cti ivr call`` would print: the recording's own format, environment first."""
    from datetime import UTC, datetime

    from cti.agi import AgiServer, AgiSettings
    from cti.sim.agi_caller import place_call
    from ivr_flows import parse_flow

    flow = parse_flow({"id": "main", "languages": ["en"], "start": "menu", "nodes": {
        "menu": {"type": "menu", "prompt": "none", "options": {"2": "billing"}, "timeout_ms": 4000,
                 "max_retries": 0, "default": "billing"},
        "billing": {"type": "route", "entry_point": "billing"}}}, source="t")

    async def nobody(by: str, value: str) -> None:
        return None

    env_lines, _ = recording("cti-main.txt")
    async with AgiServer(flows=lambda: {"main": flow}, directory=nobody, on_end=lambda r: None,  # type: ignore[arg-type]
                         settings=AgiSettings(port=0), clock=lambda: datetime(2026, 11, 23, 3, tzinfo=UTC)) as server:
        record = await place_call("127.0.0.1", server.port, ("\n".join(env_lines) + "\n").encode(), Scenario(keys="2"))
    assert record.transcript[: len(env_lines)] == [f"< {line}" for line in env_lines]
    assert record.transcript[len(env_lines) :][:6] == [
        "> ANSWER", "< 200 result=0", '> SET VARIABLE CHANNEL(language) "en"', "< 200 result=1",
        "> WAIT FOR DIGIT 4000", "< 200 result=50"]
