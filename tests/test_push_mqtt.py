"""MqttSink against a real mosquitto; outages are made with a TCP proxy we can cut and restore."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from cti.ami.backoff import Backoff
from cti.config import MqttConfig
from cti.devservices import free_port
from cti.push.envelope import Envelope
from cti.push.mqtt import MqttSink, agent_topic

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
        self._group.create_task(self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
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
            await sink.publish(env)
        assert await receive(sub, len(sent)) == sent


async def test_queued_while_broker_unreachable_then_delivered(mqtt_port: int) -> None:
    port = free_port()  # nothing listens here yet: the sink's connects are refused
    async with Proxy(listen_port=port, target_port=mqtt_port) as proxy, subscriber(mqtt_port) as sub, \
            running(sink_for(port)) as sink:
        sent = envelopes(1, 11)
        for env in sent:
            await sink.publish(env)  # returns at once although the broker is unreachable
        assert sink.pending == 10 and not sink.connected
        await proxy.start()
        assert await receive(sub, 10) == sent


async def test_full_outbox_drops_the_oldest() -> None:
    sink = sink_for(1, outbox_size=3)  # never run: nothing is sent
    for env in envelopes(1, 6):
        await sink.publish(env)
    assert sink.pending == 3 and sink.dropped == 2


@pytest.mark.parametrize("agent", ["a/b", "+", "#", "a\0b", ""])
async def test_unsafe_agent_ids_are_refused(agent: str) -> None:
    with pytest.raises(ValueError, match="safe MQTT topic"):
        agent_topic("cti/v1", agent)
    with pytest.raises(ValueError):
        await sink_for(1).publish(Envelope(type="x", agent=agent, seq=1))
