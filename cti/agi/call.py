"""One IVR call over FastAGI: the interpreter's batches run on an :class:`AgiChannel`, its outcome returned.

The interpreter (:mod:`ivr_flows`) decides everything; this module only runs what it is given:
each command through :func:`ivr_flows.agi.render` (which refuses CR, LF and NUL, so a caller ID or
a customer record can never become a second AGI command), a :class:`~ivr_flows.Lookup` through the
injected directory, and each reply back through :func:`ivr_flows.agi.input_for`.

How a call can go wrong, and what the caller gets:

* hangup (``200 result=-1``, a ``HANGUP`` notice, a 511, or the socket closing): the interpreter is
  told, the call ends ``abandoned`` with its path, and its ``CTI_*`` variables are still written
  (a dead channel answers SET VARIABLE) unless the socket is gone;
* a command the line renderer refuses, or Asterisk rejects (510/520): logged, counted and skipped
  as if it did nothing (a menu hears silence and retries, so the caller still reaches a person);
* a lookup that fails or is slow: "not found";
* no reply in time, or a line that is no AGI reply: the session is cut; Asterisk leaves ``AGI()`` and
  the dialplan goes on (``cti-hold``, then its fallback queue); ``failure`` says why.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

from structlog.typing import FilteringBoundLogger

from cti.agi.channel import AgiChannel, ConnectionLost, ReplyTimeout
from cti.supervise import raise_if_cancelling
from ivr_flows import (
    AgiCommand,
    Command,
    End,
    EndKind,
    Exec,
    Flow,
    GetData,
    Hangup,
    Input,
    Lookup,
    LookupResult,
    Requirements,
    Session,
    SetVariable,
    Timeout,
    WaitForDigit,
    input_for,
    render,
    start,
    step,
)
from ivr_flows.agi import CommandRejected, ProtocolError, UnsafeValueError
from ivr_flows.values import Value

__all__ = ["AgiStats", "CallSettings", "Directory", "IvrResult", "OnEnd", "SessionCut", "hand_over", "run_call"]

#: A customer lookup by caller number or by account number: the record as a dict, or None.
Directory = Callable[[Literal["number", "account"], str], Awaitable[Mapping[str, object] | None]]


@dataclass(frozen=True, slots=True)
class IvrResult:
    """What one IVR call came to, for routing and the call model.

    ``end`` is the interpreter's :class:`~ivr_flows.End` (kind, entry point, requirements, priority,
    tier, language, callback request); None when a ``failure`` cut the flow short (kind ``failed``).
    A failure after the End (Asterisk stopped answering during the ``CTI_*`` writes) keeps the End:
    the caller's choice stands, ``variables`` (those Asterisk acknowledged) shows what got through.
    """

    flow: str
    version: str
    env: Mapping[str, str]
    path: tuple[str, ...]
    inputs: tuple[str, ...]
    vars: Mapping[str, Value]
    language: str
    end: End | None
    failure: str | None
    hung_up: bool
    variables: Mapping[str, str]
    started_at: datetime
    ended_at: datetime

    @property
    def kind(self) -> EndKind | Literal["failed"]:
        return self.end.kind if self.end is not None else "failed"

    @property
    def entry_point(self) -> str | None:
        return self.end.entry_point if self.end is not None else None

    @property
    def requirements(self) -> Requirements:
        return self.end.requirements if self.end is not None else Requirements()

    @property
    def priority(self) -> int:
        return self.end.priority if self.end is not None else 0

    @property
    def tier(self) -> str | None:
        return self.end.tier if self.end is not None else None

    @property
    def channel(self) -> str:
        return self.env.get("agi_channel", "")

    @property
    def uniqueid(self) -> str:
        return self.env.get("agi_uniqueid", "")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for logs and ``cti ivr call``."""
        end = self.end
        return {
            "flow": self.flow, "version": self.version, "channel": self.channel, "uniqueid": self.uniqueid,
            "kind": self.kind, "entry_point": self.entry_point, "requirements": self.requirements.as_dict(),
            "priority": self.priority, "tier": self.tier, "language": self.language, "path": list(self.path),
            "inputs": list(self.inputs), "vars": dict(self.vars), "failure": self.failure, "hung_up": self.hung_up,
            "variables": dict(self.variables),
            "request": end.request.as_dict() if end is not None and end.request is not None else None,
            "transfer_to": end.transfer_to if end is not None else None,
            "reason": end.reason if end is not None else None,
            "started_at": self.started_at.isoformat(), "ended_at": self.ended_at.isoformat(),
        }


