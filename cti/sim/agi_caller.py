"""The simulator as Asterisk's FastAGI client: one caller's channel running ``AGI(agi://host:4573/<flow>)``.

It sends the ``agi_*`` environment in the order and bytes of the Asterisk 22.11 recordings
(``tests/fixtures/agi/``: ``key: value\\n`` lines, then an empty line), and answers every command
with res_agi's reply shapes, pressing keys from a :class:`Scenario`::

    200 result=0                 ANSWER; WAIT FOR DIGIT without a key; EXEC
    200 result=50                WAIT FOR DIGIT: the caller pressed 2 (ASCII 50)
    200 result=50 endpos=2400    STREAM FILE stopped by an escape digit (``barge_in``)
    200 result=0 endpos=16000    STREAM FILE played to its end;  -1 endpos=0: no such file
    200 result=1234 (timeout)    GET DATA: keys, then silence; ``200 result=1234`` when # or the length ended it
    200 result=1                 SET VARIABLE; HANGUP
    510 Invalid or unknown command

A hangup answers the pending command ``200 result=-1``; then, as recorded, a bare ``HANGUP`` line
arrives after the next command and before its reply, and the dead channel keeps answering: SET
VARIABLE ``200 result=1``, EXEC ``200 result=0``, and ``511 Command Not Permitted on a dead
channel or intercept routine`` for what res_agi refuses there (ANSWER, STREAM FILE, GET DATA,
WAIT FOR DIGIT). :class:`SimChannel` holds that behaviour without a socket; :func:`place_call`
puts it on one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from ivr_flows.tryout import parse_keys

__all__ = [
    "DEAD_CHANNEL",
    "CallRecord",
    "Scenario",
    "SimChannel",
    "agi_env",
    "encode_env",
    "parse_args",
    "place_call",
]

DEAD_CHANNEL: Final = "511 Command Not Permitted on a dead channel or intercept routine"
_UNKNOWN: Final = "510 Invalid or unknown command"
_USAGE: Final = "520 Invalid command syntax.  Proper usage not available."
_PLAYED: Final = 16000  # endpos (samples at 8 kHz) of a prompt played to its end
_STOPPED: Final = 2400  # endpos of a prompt stopped by a key or a hangup
_VERBS: Final = (
    ("WAIT", "FOR", "DIGIT"), ("STREAM", "FILE"), ("GET", "DATA"), ("SET", "VARIABLE"), ("GET", "VARIABLE"),
    ("ANSWER",), ("EXEC",), ("HANGUP",), ("NOOP",),
)
#: What res_agi still runs on a dead channel (the ``dead`` flag of its command table).
_DEAD_OK: Final = frozenset({"SET VARIABLE", "GET VARIABLE", "EXEC", "HANGUP", "NOOP"})
_calls = itertools.count(1)


def agi_env(
    script: str,
    *,
    host: str = "127.0.0.1",
    port: int = 4573,
    caller: str = "13800000301",
    caller_name: str = "Caller",
    channel: str | None = None,
    uniqueid: str | None = None,
    **overrides: str,
) -> dict[str, str]:
    """The environment Asterisk 22 sends for ``AGI(agi://host:port/script)`` from ``cti-entry``, in its order."""
    n = next(_calls)
    env = {
        "agi_network": "yes",
        "agi_network_script": script,
        "agi_request": f"agi://{host}:{port}/{script}",
        "agi_channel": channel or f"Local/s@cti-entry-{n:08x};2",
        "agi_language": "en",
        "agi_type": "Local",
        "agi_uniqueid": uniqueid or f"{int(time.time())}.{n}",
        "agi_version": "22.11.0-rc1",
        "agi_callerid": caller,
        "agi_calleridname": caller_name,
        "agi_callingpres": "0",
        "agi_callingani2": "0",
        "agi_callington": "0",
        "agi_callingtns": "0",
        "agi_dnid": "unknown",
        "agi_rdnis": "unknown",
        "agi_context": "cti-entry",
        "agi_extension": "s",
        "agi_priority": "2",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": str(139912000000000 + n),
    }
    env.update(overrides)
    return env


def encode_env(env: Mapping[str, str]) -> bytes:
    """The bytes on the wire, raw as res_agi writes them: a line feed inside a caller name splits its line."""
    return ("".join(f"{key}: {value}\n" for key, value in env.items()) + "\n").encode()


def parse_args(line: str) -> list[str]:
    """A command line split as res_agi's ``parse_args`` does: spaces separate, double quotes group,
    a backslash makes the next character literal."""
    args: list[str] = []
    current: list[str] = []
    quoted = escaped = started = False
    for c in line:
        if escaped:
            current.append(c)
            escaped = False
        elif c == "\\":
            escaped = started = True
        elif c == '"':
            quoted = not quoted
            started = True
        elif c in " \t" and not quoted:
            if started:
                args.append("".join(current))
                current, started = [], False
        else:
            current.append(c)
            started = True
    if started:
        args.append("".join(current))
    return args


@dataclass(frozen=True, slots=True)
class Scenario:
    """What the caller does. ``keys`` as for ``cti ivr try``: digits, ``#``, ``*``, ``timeout`` (silence where
    a key is awaited) and ``hangup``, taken by WAIT FOR DIGIT and GET DATA (and, with ``barge_in``, by a
    prompt the key may interrupt); silence once they run out. ``hangup_at``: hang up during the command
    with this index (0 = the first). ``missing_files`` play as res_agi plays a file it cannot open;
    ``rejects`` are commands answered 510, as by an Asterisk that lacks them."""

    keys: Sequence[str] | str = ()
    barge_in: bool = False
    hangup_at: int | None = None
    missing_files: frozenset[str] = frozenset()
    rejects: frozenset[str] = frozenset()


class SimChannel:
    """res_agi's answers for one call, without a socket: a command line in, the lines Asterisk sends back out."""

    def __init__(self, scenario: Scenario, env: Mapping[str, str]) -> None:
        self._scenario = scenario
        self._env = env
        self._keys = deque(parse_keys(scenario.keys if isinstance(scenario.keys, str) else list(scenario.keys)))
        self._index = 0
        self._notice_due = False
        self.dead = False
        self.hung_up = False  # the caller hung up
        self.disconnected = False  # the script sent HANGUP
        self.variables: dict[str, str] = {}

    def hang_up(self) -> None:
        """The caller hangs up between commands (the PBX's own clock said so): the next reply comes after a
        bare ``HANGUP`` line, and the channel answers as a dead one from then on."""
        if not self.dead:
            self.hung_up = self.dead = self._notice_due = True

    def answer(self, line: str) -> list[str]:
        """The lines for one command: a pending ``HANGUP`` notice first, then its reply."""
        index, self._index = self._index, self._index + 1
        out = ["HANGUP"] if self._notice_due else []
        self._notice_due = False
        out.append(self._reply(parse_args(line), index))
        return out

    def _reply(self, args: list[str], index: int) -> str:
        words = [a.upper() for a in args[:3]]
        verb = next((v for v in _VERBS if tuple(words[: len(v)]) == v), None)
        if verb is None or " ".join(verb) in self._scenario.rejects:
            return _UNKNOWN
        name, rest = " ".join(verb), args[len(verb) :]
        if self.dead:
            return self._dead_reply(name, rest)
        hang = self._scenario.hangup_at == index
        match name:
            case "ANSWER":
                return self._hang("200 result=-1") if hang else "200 result=0"
            case "STREAM FILE" if len(rest) >= 2:
                return self._stream(rest[0], rest[1], hang)
            case "WAIT FOR DIGIT" if rest:
                key = "hangup" if hang else self._next_key()
                if key == "hangup":
                    return self._hang("200 result=-1")
                return "200 result=0" if key == "timeout" else f"200 result={ord(key)}"
            case "GET DATA" if rest:
                return self._hang("200 result=-1") if hang else self._get_data(rest)
            case "SET VARIABLE" if len(rest) >= 2:
                self.variables[rest[0]] = rest[1]
                return self._hang("200 result=1") if hang else "200 result=1"
            case "GET VARIABLE" if rest:
                return self._get_variable(rest[0])
            case "EXEC" if rest:
                return self._hang("200 result=-1") if hang else "200 result=0"
            case "HANGUP":
                self.disconnected = self.dead = self._notice_due = True
                return "200 result=1"
            case "NOOP":
                return "200 result=0"
        return _USAGE

    def _dead_reply(self, name: str, rest: list[str]) -> str:
        if name not in _DEAD_OK:
            return DEAD_CHANNEL
        if name == "SET VARIABLE" and len(rest) >= 2:
            self.variables[rest[0]] = rest[1]
            return "200 result=1"
        if name == "GET VARIABLE" and rest:
            return self._get_variable(rest[0])
        return "200 result=1" if name == "HANGUP" else "200 result=0"

    def _hang(self, reply: str) -> str:
        self.hung_up = self.dead = self._notice_due = True
        return reply

    def _next_key(self) -> str:
        return self._keys.popleft() if self._keys else "timeout"

    def _stream(self, file: str, escape: str, hang: bool) -> str:
        if hang:
            return self._hang(f"200 result=-1 endpos={_STOPPED}")
        if file in self._scenario.missing_files:
            return "200 result=-1 endpos=0"
        if self._scenario.barge_in and self._keys and (self._keys[0] in escape or self._keys[0] == "hangup"):
            key = self._keys.popleft()
            if key == "hangup":
                return self._hang(f"200 result=-1 endpos={_STOPPED}")
            return f"200 result={ord(key)} endpos={_STOPPED}"
        return f"200 result=0 endpos={_PLAYED}"

    def _get_data(self, rest: list[str]) -> str:
        most = int(rest[2]) if len(rest) > 2 and rest[2].isdigit() else 1024
        digits = ""
        while len(digits) < most:
            key = self._next_key()
            if key == "hangup":
                return self._hang("200 result=-1")
            if key == "timeout":
                return f"200 result={digits} (timeout)"
            if key == "#":
                break
            digits += key
        return f"200 result={digits}"

    def _get_variable(self, name: str) -> str:
        value = self._env.get("agi_callerid") if name == "CALLERID(num)" else self.variables.get(name)
        return f"200 result=1 ({value})" if value is not None else "200 result=0"


@dataclass(slots=True)
class CallRecord:
    """What one simulated call saw: every command line, every line sent back, the variables set."""

    commands: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    hung_up: bool = False
    disconnected: bool = False
    closed_by_server: bool = False
    latencies: list[float] = field(default_factory=list)  # seconds: reply written -> next command read
    first_command: float | None = None  # seconds: environment written -> first command read
    #: everything in order, as ``tests/fixtures/agi/*.txt`` writes it: ``<`` what Asterisk sent, ``>`` the server
    transcript: list[str] = field(default_factory=list)


async def place_call(
    host: str,
    port: int,
    env: Mapping[str, str] | bytes,
    scenario: Scenario | None = None,
    *,
    before_reply: Callable[[str], Awaitable[None]] | None = None,
    timeout: float = 30.0,
    channel: SimChannel | None = None,
    on_reply: Callable[[str, list[str]], None] | None = None,
) -> CallRecord:
    """Connect, send ``env`` (a mapping, or the exact bytes of a recording), answer commands until the server
    closes. ``before_reply(line)`` runs before each reply: the time a prompt plays, a pause a test controls.
    ``channel`` answers instead of a new one for ``scenario`` (so its owner can :meth:`~SimChannel.hang_up`);
    ``on_reply(line, lines)`` sees each command and what goes back, before it is written (the PBX simulator's
    AMI events for it). Raises ``TimeoutError`` if the server keeps the call longer than ``timeout``,
    ``OSError`` if it is not there.
    """
    mapping = env if isinstance(env, Mapping) else _env_of(env)
    channel = channel or SimChannel(scenario or Scenario(), mapping)
    record = CallRecord(variables=channel.variables)
    data = env if isinstance(env, bytes) else encode_env(env)
    record.transcript.extend(f"< {line}" for line in data.decode("utf-8", "replace").split("\n")[:-1])
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(data)
            await writer.drain()
            sent = time.perf_counter()
            while True:
                raw = await reader.readline()
                if not raw.endswith(b"\n"):
                    record.closed_by_server = True
                    break
                got = time.perf_counter()
                if record.first_command is None:
                    record.first_command = got - sent
                else:
                    record.latencies.append(got - sent)
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                record.commands.append(line)
                record.transcript.append(f"> {line}")
                if before_reply is not None:
                    await before_reply(line)
                out = channel.answer(line)
                if on_reply is not None:
                    on_reply(line, out)
                record.replies.extend(out)
                record.transcript.extend(f"< {reply}" for reply in out)
                writer.write("".join(f"{reply}\n" for reply in out).encode())
                await writer.drain()
                sent = time.perf_counter()
        except (ConnectionError, OSError):
            record.closed_by_server = True
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    record.hung_up, record.disconnected = channel.hung_up, channel.disconnected
    return record


def _env_of(data: bytes) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition(":")
        if sep and key.startswith("agi_"):
            env[key] = value.strip()
    return env
