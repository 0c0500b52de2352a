"""The call model's live calls, kept in Redis so a restarted server (or a standby) resumes them.

Write-behind: the pipeline tells :meth:`ModelStore.on_domain_event` which calls changed, and
:meth:`ModelStore.run` writes those every ``interval`` seconds in one round trip (a finished call
is deleted). A stop writes what is still dirty before it ends; a ``kill -9`` loses at most that
interval of changes, and the resync after the next login corrects the rest against Asterisk's own
channel list.
"""

from __future__ import annotations

import asyncio
import json

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from cti.model import events as ev
from cti.model.events import DomainEvent
from cti.model.reducer import CallModel
from cti.model.state import Call, call_from_dict
from cti.supervise import raise_if_cancelling

__all__ = ["ModelStore"]

log = structlog.get_logger(__name__)

FLUSH_S = 0.2
STOP_FLUSH_TIMEOUT_S = 2.0  # a stop waits this long for Redis, not for ever


class ModelStore:
    """``{prefix}model:calls``: Linkedid -> the call as JSON."""

    def __init__(self, redis: aioredis.Redis, model: CallModel, *, key_prefix: str = "cti:",
                 interval: float = FLUSH_S) -> None:
        self._redis = redis
        self._model = model
        self._key = f"{key_prefix}model:calls"
        self._interval = interval
        self._dirty: set[str] = set()
        self.written = 0

    def on_domain_event(self, event: DomainEvent) -> None:
        if event.linkedid:
            self._dirty.add(event.linkedid)
        if event.type == ev.CALL_FINISHED and event.data.get("merged_into"):
            self._dirty.add(event.data["merged_into"])

    async def load(self) -> list[Call]:
        """The calls a previous run left; a record that does not parse is logged and dropped."""
        raw = await self._redis.hgetall(self._key)
        calls = []
        for linkedid, data in raw.items():
            try:
                calls.append(call_from_dict(json.loads(data)))
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("model_store.bad_record", linkedid=str(linkedid), error=repr(exc))
        log.info("model_store.loaded", calls=len(calls))
        return calls

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._interval)
                await self.flush()
                raise_if_cancelling()
        finally:
            # The changes of the last interval: a restart within it would resume those calls as they were.
            if self._dirty:
                try:
                    async with asyncio.timeout(STOP_FLUSH_TIMEOUT_S):
                        await self._write()
                except (RedisError, OSError, TimeoutError) as exc:
                    log.warning("model_store.lost_at_stop", calls=len(self._dirty), error=repr(exc))

    async def flush(self) -> None:
        if not self._dirty:
            return
        try:
            await self._write()
        except (RedisError, OSError) as exc:
            raise_if_cancelling()
            log.warning("model_store.write_failed", calls=len(self._dirty), error=repr(exc))

    async def _write(self) -> None:
        """The dirty calls in one round trip; on an error they stay dirty, for the next round."""
        dirty, self._dirty = self._dirty, set()
        live: dict[FieldT, EncodableT] = {}
        gone: list[str] = []
        for linkedid in dirty:
            call = self._model.calls.get(linkedid)
            if call is None:
                gone.append(linkedid)
            else:
                live[linkedid] = orjson.dumps(call)  # the dataclasses as call_to_dict has them, in C
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                if live:
                    pipe.hset(self._key, mapping=live)
                if gone:
                    pipe.hdel(self._key, *gone)
                await pipe.execute()
        except BaseException:
            self._dirty |= dirty
            raise
        self.written += len(dirty)