#: Called once per call that ran a flow (also when it failed); may be sync or async.
OnEnd = Callable[[IvrResult], Awaitable[None] | None]


@dataclass(slots=True)
class AgiStats:
    """Counters for /metrics; plain ints, read them whenever."""

    connections: int = 0  # accepted
    sessions: int = 0  # connections that started a flow
    completed: int = 0  # sessions that reached the flow's end (abandoned ones included)
    abandoned: int = 0
    failed: int = 0  # cut short: reply timeout, protocol error, shutdown
    refused: int = 0  # over max_connections / max_sessions, or the server was closing
    bad_headers: dict[str, int] = field(default_factory=dict)  # reason -> connections closed for it
    unknown_flow: int = 0
    env_lines_dropped: int = 0
    hangup_notices: int = 0
    reply_timeouts: int = 0
    protocol_errors: int = 0
    rejected_commands: int = 0  # 510 / 520 from Asterisk
    unsafe_commands: int = 0  # refused by render(): never sent
    lookups: int = 0
    lookup_failures: int = 0  # errors and timeouts: the caller is "not found"
    on_end_failures: int = 0
    internal_errors: int = 0


@dataclass(frozen=True, slots=True)
class CallSettings:
    """Per-command deadlines: ``reply_timeout`` on top of what the command itself waits (a WAIT FOR DIGIT's
    timeout, GET DATA's per-key timeout times its keys), because a prompt plays for as long as it is;
    EXEC runs a dialplan application (VoiceMail records for minutes) and gets ``exec_timeout``."""

    reply_timeout: float = 60.0
    exec_timeout: float = 600.0
    lookup_timeout: float = 2.0

    def deadline(self, command: AgiCommand) -> float:
        match command:
            case WaitForDigit(timeout_ms=ms) if ms >= 0:
                return self.reply_timeout + ms / 1000
            case GetData(timeout_ms=ms, max_digits=keys):
                return self.reply_timeout + ms * keys / 1000
            case Exec() | WaitForDigit():  # WAIT FOR DIGIT -1 waits for ever
                return self.exec_timeout
            case _:
                return self.reply_timeout


class SessionCut(Exception):
    """The server cut the connection (shutdown); not the caller's hangup."""


class _Call:
    """The working state of one call; :func:`run_call` is its only user."""

    def __init__(self, channel: AgiChannel, *, directory: Directory, settings: CallSettings, stats: AgiStats,
                 log: FilteringBoundLogger, is_cut: Callable[[], bool]) -> None:
        self.channel = channel
        self.directory = directory
        self.settings = settings
        self.stats = stats
        self.log = log
        self.is_cut = is_cut
        self.hung_up = False
        self.lost = False
        self.variables: dict[str, str] = {}

    async def batch(self, commands: list[Command]) -> Input | None:
        """Run one batch; the input that ends it (None after an End).

        A non-final batch stops at the first input (a key during an interruptible prompt, a hangup).
        The final batch (it ends with End) is the call's last words: its SET VARIABLEs go out even
        after a hangup (a dead channel still takes them), the rest (goodbye, VoiceMail, HANGUP) not.
        """
        final = bool(commands) and isinstance(commands[-1], End)
        for command in commands:
            if isinstance(command, End):
                return None
            if isinstance(command, Lookup):
                return await self.lookup(command)
            if final and self.hung_up and not isinstance(command, SetVariable):
                continue
            event = await self.execute(command)
            if event is not None and not final:
                return event
        raise RuntimeError(f"an interpreter batch that ends with {commands[-1] if commands else None!r}")

    async def execute(self, command: AgiCommand) -> Input | None:
        try:
            line = render(command)
        except UnsafeValueError as exc:
            self.stats.unsafe_commands += 1
            self.log.error("agi.unsafe_command", command=type(command).__name__, error=str(exc),
                           effect="not sent; taken as having done nothing")
            return _nothing(command)
        if self.lost:
            return self.hangup()
        try:
            reply, noticed = await self.channel.request(line, self.settings.deadline(command))
        except ConnectionLost as exc:
            if self.is_cut():
                raise SessionCut("cut by the server") from None
            self.lost = True
            self.log.info("agi.connection_lost", reason=str(exc), during=line[:40])
            return self.hangup()
        if noticed:
            self.stats.hangup_notices += 1
        try:
            event = input_for(command, reply)
        except CommandRejected as exc:
            self.stats.rejected_commands += 1
            self.log.error("agi.command_rejected", line=line[:80], code=exc.reply.code, message=exc.reply.message[:200],
                           effect="taken as having done nothing")
            event = _nothing(command)
        if isinstance(command, SetVariable) and reply.value == 1:
            self.variables[command.name] = command.value  # a notice before its reply does not undo it
        if noticed or isinstance(event, Hangup):
            return self.hangup()
        return event

    def hangup(self) -> Input | None:
        """A Hangup input the first time the call learns of it; None after (the interpreter already knows)."""
        if self.hung_up:
            return None
        self.hung_up = True
        return Hangup()

    async def lookup(self, command: Lookup) -> LookupResult:
        self.stats.lookups += 1
        try:
            async with asyncio.timeout(self.settings.lookup_timeout):
                return LookupResult(await self.directory(command.by, command.value))
        except TimeoutError:
            raise_if_cancelling()
            self.stats.lookup_failures += 1
            self.log.warning("agi.lookup_timeout", by=command.by, timeout=self.settings.lookup_timeout,
                             effect="caller not identified")
        except Exception as exc:
            raise_if_cancelling()
            self.stats.lookup_failures += 1
            self.log.warning("agi.lookup_failed", by=command.by, error=repr(exc)[:200], effect="caller not identified")
        return LookupResult(None)


