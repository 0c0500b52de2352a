"""MqttSink against a real mosquitto; outages are made with a TCP proxy we can cut and restore."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import getpass
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
import structlog.testing
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt import _packet as mqtt_packet

from cti.ami.backoff import Backoff
from cti.config import MqttConfig
from cti.devservices import _binary, _process, free_port
from cti.push.envelope import Envelope
from cti.push.mqtt import MqttSink, _BufferedRecv, _coalesce, agent_topic

pytestmark = pytest.mark.network

TOPIC = "cti/v1/agents/alice/events"
FAST = Backoff(initial=0.05, cap=0.2)


class Proxy:
    """A cuttable TCP hop between the sink and the broker: a down broker without restarting mosquitto."""

    def __init__(self, *, listen_port: int, target_port: int) -> None:
        self.listen_port, self.target_port = listen_port, target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._group = asyncio.TaskGroup()
        self.replies = asyncio.Event()  # cleared: the broker's packets (PUBACKs) are held back
        self.replies.set()

    async def __aenter__(self) -> Proxy:
        await self._group.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        await self._group.__aexit__(None, None, None)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)

    async def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}
        self._group.create_task(self._pipe(reader, up_writer))
        self._group.create_task(self._pipe(up_reader, writer, self.replies))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    gate: asyncio.Event | None = None) -> None:
        try:
            while data := await reader.read(65536):
                if gate is not None:
                    await gate.wait()
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


@contextlib.asynccontextmanager
async def subscriber(port: int) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", port, identifier=None, max_queued_incoming_messages=1000) as client:
        await client.subscribe(TOPIC, qos=1)
        yield client


async def receive(client: aiomqtt.Client, n: int, timeout: float = 15) -> list[Envelope]:
    """The first n distinct envelopes (QoS 1 may repeat one; clients dedupe by id)."""
    got: dict[str, Envelope] = {}
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            assert message.qos == 1 and not message.retain
            assert isinstance(message.payload, bytes)
            env = Envelope.from_json(message.payload)
            got.setdefault(env.id, env)
            if len(got) == n:
                break
    return list(got.values())


@contextlib.asynccontextmanager
async def running(sink: MqttSink) -> AsyncIterator[MqttSink]:
    async with asyncio.TaskGroup() as group:
        task = group.create_task(sink.run(), name="test.mqtt")
        try:
            yield sink
        finally:
            task.cancel()


def envelopes(start: int, stop: int) -> list[Envelope]:
    return [Envelope(type="call.offered", agent="alice", seq=i, payload={"n": i}) for i in range(start, stop)]


def sink_for(port: int, **kw: object) -> MqttSink:
    config = MqttConfig(host="127.0.0.1", port=port, client_id=f"cti-test-{port}")
    return MqttSink(config=config, backoff=FAST, **kw)  # type: ignore[arg-type]


async def test_delivers_qos1_in_order(mqtt_port: int) -> None:
    async with subscriber(mqtt_port) as sub, running(sink_for(mqtt_port)) as sink:
        sent = envelopes(1, 51)
        for env in sent:
            sink.publish(env)
        assert await receive(sub, len(sent)) == sent


async def test_queued_while_broker_unreachable_then_delivered(mqtt_port: int) -> None:
    port = free_port()  # nothing listens here yet: the sink's connects are refused
    async with Proxy(listen_port=port, target_port=mqtt_port) as proxy, subscriber(mqtt_port) as sub, \
            running(sink_for(port)) as sink:
        sent = envelopes(1, 11)
        for env in sent:
            sink.publish(env)  # returns at once although the broker is unreachable
        assert sink.pending == 10 and not sink.connected
        await proxy.start()
        assert await receive(sub, 10) == sent


async def test_full_outbox_drops_the_oldest() -> None:
    sink = sink_for(1, outbox_size=3)  # never run: nothing is sent
    for env in envelopes(1, 6):
        sink.publish(env)
    assert sink.pending == 3 and sink.dropped == 2


@pytest.mark.parametrize("agent", ["a/b", "+", "#", "a\0b", ""])
async def test_unsafe_agent_ids_are_refused(agent: str) -> None:
    with pytest.raises(ValueError, match="safe MQTT topic"):
        agent_topic("cti/v1", agent)
    with pytest.raises(ValueError):
        sink_for(1).publish(Envelope(type="x", agent=agent, seq=1))


# --- a real broker that is stopped and started again on the same port -------------------------

class Broker:
    """A private mosquitto on a fixed 127.0.0.1 port that a test can stop and start again.

    Persistence is on so a subscriber with a persistent session (``clean_session=False``)
    keeps its QoS 1 subscription across the restart: what the sink delivers before the
    subscriber is back is queued for it, so the test does not race the sink's reconnect.
    """

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self._conf = workdir / "mosquitto.conf"
        # ``user``: started as root, mosquitto would switch to user "mosquitto" and could not save its db here
        self._conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
                              f"persistence true\npersistence_location {workdir}/\n")
        self._workdir = workdir
        self._stack: contextlib.ExitStack | None = None
        self._starts = 0

    def start(self) -> None:
        assert self._stack is None
        stack = contextlib.ExitStack()
        stack.enter_context(_process([_binary("mosquitto", "mosquitto"), "-c", str(self._conf)], self.port,
                                     f"mosquitto-{self._starts}", self._workdir))
        self._starts += 1
        self._stack = stack

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()  # SIGTERM: mosquitto saves its sessions and exits
            self._stack = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@contextlib.asynccontextmanager
async def durable_subscriber(port: int, identifier: str) -> AsyncIterator[aiomqtt.Client]:
    """A subscriber whose session (and so its QoS 1 queue) outlives its connection and a broker restart."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=identifier, clean_session=False,
                              max_queued_incoming_messages=1000) as client:
        await client.subscribe(TOPIC, qos=1)
        yield client


