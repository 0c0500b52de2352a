"""The AGI wire format, sans-IO: commands to lines, lines to replies, replies to interpreter inputs.

Asterisk reads one command per line and splits it into arguments on spaces, honouring double
quotes and backslash escapes (``parse_args`` in res_agi.c); it reads at most 2 KB per line and
treats the rest as the next command.  So :func:`render` quotes every free-text value, allows
names and file names only from a safe alphabet, and refuses CR, LF, NUL and every other
control character as well as lines over :data:`MAX_LINE_BYTES`: nothing a caller or a customer
record holds can become a second AGI command.

What the recorded Asterisk 22 sessions show (``tests/fixtures/agi/``): after the caller hangs
up, the pending command is answered ``200 result=-1``; then a bare ``HANGUP`` line arrives
*between* replies (it answers no command), and later commands on the dead channel are still
answered (``SET VARIABLE`` with ``200 result=1``).  A reader that paired lines with commands
one to one would be off by one from there on; :class:`Reply` marks the notice
(:attr:`Reply.is_hangup_notice`) so the adapter can take it as the hangup and keep pairing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from ivr_flows.commands import AgiCommand, Answer, Disconnect, Exec, GetData, Play, SetVariable, WaitForDigit
from ivr_flows.inputs import Digits, Hangup, Input, Timeout

__all__ = [
    "MAX_LINE_BYTES",
    "AgiError",
    "CommandRejected",
    "ProtocolError",
    "Reply",
    "ReplyReader",
    "UnsafeValueError",
    "input_for",
    "parse_env",
    "parse_reply",
    "render",
]

#: res_agi reads a command into a 2048-byte buffer with fgets: 2046 bytes, the newline, the NUL.
MAX_LINE_BYTES: Final = 2046
_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
_FILE: Final = re.compile(r"[A-Za-z0-9_./-]{1,200}\Z")
_VARIABLE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(\([A-Za-z0-9_]{0,32}\))?\Z")
_APP: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}\Z")
_ESCAPE_DIGITS: Final = re.compile(r"[0-9*#A-D]{0,16}\Z")
_REPLY: Final = re.compile(r"(\d{3})([ -])(.*)\Z", re.DOTALL)
_RESULT: Final = re.compile(r"result=(\S*)\s*(.*)\Z", re.DOTALL)
_FIELDS: Final = re.compile(r"(\s+[A-Za-z_]+=\S*)*\s*\Z")
_MAX_USAGE_LINES: Final = 200


class AgiError(Exception):
    """Base of the AGI boundary's errors."""


class UnsafeValueError(AgiError, ValueError):
    """A command would not be exactly one safe AGI line (a control character, a bad name, too long)."""


class ProtocolError(AgiError, ValueError):
    """A line from Asterisk that is not an AGI reply."""


class CommandRejected(AgiError):
    """Asterisk answered 510 (unknown command) or 520 (bad syntax): the command we sent is wrong."""

    def __init__(self, command: AgiCommand, reply: Reply) -> None:
        super().__init__(f"{reply.code} {reply.message} (for {command!r})")
        self.command = command
        self.reply = reply


# --- rendering ------------------------------------------------------------------------------


def _check(text: str, what: str) -> str:
    if _UNSAFE.search(text):
        raise UnsafeValueError(f"AGI {what} holds a control character (CR, LF, NUL ...): {text[:40]!r}")
    return text


def _token(text: str, pattern: re.Pattern[str], what: str) -> str:
    _check(text, what)
    if not pattern.match(text):
        raise UnsafeValueError(f"AGI {what} {text[:40]!r} has characters outside {pattern.pattern}")
    if ".." in text.split("/"):
        raise UnsafeValueError(f"AGI {what} {text[:40]!r} climbs out of its directory")
    return text


