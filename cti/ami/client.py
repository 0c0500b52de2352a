"""Asyncio AMI client: one connection, reconnecting, with ordered event delivery.

Built on asyncio streams and the sans-IO :mod:`cti.ami.codec` instead of
panoramisk's ``Manager``, which hangs actions cut by a disconnect, has no action
timeout, never checks the Pong and runs callbacks as loose, unordered tasks.

Shape of :meth:`AmiClient.run`::

    TaskGroup
    ├── consumer   awaits on_connect / on_event strictly in arrival order
    └── connection loop (iterative): connect → greeting → Login → session → backoff
            session TaskGroup
            ├── reader   bytes → Decoder → route (never blocks on the consumer)
            └── pinger   Ping every ping_interval; no reply in ping_timeout drops the link

Routing: a message whose ActionID belongs to a waiting action goes to that
action (its response and, for EventList actions, its list items); every other
event goes to one unbounded queue read by the consumer. The reader never waits
for the consumer, so ``on_connect`` can await actions (a resync) while events
keep streaming in behind it.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import structlog

from cti.ami.backoff import Backoff
from cti.ami.codec import ActionValue, Decoder, Message, ProtocolError, encode_action
from cti.ami.errors import (
    AmiActionError,
    AmiAuthError,
    AmiConnectionError,
    AmiDisconnected,
    AmiTimeout,
)
from cti.config import AmiConfig

__all__ = ["AmiClient", "AmiStats", "ConnectHandler", "EventHandler"]

STABLE_AFTER_S = 1.0  # a logged-in session up this long resets the reconnect backoff
_LOG_EVERY = 1000  # bad input is logged the first time and then once per this many

#: Called once per event, in arrival order. A plain function is called from the read path itself
#: while nothing is queued before the event (no task switch per event); a coroutine function always
#: runs in the consumer task. Either way it must not block.
EventHandler = Callable[[Message], Awaitable[None]] | Callable[[Message], None]
ConnectHandler = Callable[["AmiClient"], Awaitable[None]]

_READ_SIZE: Final = 65536
_STREAM_LIMIT: Final = 1 << 16


class _FeedingReader(asyncio.StreamReader):
    """A StreamReader that, once attached to a callback, hands each chunk to a callback as the transport
    delivers it instead of buffering it for a ``read()``: a live AMI link brings one or two events
    per chunk, and waking a reader task for each was the largest cost of reading them.

    The login still uses the ordinary ``read()``; ``ended`` resolves with why the stream stopped.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=_STREAM_LIMIT, loop=loop)
        self._sink: Callable[[bytes], None] | None = None
        self.ended: asyncio.Future[str] = loop.create_future()

    def attach(self, sink: Callable[[bytes], None]) -> None:
        buffer: bytearray = self._buffer  # type: ignore[attr-defined]  # the base class's own buffer
        buffered = bytes(buffer)  # arrived after the login reply, before this
        buffer.clear()
        self._sink = sink
        # A flood right after the login reply may have paused reading (buffer over twice the limit),
        # and only the base class's read() would resume it.
        self._maybe_resume_transport()  # type: ignore[attr-defined]
        if buffered:
            sink(buffered)

    def feed_data(self, data: bytes) -> None:  # type: ignore[override]  # the transport gives bytes
        sink = self._sink
        if sink is None:
            super().feed_data(data)
        elif not self.ended.done():
            sink(data)

    def feed_eof(self) -> None:
        super().feed_eof()
        self.stop("closed by server")

    def set_exception(self, exc: Exception) -> None:
        super().set_exception(exc)
        self.stop(f"read failed: {exc!r}")

    def stop(self, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)