async def receive_ids(client: aiomqtt.Client, want: set[str], timeout: float = 15) -> dict[str, Envelope]:
    """Everything received until every id in ``want`` was seen (extras: QoS 1 repeats of earlier ones)."""
    got: dict[str, Envelope] = {}
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            env = Envelope.from_json(message.payload)
            got.setdefault(env.id, env)
            if want <= got.keys():
                break
    return got


async def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 -- polls sink state, which has no event to wait on
            await asyncio.sleep(0.01)


async def test_already_connected_sink_survives_broker_restart(broker: Broker) -> None:
    ident = f"cti-test-sub-{broker.port}"
    async with running(sink_for(broker.port)) as sink:
        async with durable_subscriber(broker.port, ident) as sub:
            first = envelopes(1, 11)
            for env in first:
                sink.publish(env)
            await receive_ids(sub, {e.id for e in first})
            assert sink.connected
            # one more goes out just as the broker dies: it may be in flight
            in_flight = envelopes(11, 12)[0]
            sink.publish(in_flight)
            broker.stop()
        await wait_until(lambda: not sink.connected)
        down = envelopes(12, 32)
        for env in down:
            sink.publish(env)
        broker.start()  # same port, same persisted sessions
        await wait_until(lambda: sink.connected)
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier=ident, clean_session=False,
                                  max_queued_incoming_messages=1000) as sub:
            got = await receive_ids(sub, {e.id for e in [in_flight, *down]})
        await wait_until(lambda: sink.pending == 0)
    assert [e.seq for e in got.values() if e.seq >= 12] == [e.seq for e in down]  # in order


async def test_already_connected_sink_survives_a_cut_link(mqtt_port: int) -> None:
    port = free_port()
    async with Proxy(listen_port=port, target_port=mqtt_port) as proxy, subscriber(mqtt_port) as sub, \
            running(sink_for(port)) as sink:
        await proxy.start()
        first = envelopes(1, 11)
        for env in first:
            sink.publish(env)
        await receive_ids(sub, {e.id for e in first})
        in_flight = envelopes(11, 12)[0]
        sink.publish(in_flight)
        await proxy.stop()
        await wait_until(lambda: not sink.connected)
        down = envelopes(12, 32)
        for env in down:
            sink.publish(env)
        await asyncio.sleep(0.3)  # let a few reconnects be refused (not an assertion: the bug lived here)
        await proxy.start()
        got = await receive_ids(sub, {e.id for e in [in_flight, *down]})
        await wait_until(lambda: sink.pending == 0)
    assert [e.seq for e in got.values() if e.seq >= 12] == [e.seq for e in down]