def _quote(text: str, what: str) -> str:
    """``"..."`` with backslash and double quote escaped, as res_agi's parse_args reads them back."""
    _check(text, what)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _number(value: int, what: str, low: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UnsafeValueError(f"AGI {what} must be an integer >= {low}, not {value!r}")
    return str(value)


def render(command: AgiCommand) -> str:
    """The AGI line for ``command``, without the newline, or :class:`UnsafeValueError`.

    >>> render(Play("welcome", "12"))
    'STREAM FILE welcome "12"'
    >>> render(SetVariable("CTI_ENTRY", 'bill"ing'))
    'SET VARIABLE CTI_ENTRY "bill\\\\"ing"'
    """
    match command:
        case Answer():
            line = "ANSWER"
        case Play(file=file, escape_digits=digits):
            digits = _quote(_token(digits, _ESCAPE_DIGITS, "escape digits"), "escape digits")
            line = f"STREAM FILE {_token(file, _FILE, 'file name')} {digits}"
        case GetData(file=file, timeout_ms=timeout, max_digits=most):
            line = (f"GET DATA {_token(file, _FILE, 'file name')} {_number(timeout, 'timeout', 1)} "
                    f"{_number(most, 'max digits', 1)}")
        case WaitForDigit(timeout_ms=timeout):
            line = f"WAIT FOR DIGIT {_number(timeout, 'timeout', -1)}"
        case SetVariable(name=name, value=value):
            line = f"SET VARIABLE {_token(name, _VARIABLE, 'variable name')} {_quote(value, 'variable value')}"
        case Exec(app=app, args=args):
            for arg in args:
                if "," in arg:
                    raise UnsafeValueError(f"EXEC argument {arg[:40]!r} holds a comma, which would split it in two")
            joined = f" {_quote(','.join(args), 'application arguments')}" if args else ""
            line = f"EXEC {_token(app, _APP, 'application')}{joined}"
        case Disconnect():
            line = "HANGUP"
        case _:
            raise TypeError(f"not an AGI command: {command!r}")
    if len(line.encode()) > MAX_LINE_BYTES:
        raise UnsafeValueError(f"AGI line of {len(line.encode())} bytes; Asterisk reads {MAX_LINE_BYTES}, "
                               "the rest would run as another command")
    return line


# --- replies --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply line.  ``code`` is None for the bare ``HANGUP`` notice, which answers no command."""

    code: int | None
    result: str | None = None
    data: str | None = None
    fields: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    message: str = ""
    continues: bool = False

    @property
    def is_hangup_notice(self) -> bool:
        return self.code is None

    @property
    def value(self) -> int | None:
        """``result`` as an integer (a key's ASCII code, -1, 0, 1), or None when it is not one."""
        try:
            return int(self.result) if self.result is not None else None
        except ValueError:
            return None


def _split_data(rest: str) -> tuple[str | None, str]:
    """``(timeout) endpos=1234`` -> data, fields text.  A variable's value may hold parentheses and spaces,
    so the data ends at the last ``)`` that only ``key=value`` fields follow."""
    if not rest.startswith("("):
        return None, rest
    end = len(rest)
    while (end := rest.rfind(")", 0, end)) > 0:
        if _FIELDS.match(rest, end + 1):
            return rest[1:end], rest[end + 1 :]
    raise ProtocolError(f"unbalanced parentheses in AGI reply data: {rest[:60]!r}")


def parse_reply(line: str) -> Reply:
    """Parse ``200 result=1 (timeout) endpos=1234``, ``510 Invalid or unknown command``, ``520-...`` and
    ``HANGUP``.  Raises :class:`ProtocolError` for anything else."""
    text = line.rstrip("\r\n")
    if text == "HANGUP":
        return Reply(code=None)
    m = _REPLY.match(text)
    if m is None:
        raise ProtocolError(f"not an AGI reply: {text[:60]!r}")
    code, continues, rest = int(m.group(1)), m.group(2) == "-", m.group(3)
    if code != 200:
        return Reply(code=code, message=rest, continues=continues)
    r = _RESULT.match(rest)
    if r is None:
        raise ProtocolError(f"a 200 reply without result=: {text[:60]!r}")
    data, tail = _split_data(r.group(2))
    pairs: dict[str, str] = {}
    for item in tail.split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ProtocolError(f"bad field {item[:30]!r} in AGI reply: {text[:60]!r}")
        pairs[key] = value
    return Reply(code=200, result=r.group(1), data=data, fields=MappingProxyType(pairs))


class ReplyReader:
    """Lines in, replies out: folds a ``520-`` usage text (several lines, up to ``520 End of proper usage.``)
    into one reply.  Pure bookkeeping, no I/O, like :class:`cti.ami.codec.Decoder`."""

    def __init__(self) -> None:
        self._usage: list[str] | None = None

    def feed(self, line: str) -> Reply | None:
        """The reply this line completes, or None while a usage text is still coming."""
        if self._usage is not None:
            text = line.rstrip("\r\n")
            if text.startswith("520 "):
                usage, self._usage = self._usage, None
                return Reply(code=520, message="\n".join([*usage, text[4:]]))
            if len(self._usage) >= _MAX_USAGE_LINES:
                raise ProtocolError("a 520 usage text that does not end")
            self._usage.append(text)
            return None
        reply = parse_reply(line)
        if reply.continues and reply.code == 520:
            self._usage = [reply.message]
            return None
        return reply


def parse_env(lines: Iterable[str]) -> dict[str, str]:
    """The ``agi_*: value`` lines Asterisk sends first (up to the blank line) as a dict."""
    env: dict[str, str] = {}
    for line in lines:
        text = line.rstrip("\r\n")
        if not text:
            break
        key, sep, value = text.partition(":")
        if not sep or not key.startswith("agi_"):
            raise ProtocolError(f"not an AGI environment line: {text[:60]!r}")
        env[key] = value.strip()
    return env


def input_for(command: AgiCommand, reply: Reply) -> Input | None:
    """What ``reply`` to ``command`` means for the interpreter: an input, or None (go on with the batch).

    A ``STREAM FILE`` that returns -1 is a missing sound file or a hangup, which Asterisk does not tell
    apart: it is passed over, and the next command (or the ``HANGUP`` notice) tells which.  A 511
    (not permitted on a dead channel) is a hangup.
    """
    if reply.is_hangup_notice or reply.code == 511:
        return Hangup()
    if reply.code != 200:
        raise CommandRejected(command, reply)
    value = reply.value
    match command:
        case Play():
            return Digits(chr(value)) if value is not None and 0 < value < 128 else None
        case WaitForDigit():
            if value == -1:
                return Hangup()
            return Digits(chr(value)) if value is not None and 0 < value < 128 else Timeout()
        case GetData():
            if reply.result == "-1":
                return Hangup()
            if reply.data == "timeout" and not reply.result:
                return Timeout()
            return Digits(reply.result or "")
        case Answer() | Exec():
            return Hangup() if value == -1 else None
        case _:
            return None