async def _open_connection(host: str, port: int) -> tuple[_FeedingReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` with our reader (its own body, which has no hook for the reader's class)."""
    loop = asyncio.get_running_loop()
    reader = _FeedingReader(loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
_CLOSE_GRACE: Final = 1.0  # seconds to let a closed socket flush before aborting it


@dataclass(slots=True)
class AmiStats:
    """Counters for /metrics; plain ints, read them whenever."""

    messages: int = 0  # whole messages decoded (greeting excluded)
    bytes: int = 0
    session_bytes: int = 0  # read on the current connection (greeting included)
    events: int = 0  # messages handed to on_event
    malformed: int = 0  # messages with neither Event nor Response, and protocol errors
    late_replies: int = 0  # responses whose action already timed out or was cancelled
    connects: int = 0  # successful logins
    reconnects: int = 0  # connection attempts after the first
    auth_failures: int = 0


@dataclass(slots=True)
class _Connected:
    """Queue marker: the consumer calls on_connect here, before later events."""

    generation: int


@dataclass(slots=True)
class _Pending:
    """An action waiting for its reply (and, for EventList actions, its items)."""

    name: str
    is_list: bool
    future: asyncio.Future[tuple[Message, list[Message]]]
    response: Message | None = None
    items: list[Message] = field(default_factory=list)
    complete: Message | None = None

    def offer(self, msg: Message) -> bool:
        """Take ``msg`` if it belongs to this action; complete the future when the reply is whole."""
        if msg.response is not None:
            if self.response is not None:
                return False  # a second Response with our ActionID: not ours to interpret
            self.response = msg
            listing = (msg.get("EventList") or "").lower() == "start"
            if not (self.is_list and msg.response == "Success" and listing):
                self._finish()
            return True
        if not self.is_list:
            return False  # e.g. OriginateResponse racing the reply: it is an event
        if (msg.get("EventList") or "").lower() == "complete":
            self.complete = msg
            if self.response is not None:
                self._finish()
            return True
        self.items.append(msg)
        return True

    def _finish(self) -> None:
        assert self.response is not None
        expected = self.complete.get("ListItems") if self.complete is not None else None
        if expected is not None and expected.isdigit() and int(expected) != len(self.items):
            structlog.get_logger(__name__).warning(
                "ami.list_count_mismatch", action=self.name, expected=int(expected), got=len(self.items)
            )
        if not self.future.done():
            self.future.set_result((self.response, self.items))


class _SessionEnded(Exception):
    """Internal: the connection is over; ``str()`` is the reason that gets logged."""


class AmiClient:
    """A reconnecting AMI client; run :meth:`run` as a task, call :meth:`action` from anywhere.

    Not connected → :meth:`action` raises :class:`AmiConnectionError` at once
    rather than queueing: a queued ``Originate`` firing minutes later, after a
    reconnect, is worse than an error the caller can see.
    """

    def __init__(
        self,
        *,
        config: AmiConfig,
        on_event: EventHandler,
        on_connect: ConnectHandler | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        stable_after: float | None = None,
        backlog_warning: int = 10_000,
    ) -> None:
        """``stable_after``: a session that logged in and stayed up this long resets the backoff
        (default 1 s: a link cut every few seconds is retried at once every time, while a server
        that drops each login at once still backs off)."""
        self._config = config
        self._on_event = on_event
        self._direct: Callable[[Message], None] | None = (
            None if inspect.iscoroutinefunction(on_event) else on_event)  # type: ignore[assignment]
        self._busy = False  # the consumer holds an item: later events must queue behind it
        self._on_connect = on_connect
        self._rng = rng or random.Random()
        self._clock = clock
        self._stable_after = STABLE_AFTER_S if stable_after is None else stable_after
        self._backlog_warning = backlog_warning
        self._backoff = Backoff(config.backoff_initial, max(config.backoff_max, config.backoff_initial))
        self._log = structlog.get_logger(__name__).bind(host=config.host, port=config.port)
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        # A deque and a wake-up event rather than asyncio.Queue: the reader appends a whole
        # read's worth of events and the consumer drains them without a future per event.
        self._backlog: deque[Message | _Connected] = deque()
        self._wakeup = asyncio.Event()
        self._backlog_warned = False
        self._resync_queued = False
        self._writer: asyncio.StreamWriter | None = None
        self._drop_reason: str | None = None
        self._generation = 0
        self._running = False
        self._closing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._up = asyncio.Event()
        self.stats = AmiStats()

    @property
    def connected(self) -> bool:
        """True between a successful Login and the next disconnect."""
        return self._up.is_set()

    @property
    def pending_events(self) -> int:
        """Events read but not yet handed to ``on_event`` (tests wait for 0)."""
        return sum(1 for item in self._backlog if not isinstance(item, _Connected))

    def request_resync(self) -> bool:
        """Run ``on_connect`` again on the live connection, in order with the events.

        A periodic check that the model has not drifted (a Hangup lost to a manager
        ``eventfilter``, an event the model misread). False when not connected: the next
        login resyncs anyway.
        """
        if not self.connected:
            return False
        if self._resync_queued:  # one still waits its turn: a second right behind it adds nothing
            return True
        self._resync_queued = True
        self._enqueue(_Connected(self._generation))
        return True

    async def wait_connected(self) -> None:
        """Return once logged in (at once if already); wrap in a timeout."""
        await self._up.wait()

    # ---------------------------------------------------------------- actions

    async def action(
        self, name: str, fields: Mapping[str, ActionValue] | None = None, *, timeout: float | None = None
    ) -> Message:
        """Send one action and return its ``Response`` (``Error`` → :class:`AmiActionError`).

        Raises :class:`UnsafeValueError` before anything is written,
        :class:`AmiConnectionError` if not connected, :class:`AmiDisconnected`
        if the link drops first, :class:`AmiTimeout` after ``timeout``
        (default ``config.action_timeout``). Never re-sent automatically.
        """
        response, _ = await self._request(name, fields, timeout, is_list=False)
        return response

    async def action_list(
        self, name: str, fields: Mapping[str, ActionValue] | None = None, *, timeout: float | None = None
    ) -> tuple[Message, list[Message]]:
        """Send an EventList action (CoreShowChannels, QueueStatus); return (response, items).

        Items are the events carrying our ActionID up to the ``EventList:
        Complete`` event, which is *not* among them (a mismatch with its
        ``ListItems`` is logged). A response without ``EventList: start`` ends
        the list at once with no items. The timeout covers the whole list.
        """
        return await self._request(name, fields, timeout, is_list=True)

    async def _request(
        self, name: str, fields: Mapping[str, ActionValue] | None, timeout: float | None, *, is_list: bool
    ) -> tuple[Message, list[Message]]:
        action_id = f"cti-{next(self._ids)}"
        data = encode_action(name, action_id, fields)  # UnsafeValueError: nothing written
        writer = self._writer
        if writer is None or not self._up.is_set():
            raise AmiConnectionError(f"AMI not connected; {name} not sent")
        future: asyncio.Future[tuple[Message, list[Message]]] = asyncio.get_running_loop().create_future()
        self._pending[action_id] = _Pending(name, is_list, future)
        limit = self._config.action_timeout if timeout is None else timeout
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                writer.write(data)
                try:
                    await writer.drain()
                except OSError as exc:  # the reader sees the same loss and fails the future
                    raise AmiDisconnected(f"AMI connection lost while sending {name}: {exc}") from exc
                response, items = await future
        except TimeoutError:
            if deadline.expired():
                raise AmiTimeout(f"AMI action {name} ({action_id}): no complete reply in {limit}s") from None
            raise
        finally:
            # Gone on every path (reply, timeout, cancel): a late reply is then dropped, not misrouted.
            self._pending.pop(action_id, None)
        if response.response == "Error":
            raise AmiActionError(name, response)
        return response, items

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Connect, log in, deliver events and reconnect until :meth:`close` or cancellation."""
        if self._running:
            raise RuntimeError("AmiClient.run() is already running")
        self._running = True
        self._stopped.clear()
        try:
            async with asyncio.TaskGroup() as tg:
                consumer = tg.create_task(self._consume(), name=f"ami[{self._where}].consumer")
                try:
                    await self._connection_loop()
                finally:
                    consumer.cancel()  # events still queued at close are not delivered
        finally:
            self._running = False
            self._stopped.set()

    async def close(self) -> None:
        """Stop :meth:`run` (no reconnect) and wait for it to finish; safe to call twice."""
        self._closing.set()
        self._abort("client closed")
        if self._running:
            await self._stopped.wait()

    @property
    def _where(self) -> str:
        return f"{self._config.host}:{self._config.port}"

    async def _connection_loop(self) -> None:
        cfg = self._config
        failures = 0
        attempt = 0
        while not self._closing.is_set():
            attempt += 1
            if attempt > 1:
                self.stats.reconnects += 1
            log = self._log.bind(attempt=attempt)
            log.info("ami.connecting")
            try:
                reader, writer, decoder, early = await self._open()
            except AmiAuthError as exc:
                self.stats.auth_failures += 1
                log.error("ami.login_refused", username=cfg.username, reason=str(exc),
                          hint="check the AMI username/secret and the manager.conf permit/deny")
            except AmiConnectionError as exc:
                log.warning("ami.connect_failed", reason=str(exc))
            else:
                if self._closing.is_set():  # close() came while we were logging in
                    await self._close_writer(writer)
                    break
                up_since = self._clock()
                reason = await self._serve(reader, writer, decoder, early)
                uptime = self._clock() - up_since
                if uptime >= self._stable_after:
                    failures = 0
                log.warning("ami.disconnected", reason=reason, uptime=round(uptime, 3))
            if self._closing.is_set():
                break
            delay = self._backoff.delay(failures, self._rng)
            failures += 1
            log.info("ami.reconnect_scheduled", delay=round(delay, 3), failures=failures)
            try:
                async with asyncio.timeout(delay):
                    await self._closing.wait()
            except TimeoutError:
                pass
        self._log.info("ami.closed")

    async def _open(self) -> tuple[_FeedingReader, asyncio.StreamWriter, Decoder, list[Message]]:
        """TCP connect, greeting and Login within ``connect_timeout``; foreign errors translated here."""
        cfg = self._config
        login_id = f"cti-{next(self._ids)}"
        login = encode_action(
            "Login", login_id, {"Username": cfg.username, "Secret": cfg.secret.get_secret_value()}
        )  # a CR/LF in the configured secret is a config bug: raised out of run()
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                reader, writer = await _open_connection(cfg.host, cfg.port)
            self.stats.session_bytes = 0
        except (OSError, TimeoutError) as exc:
            raise AmiConnectionError(f"cannot connect: {exc!r}") from exc
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                decoder = Decoder()
                early: list[Message] = []
                greeting: Message | None = None
                reply: Message | None = None
                while reply is None:
                    data = await reader.read(_READ_SIZE)
                    if not data:
                        raise AmiConnectionError("closed by server during login")
                    self.stats.bytes += len(data)
                    self.stats.session_bytes += len(data)
                    for msg in decoder.feed(data):
                        if msg.is_greeting:
                            greeting = msg
                            writer.write(login)
                        elif reply is None and msg.action_id == login_id and msg.response is not None:
                            reply = msg
                        else:
                            early.append(msg)
                    await writer.drain()
            assert greeting is not None and reply is not None
            if reply.response != "Success":
                raise AmiAuthError(reply.get("Message") or f"Login answered {reply.response}")
        except BaseException as exc:
            await self._close_writer(writer)
            if isinstance(exc, TimeoutError):
                raise AmiConnectionError(f"no greeting/login reply in {cfg.connect_timeout}s") from exc
            if isinstance(exc, OSError | ProtocolError):
                raise AmiConnectionError(f"login failed: {exc!r}") from exc
            raise
        self._log.info("ami.logged_in", version=greeting["Greeting"], username=cfg.username)
        return reader, writer, decoder, early

    async def _serve(
        self, reader: _FeedingReader, writer: asyncio.StreamWriter, decoder: Decoder, early: list[Message]
    ) -> str:
        """Run one logged-in connection until it ends; return why it ended."""
        self._generation += 1
        self._drop_reason = None
        self._writer = writer
        self._up.set()
        self.stats.connects += 1
        self._enqueue(_Connected(self._generation))
        reason = "cancelled"
        try:
            for msg in early:
                self._route(msg)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read_loop(reader, decoder), name=f"ami[{self._where}].reader")
                tg.create_task(self._ping_loop(), name=f"ami[{self._where}].pinger")
        except* _SessionEnded as group:
            reason = str(group.exceptions[0])
        finally:
            self._drop(self._drop_reason or reason)
            await self._close_writer(writer)
        return self._drop_reason or reason

    async def _read_loop(self, reader: _FeedingReader, decoder: Decoder) -> None:
        truncated = decoder.truncated

        def on_data(data: bytes) -> None:  # in the transport's callback: no await, no task switch
            nonlocal truncated
            self.stats.bytes += len(data)
            self.stats.session_bytes += len(data)
            try:
                messages = decoder.feed(data)
            except ProtocolError as exc:
                self.stats.malformed += 1
                self._log.error("ami.protocol_error", error=str(exc))
                reader.stop(f"protocol error: {exc}")
                return
            if decoder.truncated != truncated:
                if truncated // _LOG_EVERY != decoder.truncated // _LOG_EVERY or not truncated:
                    self._log.warning("ami.value_truncated", values=decoder.truncated, limit=decoder.max_value,
                                      action="kept the first characters; the link stays up")
                truncated = decoder.truncated
            for msg in messages:
                self._route(msg)

        reader.attach(on_data)
        reason = await reader.ended
        raise self._end(self._drop_reason or reason)

    async def _ping_loop(self) -> None:
        """Half-open TCP detection: any reply to Ping within ping_timeout proves the link."""
        cfg = self._config
        while True:
            await asyncio.sleep(cfg.ping_interval)
            try:
                await self._request("Ping", None, cfg.ping_timeout, is_list=False)
            except AmiTimeout:
                self._log.warning("ami.ping_timeout", timeout=cfg.ping_timeout)
                raise self._end(f"no reply to Ping in {cfg.ping_timeout}s") from None
            except AmiActionError:
                pass  # an Error reply still proves the link is alive
            except AmiConnectionError:
                return  # the reader reports why

    def _end(self, reason: str) -> _SessionEnded:
        """Fail waiting actions now (not after teardown) and build the exception that ends the session."""
        self._drop(reason)
        return _SessionEnded(reason)

    def _drop(self, reason: str) -> None:
        """Mark the link down and fail every waiting action; never re-sends anything."""
        if self._drop_reason is None:
            self._drop_reason = reason
        self._up.clear()
        self._writer = None
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if not p.future.done():
                p.future.set_exception(AmiDisconnected(f"AMI connection lost ({reason}); {p.name} not re-sent"))

    def _abort(self, reason: str) -> None:
        """Cut the live connection from outside the reader (close(), failed on_connect)."""
        writer = self._writer
        if writer is not None:
            self._drop(reason)
            writer.transport.abort()  # the reader sees EOF and ends the session with this reason

    async def _close_writer(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            async with asyncio.timeout(_CLOSE_GRACE):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            writer.transport.abort()

    # ---------------------------------------------------------------- routing and delivery

    def _route(self, msg: Message) -> None:
        self.stats.messages += 1
        if msg.event is None and msg.response is None:
            self.stats.malformed += 1
            self._log.warning("ami.malformed_message", keys=list(msg.fields)[:8])
            return
        # An event carries an ActionID only as part of a list reply: look only while an action waits.
        action_id = msg.action_id if self._pending or msg.event is None else None
        if action_id is not None:
            pending = self._pending.get(action_id)
            if pending is not None and pending.offer(msg):
                if pending.future.done():
                    del self._pending[action_id]
                return
            if msg.event is None:
                self.stats.late_replies += 1
                self._log.debug("ami.late_reply_dropped", action_id=action_id, response=msg.response)
                return
        if msg.event is None:
            self._log.debug("ami.unsolicited_response_dropped", response=msg.response)
            return
        self._enqueue(msg)

    def _enqueue(self, item: Message | _Connected) -> None:
        if self._direct is not None and not self._backlog and not self._busy and isinstance(item, Message):
            self._deliver(self._direct, item)  # nothing before it: no need to go through the consumer
            return
        self._backlog.append(item)  # unbounded on purpose: the reader must never wait for on_event
        self._wakeup.set()
        size = len(self._backlog)
        if size > self._backlog_warning and not self._backlog_warned:
            self._backlog_warned = True
            self._log.warning("ami.event_backlog", queued=size, threshold=self._backlog_warning)
        elif self._backlog_warned and size < self._backlog_warning // 2:
            self._backlog_warned = False

    def _deliver(self, handler: Callable[[Message], None], msg: Message) -> None:
        self.stats.events += 1
        try:
            handler(msg)
        except Exception:
            self._log.exception("ami.on_event_failed", event_name=msg.event)

    async def _consume(self) -> None:
        """The one task that calls user code when events queue up, strictly in arrival order."""
        backlog, wakeup = self._backlog, self._wakeup
        while True:
            if not backlog:
                wakeup.clear()
                await wakeup.wait()
                continue
            item = backlog.popleft()
            self._busy = True
            try:
                if isinstance(item, _Connected):
                    self._resync_queued = False
                    await self._run_on_connect(item)
                elif self._direct is not None:
                    self._deliver(self._direct, item)
                else:
                    self.stats.events += 1
                    try:
                        await self._on_event(item)  # type: ignore[misc]
                    except Exception:
                        self._log.exception("ami.on_event_failed", event_name=item.event)
            finally:
                self._busy = False

    async def _run_on_connect(self, marker: _Connected) -> None:
        if self._on_connect is None:
            return
        if marker.generation != self._generation or not self._up.is_set():
            self._log.info("ami.on_connect_skipped", reason="that connection is already gone")
            return
        try:
            await self._on_connect(self)
        except Exception:
            # The app's model is not trusted until a resync succeeds: reconnect and try again.
            self._log.exception("ami.on_connect_failed")
            if marker.generation == self._generation:
                self._abort("on_connect failed")