async def test_many_in_flight_when_the_link_is_cut_all_go_again_in_order(mqtt_port: int) -> None:
    """A window of publishes waits for PUBACKs at once; a cut sends every unacknowledged one again."""
    port = free_port()
    async with Proxy(listen_port=port, target_port=mqtt_port) as proxy, subscriber(mqtt_port) as sub, \
            running(sink_for(port)) as sink:
        await proxy.start()
        await wait_until(lambda: sink.connected)
        proxy.replies.clear()  # the broker gets every PUBLISH, the sink sees no PUBACK
        sent = envelopes(1, 41)
        for env in sent:
            sink.publish(env)
        await wait_until(lambda: sink.in_flight == 40)
        first = await receive(sub, 40)  # the broker had them all: they were on the wire, in order
        assert [e.seq for e in first] == list(range(1, 41))
        await proxy.stop()
        proxy.replies.set()
        await wait_until(lambda: not sink.connected)
        assert sink.pending == 40, "nothing acknowledged: nothing forgotten"
        await proxy.start()
        again = await receive(sub, 1)  # the resend begins with the oldest
        await wait_until(lambda: sink.pending == 0)
    assert again[0].id == sent[0].id


async def test_a_puback_that_never_comes_drops_the_link_and_sends_again(mqtt_port: int) -> None:
    """A broker that takes PUBLISHes but never acknowledges them: after publish_timeout the sink
    reconnects and sends every unacknowledged envelope again, oldest first."""
    port = free_port()
    sink = MqttSink(config=MqttConfig(host="127.0.0.1", port=port, client_id="cti-test-noack"), backoff=FAST,
                    publish_timeout=0.4)
    async with Proxy(listen_port=port, target_port=mqtt_port) as proxy, subscriber(mqtt_port) as sub, \
            running(sink):
        await proxy.start()
        await wait_until(lambda: sink.connected)
        with structlog.testing.capture_logs() as logs:
            proxy.replies.clear()
            sent = envelopes(1, 4)
            for env in sent:
                sink.publish(env)
            await receive(sub, 3)
            await wait_until(lambda: any(e["event"] == "mqtt.disconnected" for e in logs))
            assert sink.pending == 3
            proxy.replies.set()
            await wait_until(lambda: sink.pending == 0)
    assert "no PUBACK" in next(e["error"] for e in logs if e["event"] == "mqtt.disconnected")


async def test_cancel_during_backoff_sleep_exits_promptly() -> None:
    port = free_port()  # refused: the sink fails to connect, then sleeps a minute
    sink = MqttSink(config=MqttConfig(host="127.0.0.1", port=port, client_id="cti-test-backoff"),
                    backoff=Backoff(initial=60, cap=60))
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(sink.run())
        await wait_until(lambda: any(e["event"] == "mqtt.connect_failed" for e in logs))
        task.cancel()
        async with asyncio.timeout(5):
            with pytest.raises(asyncio.CancelledError):
                await task
    assert logs[-1]["event"] == "mqtt.stopped" and not sink.connected


async def test_cancel_mid_connect_exits_promptly() -> None:
    """A peer that accepts TCP but never answers CONNECT: the sink waits for a CONNACK (publish_timeout)."""
    got_connect = asyncio.Event()
    peers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)
        if await reader.read(1):
            got_connect.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        sink = MqttSink(config=MqttConfig(host="127.0.0.1", port=port, client_id="cti-test-connect"),
                        backoff=FAST, publish_timeout=60)
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(sink.run())
            async with asyncio.timeout(5):
                await got_connect.wait()
            task.cancel()
            async with asyncio.timeout(5):
                with pytest.raises(asyncio.CancelledError):
                    await task
        assert [e["event"] for e in logs] == ["mqtt.stopped"] and not sink.connected
        for writer in peers:
            writer.transport.abort()


# --- the retained state topic and the commands topic ----------------------------------------------

def _state(seq: int, state: str) -> Envelope:
    return Envelope(type="agent.state", agent="alice", seq=seq, payload={"state": state})


async def retained(port: int, topic: str, timeout: float = 10) -> Envelope:
    """What a client subscribing now is told at once (a subscription made just as the server publishes
    gets that publish live, not retained: then subscribe again)."""
    async with asyncio.timeout(timeout):
        while True:
            async with aiomqtt.Client("127.0.0.1", port, identifier=f"test-retained-{port}") as client:
                await client.subscribe(topic, qos=1)
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    if message.retain:
                        return Envelope.from_json(message.payload)
                    break


