"""The envelope format, sequence numbers in Redis, and the notifier's one publish path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from cti.devservices import free_port, redis_server
from cti.push.envelope import Envelope, EnvelopeError, MemorySequencer, RedisSequencer
from cti.push.notifier import AgentNotifier

pytestmark = pytest.mark.network


def test_round_trip_and_wire_shape() -> None:
    env = Envelope(type="call.offered", agent="alice", seq=7, payload={"caller": "13800000001", "name": "王磊"})
    text = env.to_json()
    assert " " not in text.replace("王磊", "")  # compact
    assert "王磊" in text  # ensure_ascii=False
    wire = json.loads(text)
    assert list(wire) == ["v", "id", "seq", "ts", "type", "agent", "payload"]
    assert wire["v"] == 1 and wire["seq"] == 7 and re.fullmatch(r"[0-9a-f]{32}", wire["id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", wire["ts"])
    assert Envelope.from_json(text) == env


@pytest.mark.parametrize("text", ["[]", "nope", '{"v": 2}', '{"v": 1, "id": "x", "seq": "1"}'])
def test_from_json_rejects(text: str) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_json(text)


async def test_redis_sequencer_counts_per_agent_and_survives_a_new_instance(redis_client: aioredis.Redis) -> None:
    seq = RedisSequencer(redis_client, key_prefix="t:", floor=lambda: 1000)
    assert [await seq.next("alice") for _ in range(3)] == [1000, 1001, 1002]
    assert await seq.next_many(["bob", "alice", "bob"]) == [1000, 1003, 1001]
    assert seq.reservations == 2, "one round trip per batch that needed a block, none within a block"
    assert await redis_client.get("t:agent:alice:seq") == b"1063", "a block of 64 reserved"
    again = RedisSequencer(redis_client, key_prefix="t:", floor=lambda: 5000)  # a restarted (or second) server
    assert await again.next("alice") == 1064, "the counter goes on past the first block: the floor is for a missing key"
    assert await seq.next("alice") == 1004, "the first server still owns its block"


async def test_a_batch_longer_than_a_block_is_numbered_in_order(redis_client: aioredis.Redis) -> None:
    seq = RedisSequencer(redis_client, key_prefix="t:", floor=lambda: 1, block=4)
    assert await seq.next_many(["alice"] * 3) == [1, 2, 3]
    assert await seq.next_many(["alice"] * 10 + ["bob"]) == [*range(4, 14), 1]
    assert await seq.next_many(["alice"]) == [14]
    assert int(await redis_client.get("t:agent:alice:seq")) >= 14


async def test_sequence_never_goes_back_when_redis_loses_its_data(redis_client: aioredis.Redis) -> None:
    clock = [1_000_000]
    seq = RedisSequencer(redis_client, key_prefix="t:", floor=lambda: clock[0])
    before = [await seq.next("alice") for _ in range(50)]
    await redis_client.flushdb()  # a Redis without persistence restarted
    await redis_client.script_flush()
    clock[0] += 5_000  # restarted five seconds later
    after = await seq.next_many(["alice", "alice"])
    assert after[0] > before[-1] and after[1] == after[0] + 1


class _Recorder:
    def __init__(self) -> None:
        self.got: list[Envelope] = []

    def publish(self, envelope: Envelope) -> None:
        self.got.append(envelope)


class _Broken:
    def publish(self, envelope: Envelope) -> None:
        raise ConnectionError("down")


async def test_notifier_gives_every_sink_the_same_envelope_despite_a_broken_one() -> None:
    first, second = _Recorder(), _Recorder()
    notifier = AgentNotifier(sequencer=MemorySequencer(), sinks=[first, _Broken(), second])
    env1 = await notifier.notify("alice", "call.offered", {"caller": "1"})
    env2 = await notifier.notify("alice", "call.answered", {"caller": "1"})
    assert (env1.seq, env2.seq) == (1, 2)
    assert first.got == second.got == [env1, env2]


async def test_numbers_go_on_while_redis_is_away_and_redis_catches_up(tmp_path: Path) -> None:
    clock = [2_000_000]
    port = free_port()
    client = aioredis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=1, socket_connect_timeout=1)
    seq = RedisSequencer(client, key_prefix="t:", floor=lambda: clock[0], wait=0.5, block=4)
    try:
        with redis_server(tmp_path, port):
            assert await seq.next_many(["alice", "alice"]) == [2_000_000, 2_000_001]  # block ..003
        clock[0] += 3  # redis-server is gone: alice's block goes on, bob is numbered here from the clock
        assert await seq.next_many(["alice", "bob"]) == [2_000_002, 2_000_003] and seq.local == 1
        assert await seq.next_many(["alice", "alice"]) == [2_000_003, 2_000_004], "block used up: the clock"
        assert seq.local == 2
        with redis_server(tmp_path, port):  # back, and empty: it did not persist
            back = await seq.next_many(["alice", "bob"])
            assert back == [2_000_005, 2_000_004] and seq.local == 0, "Redis's counters caught up"
            assert int(await client.get("t:agent:alice:seq")) == 2_000_008  # 2_000_005 + a block of 4
    finally:
        await client.aclose()
