"""Push envelopes to MQTT, and take agents' commands from it.

Topics under ``{topic_prefix}/agents/{agent}/``: ``events`` (every envelope, QoS 1, never
retained: a client that connects later must not see a stale ringing call), ``state`` (the
agent's latest ``agent.state`` envelope, QoS 1, **retained**, so a client learns the state the
moment it subscribes) and ``commands`` (the server subscribes to ``+/commands``).

``publish`` only enqueues, so a dead broker never stalls the call model; the
:meth:`MqttSink.run` loop (a named task in the app's TaskGroup) owns the aiomqtt
client, reconnects with capped backoff and drains the outbox in order.

Delivery is at least once and in order: up to ``window`` publishes are in flight
(one at a time would cap throughput at one broker round trip, which a busy loop
stretches to milliseconds), and every message whose PUBACK has not arrived is
sent again, in the original order, on the next connection; clients dedupe on the
envelope ``id``.  Each connection gets a fresh :class:`aiomqtt.Client`: reusing
one after an unexpected disconnect left paho spinning on a stale socket (aiomqtt
2.5, cf. empicano/aiomqtt#288), and paho's own resend queue dies with it, which
is why the sink keeps the unacknowledged messages itself.  Each connection also
publishes every agent's last state again first: a broker restarted without
persistence has forgotten its retained messages.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, NamedTuple

import aiomqtt
import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cti.ami.backoff import Backoff
from cti.config import MqttConfig
from cti.push.envelope import Envelope
from cti.supervise import raise_if_cancelling

__all__ = ["MqttSink", "agent_topic", "command_agent"]

log = structlog.get_logger(__name__)

_UNSAFE: Final = frozenset("/+#\0")
STATE: Final = "agent.state"
#: Commands handled at once; more wait in aiomqtt's bounded queue of incoming messages.
COMMANDS_AT_ONCE: Final = 32

#: ``(agent, payload)``: one command message, for the server to authenticate and run.
CommandHandler = Callable[[str, bytes], Awaitable[None]]


def agent_topic(prefix: str, agent: str, leaf: str = "events") -> str:
    """One of the agent's topics; an id that could widen a subscription or an ACL match is refused."""
    if not agent or any(c in _UNSAFE for c in agent):
        raise ValueError(f"agent id {agent!r} is not a safe MQTT topic segment (empty, '/', '+', '#' or NUL)")
    return f"{prefix}/agents/{agent}/{leaf}"


def command_agent(prefix: str, topic: str) -> str | None:
    """The agent a ``{prefix}/agents/{agent}/commands`` topic is for, None for any other topic."""
    head, tail = f"{prefix}/agents/", "/commands"
    if not (topic.startswith(head) and topic.endswith(tail)):
        return None
    agent = topic[len(head):-len(tail)]
    return agent if agent and not any(c in _UNSAFE for c in agent) else None


class _Message(NamedTuple):
    topic: str
    retain: bool
    envelope: Envelope


