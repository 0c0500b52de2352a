"""Customer records kept in the server, so a screen pop never waits on Redis for a known caller.

Callers ring again and again, and most numbers of a busy day are not in the directory at all: both
the record and its absence are kept, until the directory changes. An import through this server
clears the cache at once; one by another server changes the directory's ``version`` in Redis,
which the server's Redis watch reads every second (:meth:`CachedDirectory.observe_version`).
"""

from __future__ import annotations

from typing import Any, Final

from cti.directory.store import RedisDirectory

__all__ = ["CachedDirectory"]

_MISSING: Final[Any] = object()


class CachedDirectory:
    """Records as the dicts a pop carries (``Customer.model_dump(mode="json")``); treat them as read-only,
    several pops share one."""

    def __init__(self, store: RedisDirectory, *, size: int = 100_000) -> None:
        self._store = store
        self._size = size
        self._entries: dict[str, dict[str, Any] | None] = {}
        self._version: str | None = None
        self._generation = 0  # bumped on every clear: a lookup begun before one does not fill the cache
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, number: str) -> tuple[bool, dict[str, Any] | None]:
        """``(True, record or None)`` when the answer is known here, else ``(False, None)``; no I/O."""
        record = self._entries.get(number, _MISSING)
        if record is _MISSING:
            return False, None
        self.hits += 1
        return True, record

    async def lookup(self, number: str) -> dict[str, Any] | None:
        known, record = self.peek(number)
        if known:
            return record
        self.misses += 1
        generation = self._generation
        customer = await self._store.lookup(number)  # a failure is not cached: the next call asks again
        found = customer.model_dump(mode="json") if customer is not None else None
        if generation == self._generation:
            if len(self._entries) >= self._size:
                del self._entries[next(iter(self._entries))]  # the oldest answer goes first
            self._entries[number] = found
        return found

    def clear(self) -> None:
        self._entries.clear()
        self._generation += 1

    def observe_version(self, version: str | None) -> None:
        """The directory's version as Redis has it now; a new one (another server imported) clears."""
        if version != self._version:
            if self._version is not None:
                self.clear()
            self._version = version