def _nothing(command: AgiCommand) -> Input | None:
    """The outcome of a command that did not run: silence where a key was awaited, else nothing."""
    return Timeout() if isinstance(command, WaitForDigit | GetData) else None


async def run_call(
    channel: AgiChannel,
    flow: Flow,
    env: Mapping[str, str],
    *,
    directory: Directory,
    clock: Callable[[], datetime],
    settings: CallSettings,
    stats: AgiStats,
    log: FilteringBoundLogger,
    is_cut: Callable[[], bool] = lambda: False,
) -> IvrResult:
    """Run ``flow`` for the call ``env`` describes until its End or a failure; never raises for the call's
    own troubles (they are in the result), only for cancellation."""
    call = _Call(channel, directory=directory, settings=settings, stats=stats, log=log, is_cut=is_cut)
    started = clock()
    session, commands = start(flow, env, started)
    failure: str | None = None
    try:
        while True:
            event = await call.batch(commands)
            if session.end is not None:
                break
            if event is None:  # pragma: no cover - batch() returns an input for every non-final batch
                raise RuntimeError("a batch ended without an input")
            session, commands = step(session, event, now=clock())
    except ReplyTimeout as exc:
        stats.reply_timeouts += 1
        failure = "reply_timeout"
        log.warning("agi.reply_timeout", error=str(exc), node=session.node, effect="session cut")
    except ProtocolError as exc:
        stats.protocol_errors += 1
        failure = "protocol_error"
        log.warning("agi.protocol_error", error=str(exc), node=session.node, effect="session cut")
    except SessionCut:
        failure = "shutdown"
    return _result(flow, env, session, call, failure=failure, started=started, ended=clock())


def _result(flow: Flow, env: Mapping[str, str], session: Session, call: _Call, *, failure: str | None,
            started: datetime, ended: datetime) -> IvrResult:
    end = session.end  # reached before a failure in the last words: the caller's choice still stands
    return IvrResult(
        flow=flow.id, version=flow.version, env=MappingProxyType(dict(env)), path=session.path,
        inputs=tuple(str(i) for i in session.inputs), vars=session.vars,
        language=end.language if end is not None else session.language, end=end, failure=failure,
        hung_up=call.hung_up, variables=MappingProxyType(dict(call.variables)), started_at=started, ended_at=ended,
    )


async def hand_over(on_end: OnEnd, result: IvrResult, *, timeout: float, stats: AgiStats,
                    log: FilteringBoundLogger) -> None:
    """``on_end(result)`` (sync or async) within ``timeout``; its failure is logged, never the call's."""
    try:
        async with asyncio.timeout(timeout):
            outcome = on_end(result)
            if inspect.isawaitable(outcome):
                await outcome
    except Exception as exc:
        raise_if_cancelling()
        stats.on_end_failures += 1
        log.error("agi.on_end_failed", error=repr(exc)[:200], kind=result.kind, exc_info=not isinstance(
            exc, TimeoutError))

