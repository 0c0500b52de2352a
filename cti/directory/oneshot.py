"""The Redis directory for a command that runs once (``cti ivr try``): a plain function, one lookup per call.

The flow try-out is synchronous (:func:`ivr_flows.try_flow` takes ``lookup(value) -> record``) and makes one
or two lookups, so each runs the async store on its own short event loop rather than the command holding a
client and a loop open around the whole run. A Redis that does not answer is a :class:`DirectoryUnavailable`,
so the command says so instead of pretending the caller is unknown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cti.directory.store import RedisDirectory

__all__ = ["DirectoryUnavailable", "redis_lookup"]


class DirectoryUnavailable(Exception):
    """Redis did not answer a lookup."""


def redis_lookup(url: str, *, key_prefix: str, timeout: float = 3.0) -> Callable[[str], dict[str, Any] | None]:
    """``lookup(value)``: the customer whose number it is (exact, else a unique last-9-digit match), else the
    customer with that id (an account number entered in the flow), else None."""

    async def find(value: str) -> dict[str, Any] | None:
        client = aioredis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            store = RedisDirectory(client, key_prefix=key_prefix)
            customer = await store.lookup(value) or await store.get(value)
            return customer.model_dump() if customer is not None else None
        finally:
            await client.aclose()

    def lookup(value: str) -> dict[str, Any] | None:
        try:
            return asyncio.run(find(value))
        except (RedisError, OSError, ValueError) as exc:
            raise DirectoryUnavailable(f"the customer directory in Redis did not answer: {exc}") from exc

    return lookup
