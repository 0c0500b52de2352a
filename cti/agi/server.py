"""Our FastAGI server: the dialplan's ``AGI(agi://127.0.0.1:4573/hotline)`` runs the flow ``hotline`` here.

    async with AgiServer(flows=registry.current, directory=customer_directory(store), on_end=enqueue) as agi:
        ...                                   # agi.port, agi.stats, agi.active_sessions

Built on asyncio streams rather than panoramisk's ``fast_agi``, whose handler spins on a
connect-then-close (one probe freezes the loop) and whose sync routes crash on Python 3.11.

Shape::

    TaskGroup (owned by the server, entered by ``async with``)
    ├── agi.watchdog                           aborts the socket of a call whose command is overdue
    └── agi[<peer>], renamed agi[<channel>]    one per connection, in this order:
            header (one deadline, size limits)  ->  flow by agi_network_script  ->  run_call
            ->  close the socket (the dialplan goes on)  ->  on_end(result)

``on_end`` runs after the socket is closed: the channel has left ``AGI()`` (all its ``CTI_*``
variables written) before routing can ``Redirect`` it, which would cut a running AGI short.

Bad connections (nothing sent, half a header, a huge line, not AGI) are closed with a reason,
counted in :attr:`AgiServer.stats`, and logged the first time and then once per
:data:`LOG_EVERY` of the same reason. A connection over ``max_connections`` or a call over
``max_sessions`` is refused the same way: the socket closes, Asterisk leaves ``AGI()`` and the
dialplan goes on (in ours, ``cti-hold`` and its fallback queue).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, Self
from urllib.parse import urlsplit

import structlog
from structlog.typing import FilteringBoundLogger

from cti.agi.call import AgiStats, CallSettings, Directory, IvrResult, OnEnd, hand_over, run_call
from cti.agi.channel import AgiChannel, Watchdog
from cti.agi.header import BadHeader, HeaderLimits, read_env
from ivr_flows import Flow

__all__ = ["LOG_EVERY", "AgiServer", "AgiSettings", "CustomerStore", "customer_directory", "flow_id_for"]

log: FilteringBoundLogger = structlog.get_logger(__name__)

#: Bad connections and refusals of one reason are logged the first time and then once per this many.
LOG_EVERY: Final = 100
_CUT_GRACE_S: Final = 1.0  # after aborting its socket, a session has this long to end before it is cancelled
_CLOSE_GRACE_S: Final = 1.0  # a closed socket may flush this long before it is aborted
_TICK_S: Final = 0.25  # how often reply deadlines are checked
_FD_HEADROOM: Final = 256  # descriptors the rest of the server (Redis, AMI, HTTP, logs) may hold


@dataclass(frozen=True, slots=True)
class AgiSettings:
    """Where to listen and how much to allow; the defaults suit one Asterisk on the same host or LAN.

    FastAGI has no authentication: keep ``host`` on loopback or a private interface.
    """

    host: str = "127.0.0.1"
    port: int = 4573
    max_sessions: int = 1000  # calls running a flow at once; more are refused
    max_connections: int = 2000  # sockets open at once, calls and half-open ones alike
    header_timeout: float = 5.0  # the whole agi_* block, not each line: a trickle cannot stretch it
    max_line_bytes: int = 8192
    max_header_lines: int = 200
    max_header_bytes: int = 32768
    reply_timeout: float = 60.0  # per command, on top of the command's own wait (see CallSettings)
    exec_timeout: float = 600.0
    lookup_timeout: float = 2.0
    on_end_timeout: float = 5.0
    drain_timeout: float = 10.0  # close(): running calls get this long to finish, then they are cut
    backlog: int = 1024

    def header_limits(self) -> HeaderLimits:
        return HeaderLimits(self.header_timeout, self.max_line_bytes, self.max_header_lines, self.max_header_bytes)

    def call_settings(self) -> CallSettings:
        return CallSettings(self.reply_timeout, self.exec_timeout, self.lookup_timeout)


def flow_id_for(env: Mapping[str, str]) -> str:
    """``agi://host:4573/hotline?x=1`` -> ``hotline``: ``agi_network_script``, else the path of ``agi_request``."""
    script = env.get("agi_network_script", "")
    if not script:
        try:
            script = urlsplit(env.get("agi_request", "")).path
        except ValueError:
            return ""
    return script.split("?", 1)[0].strip("/")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True, eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    cut: bool = False  # the server aborted it (shutdown): a lost socket is then not the caller's hangup


