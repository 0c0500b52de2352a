"""The customer directory in Redis, looked up by caller number on every queued call.

Layout under ``{prefix}directory:``: ``customers`` (id -> JSON), ``numbers``
(normalised number -> JSON) and ``suffixes`` (last 9 digits -> JSON, only when
unique).  Records are stored whole under each key so a lookup is one round-trip
and can never pair a number with a record from another import.

:meth:`RedisDirectory.replace_all` writes a complete new directory under
private keys, then swaps it in with RENAMEs inside MULTI/EXEC: a lookup sees the
old directory or the new one, never a mix, and several servers may import
concurrently (the last EXEC wins). Each import also sets ``version`` (a fresh id), so a
server's :class:`~cti.directory.cache.CachedDirectory` notices within a second that another
server imported.

A number that several customers list (:func:`shared_numbers`) is ambiguous, like
a shared suffix: it is left out of ``numbers`` and ``suffixes``, so a call from it
pops no customer record rather than one picked at random; the customers are
imported all the same and their other numbers match.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.typing import EncodableT, FieldT

from cti.directory.models import Customer
from cti.directory.numbers import normalise_number, number_suffix

__all__ = ["RedisDirectory", "shared_numbers"]

log = structlog.get_logger(__name__)

_PARTS = ("customers", "numbers", "suffixes")
#: Staging keys of an import that died half-way expire instead of lingering.
_STAGING_TTL_S = 3600


def shared_numbers(customers: Iterable[Customer]) -> dict[str, list[str]]:
    """Each normalised number more than one customer lists, with those customers' ids in order."""
    owners: dict[str, list[str]] = {}
    for customer in customers:
        for number in customer.numbers:
            owners.setdefault(number, []).append(customer.id)
    return {number: ids for number, ids in owners.items() if len(ids) > 1}


#: Lookup keys that are not caller numbers: ``#account:<customer id>`` (no number starts with ``#``).
ACCOUNT_PREFIX = "#account:"


def account_key(customer_id: str) -> str:
    """The lookup key of a customer the IVR identified (an account number entered, a PIN checked)."""
    return ACCOUNT_PREFIX + customer_id


class RedisDirectory:
    def __init__(self, redis: aioredis.Redis, *, key_prefix: str = "cti:") -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}directory:"

    def _key(self, part: str, staging: str | None = None) -> str:
        return f"{self._prefix}staging:{staging}:{part}" if staging else f"{self._prefix}{part}"

    async def replace_all(self, customers: Iterable[Customer]) -> int:
        """Atomically replace the whole directory; returns how many customers it now holds."""
        customers = list(customers)
        shared = shared_numbers(customers)
        records: dict[str, str] = {}
        by_number: dict[str, str] = {}
        suffix_owners: dict[str, set[str]] = {}
        suffix_record: dict[str, str] = {}
        for customer in customers:
            if customer.id in records:
                raise ValueError(f"duplicate customer id {customer.id!r}")
            record = customer.model_dump_json()
            records[customer.id] = record
            for number in customer.numbers:
                if number not in shared:
                    by_number[number] = record
                suffix = number_suffix(number)
                if suffix is not None:
                    # A shared number has several owners here too, so its suffix is ambiguous as well.
                    suffix_owners.setdefault(suffix, set()).add(customer.id)
                    suffix_record[suffix] = record
        suffixes = {s: suffix_record[s] for s, owners in suffix_owners.items() if len(owners) == 1}
        data = {"customers": records, "numbers": by_number, "suffixes": suffixes}

        staging = uuid.uuid4().hex
        async with self._redis.pipeline(transaction=False) as pipe:
            for part, mapping in data.items():
                if mapping:
                    fields: dict[FieldT, EncodableT] = {k: v for k, v in mapping.items()}
                    pipe.hset(self._key(part, staging), mapping=fields)
                    pipe.expire(self._key(part, staging), _STAGING_TTL_S)
            await pipe.execute()
        async with self._redis.pipeline(transaction=True) as pipe:
            for part, mapping in data.items():
                if mapping:
                    pipe.rename(self._key(part, staging), self._key(part))
                    pipe.persist(self._key(part))  # RENAME keeps the staging TTL
                else:
                    pipe.delete(self._key(part))
            pipe.set(self._key("version"), staging)
            await pipe.execute()
        log.info("directory.replaced", customers=len(records), numbers=len(by_number),
                 ambiguous_suffixes=len(suffix_owners) - len(suffixes))
        if shared:
            log.warning("directory.shared_numbers", count=len(shared),
                        numbers={n: ids for n, ids in list(shared.items())[:20]},
                        effect="calls from these numbers pop no customer record")
        return len(records)

    async def lookup(self, number: str | None) -> Customer | None:
        """Exact normalised match, else a unique last-9-digit match; junk caller IDs cost no round-trip.
        An :func:`account_key` (a caller who identified themselves in the IVR) is the customer by id."""
        if number is not None and number.startswith(ACCOUNT_PREFIX):
            return await self.get(number[len(ACCOUNT_PREFIX):])
        normalised = normalise_number(number)
        if normalised is None:
            return None
        suffix = number_suffix(normalised)
        for attempt in (1, 2):
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hget(self._key("numbers"), normalised)
                    pipe.hget(self._key("suffixes"), suffix if suffix is not None else "")
                    exact, by_suffix = await pipe.execute()
                break
            except RedisConnectionError:
                # After a Redis restart the pool still holds connections to the old process, and
                # redis-py retries plain commands but not pipelines: one of those costs one try (the
                # pipeline only reads, so running it again is safe).
                if attempt == 2:
                    raise
        record = exact if exact is not None else (by_suffix if suffix is not None else None)
        return Customer.model_validate_json(record) if record is not None else None

    async def get(self, customer_id: str) -> Customer | None:
        record = await self._redis.hget(self._key("customers"), customer_id)
        return Customer.model_validate_json(record) if record is not None else None

    async def count(self) -> int:
        return int(await self._redis.hlen(self._key("customers")))

    async def status(self) -> tuple[int, str | None]:
        """How many customers, and which import they came from (None: no import since Redis started empty)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hlen(self._key("customers"))
            pipe.get(self._key("version"))
            count, version = await pipe.execute()
        return int(count), version.decode() if isinstance(version, bytes) else version