async def test_only_the_last_state_is_retained_when_several_waited_for_the_broker(mqtt_port: int) -> None:
    port = free_port()
    config = MqttConfig(host="127.0.0.1", port=port, client_id=f"cti-test-states-{port}", topic_prefix=f"t{port}")
    topic = f"t{port}/agents/alice/state"
    async with Proxy(listen_port=port, target_port=mqtt_port) as proxy, \
            running(MqttSink(config=config, backoff=FAST)) as sink, \
            aiomqtt.Client("127.0.0.1", mqtt_port, identifier=f"test-live-{port}") as live:
        await live.subscribe(topic, qos=1)
        for envelope in (_state(1, "ready"), *envelopes(2, 4), _state(4, "offered"), _state(5, "on_call")):
            sink.publish(envelope)
        await proxy.start()
        await wait_until(lambda: sink.pending == 0)
        assert (await retained(mqtt_port, topic)).seq == 5
        sink.publish(_state(6, "wrap_up"))  # a marker: everything before it has arrived when it does
        seen: list[int] = []
        async with asyncio.timeout(10):
            async for message in live.messages:
                assert isinstance(message.payload, bytes)
                seen.append(Envelope.from_json(message.payload).seq)
                if seen[-1] == 6:
                    break
        assert seen == [5, 6], "the three states that waited went out once, as the last of them"


async def test_a_restarted_broker_that_lost_its_retained_states_gets_them_again(broker: Broker,
                                                                                tmp_path: Path) -> None:
    async with running(sink_for(broker.port)) as sink:
        sink.publish(_state(7, "not_ready"))
        await wait_until(lambda: sink.pending == 0 and sink.connected)
        broker.stop()
        for db in tmp_path.glob("*.db"):  # noqa: ASYNC240 - a few files, while the broker is down
            db.unlink()  # a broker without persistence comes back with nothing retained
        broker.start()
        await wait_until(lambda: sink.connected)
        await wait_until(lambda: sink.pending == 0)
        assert (await retained(broker.port, "cti/v1/agents/alice/state")).seq == 7


async def test_commands_reach_the_handler_and_a_stored_retained_one_does_not(mqtt_port: int) -> None:
    """A retained command would run again at every server start: the one the broker hands a new
    subscription is ignored (a live publish reaches subscribers as a plain message, MQTT 3.1.1 3.3.1.3)."""
    got: list[tuple[str, bytes]] = []

    async def handle(agent: str, payload: bytes) -> None:
        got.append((agent, payload))

    prefix = f"tcmd{mqtt_port}"
    config = MqttConfig(host="127.0.0.1", port=mqtt_port, client_id="cti-test-commands", topic_prefix=prefix)
    async with aiomqtt.Client("127.0.0.1", mqtt_port, identifier="test-commander") as client:
        await client.publish(f"{prefix}/agents/bob/commands", b'{"command":"old"}', qos=1, retain=True)
        try:
            with structlog.testing.capture_logs() as logs:
                async with running(MqttSink(config=config, backoff=FAST, commands=handle)) as sink:
                    await wait_until(lambda: sink.connected)
                    await wait_until(lambda: any(e["event"] == "mqtt.command_retained_ignored" for e in logs))
                    await client.publish(f"{prefix}/agents/alice/commands", b'{"command":"ready"}', qos=1)
                    await client.publish(f"{prefix}/agents/alice/events", b"not a command", qos=1)
                    await client.publish(f"{prefix}/agents/alice/commands", b"", qos=1)  # a retained one cleared
                    await client.publish(f"{prefix}/agents/alice/commands", b'{"command":"logout"}', qos=1)
                    await wait_until(lambda: len(got) == 2)
        finally:
            await client.publish(f"{prefix}/agents/bob/commands", b"", qos=1, retain=True)
    assert got == [("alice", b'{"command":"ready"}'), ("alice", b'{"command":"logout"}')]
    assert [e["agent"] for e in logs if e["event"] == "mqtt.command_retained_ignored"] == ["bob"]


# --- the sink's client: paho's socket calls per batch ---------------------------------------------


@given(stream=st.binary(min_size=0, max_size=300), chunks=st.lists(st.integers(1, 70), min_size=1, max_size=20),
       sizes=st.lists(st.integers(1, 9), min_size=1, max_size=40))
