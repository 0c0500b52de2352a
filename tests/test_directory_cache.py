"""The customer cache in front of the Redis directory: answers without I/O, forgets when the directory changes."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from cti.directory.cache import CachedDirectory
from cti.directory.models import Customer
from cti.directory.store import RedisDirectory

pytestmark = pytest.mark.network


def _c(id: str, number: str, name: str | None = None) -> Customer:
    return Customer(id=id, numbers=[number], name=name or id.upper())


async def test_records_and_their_absence_are_kept_until_an_import(redis_client: aioredis.Redis) -> None:
    store = RedisDirectory(redis_client, key_prefix="c1:")
    await store.replace_all([_c("a", "13800000001")])
    cache = CachedDirectory(store)
    assert cache.peek("13800000001") == (False, None)
    record = await cache.lookup("13800000001")
    assert record is not None and record["id"] == "a" and record["name"] == "A"
    assert await cache.lookup("13900000009") is None  # not a customer: that answer is kept too
    await redis_client.flushdb()  # Redis no longer asked: both answers come from the cache
    assert cache.peek("13800000001") == (True, record)
    assert cache.peek("13900000009") == (True, None)
    assert (cache.hits, cache.misses) == (2, 2)
    cache.clear()  # what the server does after importing through itself
    assert cache.peek("13800000001") == (False, None)


async def test_an_import_by_another_server_is_noticed_through_the_version(redis_client: aioredis.Redis) -> None:
    ours, theirs = RedisDirectory(redis_client, key_prefix="c2:"), RedisDirectory(redis_client, key_prefix="c2:")
    await ours.replace_all([_c("a", "13800000001", "Old Name")])
    cache = CachedDirectory(ours)
    cache.observe_version((await ours.status())[1])
    assert (await cache.lookup("13800000001"))["name"] == "Old Name"  # type: ignore[index]
    cache.observe_version((await ours.status())[1])  # unchanged: kept
    assert cache.peek("13800000001")[0]
    await theirs.replace_all([_c("a", "13800000001", "New Name")])
    count, version = await ours.status()
    assert count == 1 and version is not None
    cache.observe_version(version)
    assert cache.peek("13800000001") == (False, None)
    assert (await cache.lookup("13800000001"))["name"] == "New Name"  # type: ignore[index]


async def test_a_lookup_that_straddles_a_clear_does_not_fill_the_cache(redis_client: aioredis.Redis) -> None:
    store = RedisDirectory(redis_client, key_prefix="c3:")
    await store.replace_all([_c("a", "13800000001", "Old Name")])
    cache = CachedDirectory(store)
    started, go_on = asyncio.Event(), asyncio.Event()
    real = store.lookup

    async def slow(number: str | None) -> Customer | None:
        found = await real(number)
        started.set()
        await go_on.wait()
        return found

    store.lookup = slow  # type: ignore[method-assign]
    pending = asyncio.create_task(cache.lookup("13800000001"))
    await started.wait()
    cache.clear()  # an import landed while that answer was on its way
    go_on.set()
    assert (await pending)["name"] == "Old Name"  # type: ignore[index]
    assert cache.peek("13800000001") == (False, None), "an answer from before the import is not kept"


async def test_failures_are_not_kept_and_the_size_is_bounded(redis_client: aioredis.Redis) -> None:
    store = RedisDirectory(redis_client, key_prefix="c4:")
    await store.replace_all([_c("a", "13800000001")])
    cache = CachedDirectory(store, size=2)

    async def down(number: str | None) -> Customer | None:
        raise ConnectionError("Connection refused")

    real, store.lookup = store.lookup, down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await cache.lookup("13800000001")
    assert cache.peek("13800000001") == (False, None)
    store.lookup = real  # type: ignore[method-assign]
    for number in ("13800000001", "13800000002", "13800000003"):
        await cache.lookup(number)
    assert len(cache) == 2 and cache.peek("13800000001") == (False, None)  # the oldest went first
