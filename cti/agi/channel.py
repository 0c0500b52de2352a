"""One FastAGI conversation on a socket: a command line out, its reply in.

What the recorded Asterisk 22 sessions show (``tests/fixtures/agi/ctiedge-hangup-in-ivr.txt``):
after the caller hangs up, the pending command is answered ``200 result=-1``, then a bare
``HANGUP`` line arrives *between* replies, and the dead channel keeps answering later commands.
A client that reads one line per command takes that notice for the next command's reply and is
off by one from there on (the recording's script got GET VARIABLE's value as EXEC's reply).
:meth:`AgiChannel.request` reads lines until the reply itself, noting any notice on the way.

Reply deadlines are a float per channel that one :class:`Watchdog` checks a few times a second
(aborting the socket of a channel past it), not a timer per command: ``asyncio.timeout`` costs
about 6.5 us a command on uvloop, and in ``benchmarks/ivr.py`` the server took 15-30% less CPU
per command without it (an answer sent sooner is also a cheaper send on a virtual machine).
"""

from __future__ import annotations

import asyncio
from typing import Final

from ivr_flows.agi import ProtocolError, Reply, ReplyReader

__all__ = ["AgiChannel", "ConnectionLost", "ReplyTimeout", "Watchdog"]

_NEWLINE: Final = b"\n"


class ConnectionLost(Exception):
    """The socket closed or failed: Asterisk ended the AGI (the channel is gone), or we cut it."""


class ReplyTimeout(Exception):
    """Asterisk did not answer a command within its deadline."""


class AgiChannel:
    """Sends lines and pairs replies; knows nothing of flows (the caller renders and interprets).

    Its deadlines hold only while a :class:`Watchdog` watches it (``watchdog.channels``).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._replies = ReplyReader()
        self._loop = asyncio.get_running_loop()
        self.notices = 0  # bare HANGUP lines seen
        self.deadline: float | None = None  # loop time by which the pending command must be answered
        self.expired = False

    async def request(self, line: str, timeout: float) -> tuple[Reply, bool]:
        """Send one command line (rendered by :func:`ivr_flows.agi.render`, so exactly one line); return
        its reply and whether a ``HANGUP`` notice came before it.

        ``timeout`` is a deadline the owner's :class:`Watchdog` enforces by aborting the socket. Raises
        :class:`ConnectionLost`, :class:`ReplyTimeout`, or :class:`ProtocolError` for a line that is no AGI
        reply (or longer than the reader's limit).
        """
        noticed = False
        self.deadline = self._loop.time() + timeout
        try:
            self._writer.write(line.encode() + _NEWLINE)
            await self._writer.drain()
            while True:
                raw = await self._reader.readuntil(_NEWLINE)
                reply = self._replies.feed(raw.decode("utf-8", "replace"))
                if reply is None:
                    continue  # a 520 usage text is still coming
                if reply.is_hangup_notice:
                    noticed = True  # it answers no command: the reply is still to come
                    self.notices += 1
                    continue
                return reply, noticed
        except (asyncio.IncompleteReadError, OSError) as exc:  # EOF, reset, or aborted by expire()
            if self.expired:
                raise ReplyTimeout(f"no reply in {timeout:g}s to {line[:40]!r}") from None
            raise ConnectionLost("closed by Asterisk" if isinstance(exc, asyncio.IncompleteReadError)
                                 else f"connection failed: {exc!r}") from None
        except asyncio.LimitOverrunError:
            raise ProtocolError("a reply line longer than the reader's limit") from None
        finally:
            self.deadline = None

    def expire(self) -> None:
        """Past its deadline: abort the socket, so the pending read ends as a :class:`ReplyTimeout`."""
        self.expired = True
        self._writer.transport.abort()


class Watchdog:
    """Expires the channels past their deadline, checked every ``tick`` seconds (deadlines are seconds long,
    so they are met to within a tick); run it as a task for as long as channels are watched."""

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.channels: set[AgiChannel] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            for channel in [c for c in self.channels if c.deadline is not None and c.deadline <= now]:
                channel.expire()
