"""The ``agi_*`` block Asterisk sends first, read within one deadline and three size limits.

A FastAGI port has no authentication and is reached before any call exists, so whatever connects
(a port scanner, a health check, a browser, a peer that sends half a header and stalls) must cost
one bounded read and one log line, never a stuck or spinning task: panoramisk's handler loops on
``read() == b''`` after a connect-then-close and freezes the event loop.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Final

from ivr_flows.agi import parse_env

__all__ = ["BadHeader", "HeaderLimits", "read_env"]

_PREFIX: Final = b"agi_"
_ENV_LINE: Final = re.compile(r"agi_[A-Za-z0-9_]+:")


class BadHeader(Exception):
    """The peer did not send an AGI environment; ``reason`` is the short word logged and counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    """Asterisk sends about 25 short lines (plus one per ``agi_arg_N``) at once; these are far above that."""

    timeout: float = 5.0
    max_line_bytes: int = 8192
    max_lines: int = 200
    max_bytes: int = 32768


@dataclass(frozen=True, slots=True)
class Header:
    env: dict[str, str]
    dropped: int  # lines inside the block that were not ``agi_name: value``


async def read_env(reader: asyncio.StreamReader, limits: HeaderLimits) -> Header:
    """The environment up to its blank line, or :class:`BadHeader`.

    The reader's own ``limit`` must be at least ``max_line_bytes`` (a longer line raises
    ``LimitOverrunError`` there first). The first four bytes decide whether this is AGI at all, so
    garbage is refused at once rather than after the timeout. A line that is not ``agi_name: value``
    after a good first line is dropped, not fatal: Asterisk writes caller ID and name raw, so a line
    feed in a caller name splits its line in two.
    """
    try:
        async with asyncio.timeout(limits.timeout):
            return await _read(reader, limits)
    except TimeoutError:
        raise BadHeader("header_timeout") from None
    except asyncio.LimitOverrunError:
        raise BadHeader("line_too_long") from None
    except asyncio.IncompleteReadError:
        raise BadHeader("closed_in_header") from None
    except (ConnectionError, OSError):
        raise BadHeader("connection_error") from None


async def _read(reader: asyncio.StreamReader, limits: HeaderLimits) -> Header:
    try:
        prefix = await reader.readexactly(len(_PREFIX))
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise BadHeader("closed_before_header") from None
        raise BadHeader("closed_in_header") from None
    if prefix != _PREFIX:
        raise BadHeader("not_agi")
    lines: list[str] = []
    total = 0
    raw = prefix + await reader.readuntil(b"\n")
    while True:
        total += len(raw)
        if len(raw) > limits.max_line_bytes:
            raise BadHeader("line_too_long")
        if total > limits.max_bytes:
            raise BadHeader("header_too_large")
        # "replace", not "ignore": a caller name in GB18030 keeps its length and shows it was not UTF-8
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            break
        if len(lines) >= limits.max_lines:
            raise BadHeader("too_many_lines")
        lines.append(text)
        raw = await reader.readuntil(b"\n")
    good = [line for line in lines if _ENV_LINE.match(line)]
    return Header(parse_env(good), len(lines) - len(good))