class MqttSink:
    """A :class:`~cti.push.notifier.Sink` over one long-lived, reconnecting MQTT connection."""

    def __init__(
        self,
        *,
        config: MqttConfig,
        outbox_size: int = 10_000,
        backoff: Backoff | None = None,
        publish_timeout: float = 10.0,
        keepalive: int = 30,
        max_queued_incoming_messages: int = 100,
        window: int = 64,
        rng: random.Random | None = None,
        commands: CommandHandler | None = None,
    ) -> None:
        if outbox_size < 1 or window < 1:
            raise ValueError("outbox_size and window must be at least 1")
        self._config = config
        self._outbox: deque[_Message] = deque()
        self._outbox_size = outbox_size
        self._queued = asyncio.Event()  # set when a message is put in the outbox
        self._backoff = backoff or Backoff(initial=0.5, cap=30.0)
        self._publish_timeout = publish_timeout
        self._keepalive = keepalive
        self._max_incoming = max_queued_incoming_messages
        self._rng = rng or random.Random()
        self._window = window
        self._unacked: dict[int, _Message] = {}  # taken from the outbox, no PUBACK yet; in send order
        self._taken = 0
        self._states: dict[str, _Message] = {}  # each agent's last retained state, sent again on each connect
        self._dirty: set[str] = set()  # agents whose last state is not published yet (one mark queued each)
        self._commands = commands
        self.connected = False
        self.dropped = 0

    def topic(self, agent: str) -> str:
        return agent_topic(self._config.topic_prefix, agent)

    @property
    def pending(self) -> int:
        """Envelopes not yet acknowledged by the broker."""
        return len(self._outbox) + len(self._unacked)

    @property
    def in_flight(self) -> int:
        """Published on the current connection (or the last one), PUBACK not yet seen."""
        return len(self._unacked)

    def publish(self, envelope: Envelope) -> None:
        """Enqueue without waiting; when the outbox is full the oldest message is dropped (the client sees a gap).
        An ``agent.state`` also goes to the agent's retained ``state`` topic."""
        prefix = self._config.topic_prefix
        self._put(_Message(agent_topic(prefix, envelope.agent), False, envelope))  # an unsafe id raises here
        if envelope.type == STATE:
            # The retained topic needs only the last state: one mark per agent waits in the outbox and
            # sends whatever state is the last when its turn comes, so a burst publishes once.
            agent = envelope.agent
            self._states[agent] = _Message(agent_topic(prefix, agent, "state"), True, envelope)
            if agent not in self._dirty:
                self._dirty.add(agent)
                self._put(self._states[agent])

    def _put(self, message: _Message) -> None:
        outbox = self._outbox
        if len(outbox) >= self._outbox_size:
            dropped = outbox.popleft()
            if dropped.retain:  # the agent's next state queues a mark again
                self._dirty.discard(dropped.envelope.agent)
            oldest = dropped.envelope
            self.dropped += 1
            log.warning("mqtt.outbox_full_dropped", agent=oldest.agent, seq=oldest.seq, type=oldest.type,
                        outbox_size=self._outbox_size)
        outbox.append(message)
        self._queued.set()

    def _client(self) -> _SinkClient:
        cfg = self._config
        client = _SinkClient(
            hostname=cfg.host,
            port=cfg.port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password is not None else None,
            identifier=cfg.client_id,
            keepalive=self._keepalive,
            timeout=self._publish_timeout,
            # Commands only; the bound keeps a flood (or a misbehaving broker) from growing memory.
            max_queued_incoming_messages=self._max_incoming,
            max_inflight_messages=self._window,  # paho would queue the rest itself, out of our sight
        )
        client.pending_calls_threshold = self._window + 1  # a full window is normal, not worth a warning
        return client

    async def run(self) -> None:
        """Connect, drain, reconnect — until cancelled.  Clients are made here: aiomqtt needs the running loop."""
        cfg = self._config
        try:
            # Commands run in a group of their own: a dropped connection must not cut one short
            # half-way through its AMI action.
            async with asyncio.TaskGroup() as commands:
                await self._connect_loop(commands)
        except BaseException as exc:  # cancelled at shutdown, or a bug: say so, a silent stop looks like a hang
            log.info("mqtt.stopped", host=cfg.host, port=cfg.port, reason=type(exc).__name__, pending=self.pending)
            raise
        finally:
            self.connected = False

    async def _connect_loop(self, commands: asyncio.TaskGroup) -> None:
        cfg = self._config
        failures = 0
        while True:
            client = self._client()
            try:
                async with client:
                    raise_if_cancelling()
                    self.connected = True
                    failures = 0
                    log.info("mqtt.connected", host=cfg.host, port=cfg.port, client_id=cfg.client_id,
                             pending=self.pending)
                    # The drain runs in the group's body, not as a second child.  On Python 3.11 a child
                    # that fails while the parent already waits in TaskGroup.__aexit__ cancels the parent
                    # and never uncancels it (CPython gh-116720): ``cancelling()`` stayed at 1 for good and
                    # raise_if_cancelling ended this loop, silently, right after the next connect.
                    # With the body busy, the group's cancel lands in the body and __aexit__ uncancels it.
                    if self._commands is not None:
                        await client.subscribe(f"{cfg.topic_prefix}/agents/+/commands", qos=1)
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._watch(client, commands), name="cti.mqtt.watch")
                        await self._drain(client)
            except* aiomqtt.MqttError as errors:
                exc = _first_leaf(errors)
                delay = self._backoff.delay(failures, self._rng)
                event = "mqtt.disconnected" if self.connected else "mqtt.connect_failed"
                self.connected = False
                failures += 1
                log.warning(event, host=cfg.host, port=cfg.port, error=str(exc), retry_in_s=round(delay, 2),
                            pending=self.pending)
                await asyncio.sleep(delay)
            finally:
                self.connected = False

    async def _watch(self, client: aiomqtt.Client, commands: asyncio.TaskGroup) -> None:
        """Hand each command to the handler; raise MqttError as soon as the connection drops.

        aiomqtt 2.x does not wake a publish that waits for its PUBACK when the
        connection drops (it waits for the full timeout); its message iterator is
        the public signal that does, so ending this task cancels the drain at once.
        """
        slots = asyncio.Semaphore(COMMANDS_AT_ONCE)
        prefix = self._config.topic_prefix
        async for message in client.messages:
            agent = command_agent(prefix, message.topic.value)
            if agent is None or self._commands is None or not message.payload:  # b"": a retained one cleared
                continue
            if message.retain:  # a retained command would run again at every server start
                log.warning("mqtt.command_retained_ignored", agent=agent, topic=message.topic.value)
                continue
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            await slots.acquire()
            commands.create_task(self._command(agent, payload, slots), name=f"cti.mqtt.command.{agent}")
        raise aiomqtt.MqttError("message iteration ended")

    async def _command(self, agent: str, payload: bytes, slots: asyncio.Semaphore) -> None:
        assert self._commands is not None
        try:
            await self._commands(agent, payload)
        except Exception:  # one bad command must not stop the others, nor the push
            log.exception("mqtt.command_failed", agent=agent)
        finally:
            slots.release()

    async def _drain(self, client: _SinkClient) -> None:
        """Publish in order with up to ``window`` PUBACKs outstanding; a PUBACK missing for
        ``publish_timeout`` ends the group (and the connection), and everything still unacknowledged
        goes again, in order, on the next connection.

        paho's own ``publish`` is called directly (it only queues the packet): aiomqtt's wraps each
        message in a task, an Event and a ``wait_for``, which cost more than the publish itself.
        The window is refilled right after each read of the socket, as paho does for its own queue:
        the PUBACKs of one read free their places and the messages waiting take them in the same
        callback, so a full window costs no task wake-up per message.
        """
        window = self._window
        free = window  # places left in the window on this connection
        room = asyncio.Event()  # set while free > 0
        room.set()
        resending = True  # the last connection's messages go first: the refill leaves the outbox alone
        sent: dict[int, tuple[int, float]] = {}  # paho mid -> (our key, when sent), this connection only
        loop = asyncio.get_running_loop()

        def on_ack(mid: int) -> None:
            nonlocal free
            entry = sent.pop(mid, None)
            if entry is not None and self._unacked.pop(entry[0], None) is not None:
                free += 1

        def send(key: int, message: _Message) -> None:
            nonlocal free
            free -= 1
            if not free:
                room.clear()
            try:
                info = client.paho.publish(message.topic, message.envelope.body, 1, message.retain)
            except ValueError as exc:  # paho refuses the message itself (e.g. too large): retrying cannot help
                log.error("mqtt.publish_refused", agent=message.envelope.agent, seq=message.envelope.seq,
                          error=str(exc))
                del self._unacked[key]
                free += 1
                room.set()
                return
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
            sent[info.mid] = (key, loop.time())

        def take(message: _Message) -> None:
            if message.retain:
                agent = message.envelope.agent
                if agent not in self._dirty:
                    return  # its state went out already, with a newer one
                self._dirty.discard(agent)
                message = self._states[agent]
            key = self._taken = self._taken + 1
            self._unacked[key] = message  # before any await: a drop from here on sends it again
            send(key, message)

        def refill() -> None:
            outbox = self._outbox
            while free and not resending and outbox:
                take(outbox.popleft())
            if free:
                room.set()

        async def a_place() -> None:
            while not free:
                await room.wait()

        client.on_ack = on_ack
        client.after_read = refill
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._expire(sent, loop), name="cti.mqtt.acks")
                left = list(self._unacked.items())  # by the last connection, oldest first
                # Every agent's last state first (a restarted broker may have lost it); the states left
                # unacknowledged and the marks queued are then done with. A mark sends the agent's
                # state at its turn only if it changed since: never an older one after a newer.
                self._dirty.clear()
                for state in list(self._states.values()):
                    await a_place()
                    key = self._taken = self._taken + 1
                    self._unacked[key] = state
                    send(key, state)
                for key, message in left:
                    if message.retain:
                        del self._unacked[key]
                        continue
                    await a_place()
                    send(key, message)
                resending = False
                while True:  # the refill after each read keeps a busy window full; this wakes for the rest
                    refill()
                    raise_if_cancelling()
                    if free:  # the outbox is empty: wait for the next message
                        self._queued.clear()
                        await self._queued.wait()
                    else:
                        await room.wait()
        finally:
            client.on_ack = None
            client.after_read = None

    async def _expire(self, sent: dict[int, tuple[int, float]], loop: asyncio.AbstractEventLoop) -> None:
        """A PUBACK that never comes means a stuck broker or link: drop the connection and resend."""
        while True:
            await asyncio.sleep(self._publish_timeout / 4)
            if sent:
                oldest = next(iter(sent.values()))[1]  # dicts keep send order
                if loop.time() - oldest > self._publish_timeout:
                    raise aiomqtt.MqttError(f"no PUBACK within {self._publish_timeout}s")


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error itself, from inside the task groups it went through (the drain's nests one more)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class _LoopClient(aiomqtt.Client):
    """aiomqtt 2.5 adds paho's socket writer with ``call_soon_threadsafe`` but removes it at once.

    When paho asks for the writer and drops it again before the deferred ``add_writer`` runs, the
    writer stays registered with nothing to write and fires on every loop iteration. On the loop's
    own thread (every call after connect) add it at once, so the two always happen in order.
    """

    on_ack: Callable[[int], None] | None = None
    after_read: Callable[[], None] | None = None  # _SinkClient: called once a read's packets are handled

    @property
    def paho(self) -> mqtt.Client:
        return self._client

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        on_ack = self.on_ack
        if on_ack is not None:
            on_ack(mid)
        else:
            super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if not on_loop:
            super()._on_socket_register_write(client, userdata, sock)
            return

        def callback() -> None:
            try:
                self._write(client)
            except Exception as exc:
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        self._loop.add_writer(sock.fileno(), callback)

    def _write(self, client: mqtt.Client) -> None:
        client.loop_write()


class _SinkClient(_LoopClient):
    """The sink's client: paho's socket calls made per batch, not per packet.

    paho sends each queued packet with a ``send`` of its own and reads each incoming packet with
    three ``recv`` calls (type byte, length, body). On this VM a system call costs tens of
    microseconds, more than building the packet: the packets queued since the last write go in
    one ``send``, and reads fill a buffer 64 KiB at a time that paho's small reads are served from.
    An MQTT 3.1.1 PUBACK (a message id, nothing else) skips the two reason-code and two properties
    objects paho builds for it, which nobody reads.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        paho = self._client
        handle = paho._handle_pubackcomp

        def pubackcomp(cmd: Any) -> MQTTErrorCode:
            packet = paho._in_packet["packet"]
            if cmd != "PUBACK" or paho._protocol == mqtt.MQTTv5 or len(packet) != 2:
                return handle(cmd)
            mid = (packet[0] << 8) | packet[1]
            with paho._out_message_mutex:
                if mid in paho._out_messages:
                    return paho._do_on_publish(mid, _PUBACK_OK, _NO_PROPERTIES)
            return MQTTErrorCode.MQTT_ERR_SUCCESS

        paho._handle_pubackcomp = pubackcomp  # type: ignore[method-assign]

    def _write(self, client: mqtt.Client) -> None:
        _coalesce(client._out_packet)
        client.loop_write()

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # aiomqtt's own version, with reads served from a buffer (paho calls this from the executor
        # thread that connects, before the first read).
        reader = _BufferedRecv(client._sock_recv)
        client._sock_recv = reader.recv  # type: ignore[method-assign,assignment]
        loop = self._loop

        def callback() -> None:
            try:
                while True:
                    client.loop_read()
                    # paho reads at most one packet per message in flight per call: what it left in
                    # the buffer is read now, as the socket will not wake the loop for it again
                    if client._sock is not None and (reader.buffered or _ssl_pending(client._sock)):
                        continue
                    break
                after_read = self.after_read
                if after_read is not None:
                    after_read()
            except Exception as exc:
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def create_misc_task() -> None:
            self._misc_task = loop.create_task(self._misc_loop())

        loop.call_soon_threadsafe(loop.add_reader, sock.fileno(), callback)
        loop.call_soon_threadsafe(create_misc_task)


_PUBACK_OK: Final = ReasonCode(PacketTypes.PUBACK)  # read by nobody: shared by every PUBACK
_NO_PROPERTIES: Final = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


def _coalesce(out: Any) -> None:
    """paho's queued packets (``_out_packet``) joined into one, when none of them has work to do once
    written: a QoS 0 PUBLISH calls ``on_publish`` and a DISCONNECT closes the socket; a QoS 1 PUBLISH
    or an ack is done with once its bytes are sent."""
    if len(out) < 2:
        return
    parts = []
    for packet in out:
        command = packet["command"] & 0xF0
        if command == mqtt.DISCONNECT or (command == mqtt.PUBLISH and packet["qos"] == 0):
            return
        parts.append(packet["packet"][packet["pos"]:])
    data = b"".join(parts)
    out.clear()
    out.append({"command": mqtt.PUBLISH, "mid": 0, "qos": 1, "pos": 0, "to_process": len(data),
                "packet": data, "info": None})


def _ssl_pending(sock: Any) -> bool:
    pending = getattr(sock, "pending", None)
    return pending is not None and pending() > 0


class _BufferedRecv:
    """``recv(n)`` served from a buffer filled by one large read of the socket when it runs dry."""

    __slots__ = ("_buf", "_recv")

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv  # paho's own: it turns TLS's want-read into BlockingIOError
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def recv(self, size: int) -> bytes:
        buf = self._buf
        if not buf:
            data = self._recv(65536)
            if len(data) <= size:  # b"" (the broker closed) included
                return data
            buf += data
        chunk = bytes(buf[:size])
        del buf[:size]
        return chunk
