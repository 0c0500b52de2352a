"""The recorded Asterisk 22.11 sessions replayed against the server: the hang-up in the IVR (ctiedge caller
13800000501) ends the call abandoned, and the server stays in step with the replies after it.

The recording's own script read one line per command, so from the bare ``HANGUP`` on every reply it got
belonged to the command before (it took GET VARIABLE's value for EXEC's reply). Replayed here, each
command gets the reply Asterisk recorded for a command of its kind in the same phase (before or after the
hangup), and the notice comes where it was recorded: after the command following the ``-1``, before its
reply. Commands the recording lacks get res_agi's reply for that kind (``200 result=1`` for SET VARIABLE).
A server that paired one line per command would take the notice as a reply, wait for one more that never
comes, and fail on its reply timeout instead of closing after its last command.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from cti.agi import AgiServer, AgiSettings, IvrResult
from cti.sim.agi_caller import DEAD_CHANNEL, parse_args
from ivr_flows import parse_flow

FIXTURES = Path(__file__).parent / "fixtures" / "agi"
NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
WAIT = 30.0
#: The recorded script's first commands were ANSWER and WAIT FOR DIGIT 4000: a menu whose prompt has no file.
MAIN = parse_flow({
    "id": "main", "languages": ["en"], "start": "menu",
    "nodes": {
        "menu": {"type": "menu", "prompt": "unrecorded", "options": {"1": "billing", "2": "billing"},
                 "timeout_ms": 4000, "max_retries": 0, "default": "billing"},
        "billing": {"type": "route", "entry_point": "billing"},
    },
}, source="replay")


def verb(line: str) -> str:
    words = [w.upper() for w in parse_args(line)]
    return " ".join(words[:3] if words[:1] == ["WAIT"] else words[:2] if words[0] in ("SET", "GET", "STREAM")
                    else words[:1])


class Recorded:
    """Asterisk as the recording shows it."""

    def __init__(self, name: str) -> None:
        pairs = [(line[0], line[2:]) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()
                 if not line.startswith("#")]
        blank = pairs.index(("<", ""))
        self.env = "".join(f"{text}\n" for _, text in pairs[: blank + 1]).encode()
        session = pairs[blank + 1 :]
        self.recorded = [text for d, text in session if d == "<"]
        commands = [text for d, text in session if d == ">"]
        replies = [text for text in self.recorded if text != "HANGUP"]
        self.phases: tuple[dict[str, deque[str]], dict[str, deque[str]]] = ({}, {})
        dead = False
        for command, reply in zip(commands, replies, strict=False):  # the last command's reply was not recorded
            self.phases[dead].setdefault(verb(command), deque()).append(reply)
            dead = dead or reply.startswith("200 result=-1")
        self.dead = False
        self.notice_due = False

    def answer(self, command: str) -> list[str]:
        kind = verb(command)
        recorded = self.phases[self.dead].get(kind)
        if recorded:
            reply = recorded.popleft()
        elif kind == "SET VARIABLE":
            reply = "200 result=1"
        else:
            reply = DEAD_CHANNEL if self.dead else "200 result=0"
        out = ["HANGUP", reply] if self.notice_due else [reply]
        self.notice_due = False
        if not self.dead and reply.startswith("200 result=-1"):
            self.dead = self.notice_due = True
        return out


async def replay(recorded: Recorded, port: int) -> tuple[list[str], list[str], bool]:
    """(commands received, lines sent, whether the server closed the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    commands: list[str] = []
    sent: list[str] = []
    try:
        writer.write(recorded.env)
        async with asyncio.timeout(WAIT):
            while (line := await reader.readline()).endswith(b"\n"):
                commands.append(line.decode().rstrip("\n"))
                out = recorded.answer(commands[-1])
                sent.extend(out)
                writer.write("".join(f"{x}\n" for x in out).encode())
        closed = True
    finally:
        writer.close()
        await writer.wait_closed()
    return commands, sent, closed


async def nobody(by: str, value: str) -> None:
    return None


async def run(name: str, flows: Mapping[str, object]) -> tuple[IvrResult, list[str], list[str], bool, AgiServer]:
    results: asyncio.Queue[IvrResult] = asyncio.Queue()
    # a short reply timeout: a server out of step would wait for a reply that never comes, and fail on it
    async with AgiServer(flows=lambda: flows, directory=nobody, on_end=results.put_nowait,  # type: ignore[arg-type]
                         settings=AgiSettings(port=0, reply_timeout=2.0), clock=lambda: NOW) as server:
        recorded = Recorded(name)
        commands, sent, closed = await replay(recorded, server.port)
        result = await asyncio.wait_for(results.get(), WAIT)
    return result, commands, sent, closed, server


async def test_the_recorded_hangup_in_the_ivr_ends_the_call_abandoned_in_step() -> None:
    result, commands, sent, closed, server = await run("ctiedge-hangup-in-ivr.txt", {"main": MAIN})
    assert commands[:3] == ["ANSWER", 'SET VARIABLE CHANNEL(language) "en"', "WAIT FOR DIGIT 4000"]
    assert sent[:5] == ["200 result=0", "200 result=1", "200 result=-1", "HANGUP", "200 result=1"]
    assert (result.kind, result.failure, result.hung_up) == ("abandoned", None, True)
    assert (result.path, result.inputs) == (("menu",), ("menu:hangup",))
    assert result.env["agi_callerid"] == "13800000501" and result.env["agi_calleridname"] == "Hangs Up In IVR"
    # every command after the hangup is a last word the dead channel acknowledged, one reply each
    after = commands[3:]
    assert after and all(c.startswith("SET VARIABLE CTI_") for c in after)
    assert len([s for s in sent if s != "HANGUP"]) == len(commands)
    assert result.variables["CTI_OUTCOME"] == "abandoned" and result.variables["CTI_IVR_PATH"] == "menu"
    assert result.variables["CTI_FLOW"] == f"main@{MAIN.version}"  # its reply came right after the notice
    assert len(result.variables) == len(commands) - 2  # all SET VARIABLEs: CHANNEL(language) and every CTI_*
    assert closed  # the server closed after its last command, not after a reply timeout
    stats = server.stats
    assert (stats.hangup_notices, stats.reply_timeouts, stats.protocol_errors, stats.abandoned) == (1, 0, 0, 1)


async def test_the_recorded_complete_session_routes() -> None:
    """cti-main: the caller presses 2 (result=50) during WAIT FOR DIGIT 4000."""
    result, _, sent, closed, server = await run("cti-main.txt", {"main": MAIN})
    assert sent[:3] == ["200 result=0", "200 result=1", "200 result=50"]
    assert (result.kind, result.entry_point, result.inputs) == ("route", "billing", ("menu:2",))
    assert "HANGUP" not in sent and closed and server.stats.hangup_notices == 0