class AgiServer:
    """A FastAGI server running IVR flows; ``async with`` listens, and leaving it is :meth:`close`.

    ``flows`` is called for every new call, so a reloaded flow applies to new calls only: a running
    call holds the :class:`~ivr_flows.Flow` it started with. ``directory(by, value)`` answers the
    flow's lookups. ``on_end(result)`` (sync or async) gets every call that ran a flow, failed ones too.
    """

    def __init__(
        self,
        *,
        flows: Callable[[], Mapping[str, Flow]],
        directory: Directory,
        on_end: OnEnd,
        settings: AgiSettings | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.settings = settings or AgiSettings()
        self._flows = flows
        self._directory = directory
        self._on_end = on_end
        self._clock = clock
        self._limits = self.settings.header_limits()
        self._call_settings = self.settings.call_settings()
        self._stack = AsyncExitStack()
        self._group: asyncio.TaskGroup | None = None
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], _Conn] = {}
        self._sessions = 0
        self._closing = False
        self._closed = asyncio.Event()
        self._watchdog = Watchdog(min(_TICK_S, self.settings.reply_timeout / 4))
        self._watchdog_task: asyncio.Task[None] | None = None
        self.stats = AgiStats()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            return self.settings.port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def active_sessions(self) -> int:
        return self._sessions

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def closing(self) -> bool:
        """True from :meth:`close` on: no new connection or call is taken."""
        return self._closing

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        self._group = await self._stack.enter_async_context(asyncio.TaskGroup())
        s = self.settings
        try:
            self._server = await asyncio.start_server(self._accept, s.host, s.port, limit=s.max_line_bytes,
                                                      backlog=s.backlog)
        except BaseException:
            await self._stack.aclose()
            raise
        self._watchdog_task = self._group.create_task(self._watchdog.run(), name="agi.watchdog")
        log.info("agi.listening", host=s.host, port=self.port, max_sessions=s.max_sessions)
        _check_fd_limit(s.max_connections)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
        await self._stack.__aexit__(exc_type, exc, tb)

    async def run(self) -> None:
        """Serve until :meth:`close`: one long-lived task for a supervisor."""
        async with self:
            await self._closed.wait()

    async def close(self) -> None:
        """Stop accepting; let running calls finish within ``drain_timeout``, then cut them. Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._conns)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.drain_timeout)
            if pending:
                log.warning("agi.cutting_sessions", count=len(pending), drain_timeout=self.settings.drain_timeout,
                            effect="their callers leave AGI() and the dialplan goes on")
                for task in pending:
                    conn = self._conns.get(task)
                    if conn is not None:
                        conn.cut = True
                        conn.writer.transport.abort()
                _, stuck = await asyncio.wait(pending, timeout=_CUT_GRACE_S)
                for task in stuck:
                    task.cancel()
                await asyncio.gather(*stuck, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
        self._closed.set()
        log.info("agi.closed", sessions=self.stats.sessions, refused=self.stats.refused)

    # ---------------------------------------------------------------- connections

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """asyncio's connection callback: the connection's task goes into our TaskGroup, not a loose one."""
        self.stats.connections += 1
        peer = _peer(writer)
        if self._closing or self._group is None or len(self._conns) >= self.settings.max_connections:
            self._refuse("closing" if self._closing else "too_many_connections", peer=peer)
            writer.transport.abort()
            return
        conn = _Conn(reader, writer, peer)
        task = self._group.create_task(self._serve(conn), name=f"agi[{peer}]")
        self._conns[task] = conn

    async def _serve(self, conn: _Conn) -> None:
        task = asyncio.current_task()
        result: IvrResult | None = None
        try:
            result = await self._session(conn)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("agi.session_crashed", peer=conn.peer)
        finally:
            await _close(conn.writer)
            if task is not None:
                self._conns.pop(task, None)
        if result is not None:
            await hand_over(self._on_end, result, timeout=self.settings.on_end_timeout, stats=self.stats, log=log)

    async def _session(self, conn: _Conn) -> IvrResult | None:
        try:
            header = await read_env(conn.reader, self._limits)
        except BadHeader as exc:
            self._bad_header(exc.reason, conn.peer)
            return None
        env = header.env
        flow_id = flow_id_for(env)
        slog = log.bind(channel=env.get("agi_channel", ""), uniqueid=env.get("agi_uniqueid", ""), flow=flow_id)
        if header.dropped:
            self.stats.env_lines_dropped += header.dropped
            slog.warning("agi.env_lines_dropped", lines=header.dropped,
                         why="not agi_name: value (a line feed in a caller ID or name splits its line)")
        flow = self._flow(flow_id, slog)
        if flow is None:
            return None
        if self._closing:
            self._refuse("closing", peer=conn.peer, slog=slog)
            return None
        if self._sessions >= self.settings.max_sessions:
            self._refuse("busy", peer=conn.peer, slog=slog, limit=self.settings.max_sessions)
            return None
        task = asyncio.current_task()
        if task is not None and env.get("agi_channel"):
            task.set_name(f"agi[{env['agi_channel'][:80]}]")
        self._sessions += 1
        self.stats.sessions += 1
        channel = AgiChannel(conn.reader, conn.writer)
        self._watchdog.channels.add(channel)
        try:
            result = await run_call(channel, flow, env, directory=self._directory, clock=self._clock,
                                    settings=self._call_settings, stats=self.stats, log=slog, is_cut=lambda: conn.cut)
        finally:
            self._watchdog.channels.discard(channel)
            self._sessions -= 1
        self._count(result)
        slog.info("agi.call_ended", kind=result.kind, entry_point=result.entry_point, failure=result.failure,
                  nodes=len(result.path), version=result.version,
                  seconds=round((result.ended_at - result.started_at).total_seconds(), 3))
        return result

    def _flow(self, flow_id: str, slog: FilteringBoundLogger) -> Flow | None:
        try:
            flows = self._flows()
        except Exception:
            self.stats.internal_errors += 1
            slog.exception("agi.flows_unavailable", effect="connection closed; the dialplan goes on")
            return None
        flow = flows.get(flow_id)
        if flow is None:
            self.stats.unknown_flow += 1
            slog.warning("agi.unknown_flow", known=sorted(flows)[:20],
                         effect="connection closed; the dialplan goes on after AGI()")
        return flow

    def _count(self, result: IvrResult) -> None:
        if result.failure is not None:
            self.stats.failed += 1
            return
        self.stats.completed += 1
        if result.kind == "abandoned":
            self.stats.abandoned += 1

    def _bad_header(self, reason: str, peer: str) -> None:
        count = self.stats.bad_headers[reason] = self.stats.bad_headers.get(reason, 0) + 1
        if count == 1 or count % LOG_EVERY == 0:
            level = log.info if reason == "closed_before_header" else log.warning  # a port probe is routine
            level("agi.bad_connection", reason=reason, peer=peer, count=count, effect="closed")

    def _refuse(self, reason: Literal["busy", "closing", "too_many_connections"], *, peer: str,
                slog: FilteringBoundLogger | None = None, **details: object) -> None:
        self.stats.refused += 1
        if self.stats.refused == 1 or self.stats.refused % LOG_EVERY == 0:
            (slog or log).warning("agi.refused", reason=reason, peer=peer, refused=self.stats.refused,
                                  effect="connection closed; the dialplan goes on after AGI()", **details)


def _check_fd_limit(max_connections: int) -> None:
    """Past the descriptor limit accept() fails for real calls too: say so at start, not during a flood."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < max_connections + _FD_HEADROOM:
        log.warning("agi.fd_limit_low", nofile=soft, max_connections=max_connections,
                    fix=f"raise LimitNOFILE / ulimit -n to at least {max_connections + _FD_HEADROOM}, "
                        "or lower max_connections")


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_GRACE_S):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise


# ---------------------------------------------------------------- the customer directory as a lookup


class _Record(Protocol):
    def model_dump(self) -> dict[str, Any]: ...


class CustomerStore(Protocol):
    """What :class:`cti.directory.RedisDirectory` offers."""

    async def lookup(self, number: str | None) -> _Record | None: ...

    async def get(self, customer_id: str) -> _Record | None: ...


def customer_directory(store: CustomerStore) -> Directory:
    """The customer directory as the flows' lookup: by caller number (exact, else a unique last-9-digit
    match), or by account number, read as the customer id."""

    async def lookup(by: Literal["number", "account"], value: str) -> Mapping[str, object] | None:
        customer = await (store.lookup(value) if by == "number" else store.get(value))
        return customer.model_dump() if customer is not None else None

    return lookup


if TYPE_CHECKING:  # the Protocol matches the real store
    from cti.directory.store import RedisDirectory

    _fits: Callable[[RedisDirectory], Directory] = customer_directory
