"""The call model's write-behind store on a real Redis: what a stop leaves for the next start."""

from __future__ import annotations

import asyncio
import socket

import pytest
import redis.asyncio as aioredis
import structlog

from cti.ami.codec import Decoder
from cti.model.reducer import CallModel
from cti.model_store import ModelStore
from tests.traces import trace_bytes

HOUR = 3600.0  # the store's own round never comes during a test: only the stop writes


def mid_call(redis: aioredis.Redis) -> tuple[CallModel, ModelStore]:
    """A model fed the basic capture up to the first moment a call is live, its store told so."""
    model = CallModel()
    store = ModelStore(redis, model, interval=HOUR)
    for msg in Decoder().feed(trace_bytes("basic")):
        for event in model.apply(msg):
            store.on_domain_event(event)
        if model.calls:
            return model, store
    raise AssertionError("the basic capture has no call")


async def stopped(store: ModelStore) -> None:
    task = asyncio.create_task(store.run(), name="test.model_store")
    await asyncio.sleep(0)  # into its first wait
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_stop_writes_the_calls_changed_since_the_last_round(redis_client: aioredis.Redis) -> None:
    model, store = mid_call(redis_client)
    await stopped(store)
    saved = await redis_client.hkeys("cti:model:calls")
    assert {k.decode() for k in saved} == set(model.calls)
    assert [c.linkedid for c in await store.load()] == list(model.calls)


async def test_a_stop_with_redis_away_says_what_it_lost_and_still_ends() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = aioredis.from_url(f"redis://127.0.0.1:{port}", socket_connect_timeout=1)
    model, store = mid_call(client)
    try:
        with structlog.testing.capture_logs() as logs:
            await stopped(store)
    finally:
        await client.aclose()
    lost = [e for e in logs if e["event"] == "model_store.lost_at_stop"]
    assert lost and lost[0]["calls"] == len(model.calls)