def test_buffered_recv_returns_the_stream_unchanged_whatever_the_read_sizes(
        stream: bytes, chunks: list[int], sizes: list[int]) -> None:
    """paho reads 1 byte, then the length, then the body; the socket hands over what it has. The
    bytes paho sees are the socket's, in order, and a dry socket's BlockingIOError reaches paho."""
    pieces, at = [], 0
    for n in chunks * 50:
        if at >= len(stream):
            break
        pieces.append(stream[at:at + n])
        at += n
    socket_reads = iter(pieces)

    def sock_recv(size: int) -> bytes:
        assert size == 65536
        try:
            return next(socket_reads)
        except StopIteration:
            raise BlockingIOError from None

    reader = _BufferedRecv(sock_recv)
    got = bytearray()
    for size in sizes * 100:
        try:
            chunk = reader.recv(size)
        except BlockingIOError:
            assert reader.buffered == 0
            break
        assert 0 < len(chunk) <= size
        got += chunk
    else:
        got += reader.recv(10_000) if reader.buffered else b""
    assert bytes(got) == stream[:len(got)]
    assert len(got) == len(stream) or reader.buffered == 0


def _packet(command: int, qos: int, data: bytes, pos: int = 0) -> dict[str, object]:
    return {"command": command, "mid": 1, "qos": qos, "pos": pos, "to_process": len(data) - pos, "packet": data,
            "info": None}


def test_coalesce_joins_what_is_left_of_each_queued_packet() -> None:
    out = collections.deque([_packet(mqtt.PUBLISH | 2, 1, b"AAAA", pos=3), _packet(mqtt.PUBACK, 0, b"BB"),
                             _packet(mqtt.PUBLISH | 2, 1, b"CCC")])
    _coalesce(out)
    assert len(out) == 1 and out[0]["packet"] == b"ABBCCC" and out[0]["to_process"] == 6
    assert out[0]["pos"] == 0 and out[0]["qos"] == 1


@pytest.mark.parametrize("special", [(mqtt.PUBLISH, 0), (mqtt.DISCONNECT, 0)])
def test_coalesce_leaves_packets_that_have_work_to_do_once_written(special: tuple[int, int]) -> None:
    """A QoS 0 PUBLISH calls on_publish when written, a DISCONNECT closes the socket: paho must see them."""
    out = collections.deque([_packet(mqtt.PUBLISH | 2, 1, b"AA"), _packet(special[0], special[1], b"D")])
    before = list(out)
    _coalesce(out)
    assert list(out) == before


class _Watched(MqttSink):
    """The sink with its paho client's socket calls counted (the counters wrap paho's own methods)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sends = self.reads = 0

    def _client(self) -> Any:
        client = super()._client()
        paho = client.paho
        send, recv = paho._sock_send, paho._sock_recv

        def counted_send(buf: Any) -> int:
            self.sends += 1
            return send(buf)

        def counted_recv(size: int) -> bytes:
            self.reads += 1
            return recv(size)

        paho._sock_send, paho._sock_recv = counted_send, counted_recv  # type: ignore[method-assign]
        return client


async def test_a_burst_goes_in_few_sends_and_its_pubacks_in_few_reads(mqtt_port: int,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """300 envelopes published at once: delivered in order, every PUBACK counted (nothing pending, paho's
    in-flight count back to 0), in far fewer system calls than one send and three reads per message,
    and no PUBACK decoded through paho's reason-code and properties objects."""
    decoded = []
    decode = mqtt_packet.decode_puback
    monkeypatch.setattr(mqtt_packet, "decode_puback", lambda *a: decoded.append(a) or decode(*a))
    config = MqttConfig(host="127.0.0.1", port=mqtt_port, client_id=f"cti-test-burst-{mqtt_port}")
    sink = _Watched(config=config, backoff=FAST)
    async with subscriber(mqtt_port) as sub, running(sink):
        await wait_until(lambda: sink.connected)
        await asyncio.sleep(0.2)  # CONNACK and SUBACK read: count the burst's calls only
        sends, reads = sink.sends, sink.reads
        sent = envelopes(1, 301)
        for env in sent:
            sink.publish(env)
        assert await receive(sub, len(sent)) == sent
        await wait_until(lambda: sink.pending == 0)
        assert sink.sends - sends < 100, f"{sink.sends - sends} sends for 300 publishes"
        assert sink.reads - reads < 100, f"{sink.reads - reads} reads for 300 PUBACKs"
    assert decoded == []
