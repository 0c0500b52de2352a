"""What an agent's client should be showing, and what it missed: the basis of snapshot and resume.

:class:`AgentViews` is a :class:`~cti.push.notifier.Sink` that folds every envelope, in publish order,
into each agent's view (:func:`fold`: the rules docs/events.md gives clients), so a snapshot is exactly
what a client that saw every event up to ``seq`` shows. :class:`RedisHistory` keeps the last envelopes
of each agent in a Redis stream whose entry ids are the sequence numbers, so a reconnecting client is
sent what it missed, also from another server or after a restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from cti.push.envelope import Envelope

__all__ = ["AgentView", "AgentViews", "RedisHistory", "fold"]

#: Envelopes kept per agent (Redis trims approximately, so a few more may stay).
HISTORY_MAXLEN: Final = 1000
#: Envelopes folded per agent when a server starts: enough for every call still ringing or up.
REBUILD_FROM: Final = 200

_SHOWN: Final = frozenset({"call.offered", "call.answered"})
_GONE: Final = frozenset({"call.ended", "call.offer_withdrawn"})


@dataclass(slots=True)
class AgentView:
    """One agent's screen: its state and the calls ringing it or up with it, as of ``seq``."""

    seq: int = 0
    state: dict[str, Any] | None = None
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)  # linkedid -> {"type", "seq", "payload"}

    def snapshot(self, agent: str) -> dict[str, Any]:
        return {"agent": agent, "seq": self.seq, "state": self.state,
                "offers": [c for c in self.calls.values() if c["type"] == "call.offered"],
                "calls": [c for c in self.calls.values() if c["type"] == "call.answered"]}


def fold(view: AgentView, type: str, seq: int, payload: dict[str, Any]) -> None:
    """Apply one envelope. ``call.offered`` shows a ringing call and ``call.answered`` a call in progress;
    ``call.updated`` refreshes a shown call's payload; ``call.ended`` and ``call.offer_withdrawn`` clear
    it; ``agent.state`` replaces the state. An envelope at or below ``seq`` is a duplicate: ignored."""
    if seq <= view.seq:
        return
    view.seq = seq
    if type == "agent.state":
        view.state = payload
        return
    linkedid = payload.get("linkedid")
    if not isinstance(linkedid, str):
        return
    if type in _SHOWN:
        view.calls[linkedid] = {"type": type, "seq": seq, "payload": payload}
    elif type in _GONE:
        view.calls.pop(linkedid, None)
    elif type == "call.updated" and linkedid in view.calls:
        shown = view.calls[linkedid]
        view.calls[linkedid] = {"type": shown["type"], "seq": seq, "payload": payload}


class AgentViews:
    """Every agent's :class:`AgentView`, kept by folding what the notifier publishes."""

    def __init__(self) -> None:
        self._views: dict[str, AgentView] = {}

    def publish(self, envelope: Envelope) -> None:
        view = self._views.get(envelope.agent)
        if view is None:
            view = self._views[envelope.agent] = AgentView()
        fold(view, envelope.type, envelope.seq, envelope.payload)

    def view(self, agent: str) -> AgentView:
        return self._views.get(agent) or AgentView()

    def restore(self, agent: str, envelopes: Iterable[dict[str, Any]]) -> None:
        """Fold stored envelopes (oldest first) into a view this server has not seen yet (a restart)."""
        view = self._views.setdefault(agent, AgentView())
        for env in envelopes:
            fold(view, env["type"], env["seq"], env["payload"])


#: Append each (KEYS[i], ARGV[2i] id, ARGV[2i+1] body), trimmed to about ARGV[1]: one command for a whole
#: gathering, where a pipeline of XADDs cost redis-py a command object, encoding and a reply parse each.
#: An id not above the stream's last (another server numbered the agent higher) fails alone (pcall).
_APPEND = """
for i, key in ipairs(KEYS) do
  redis.pcall('XADD', key, 'MAXLEN', '~', ARGV[1], ARGV[2 * i], 'e', ARGV[2 * i + 1])
end
return #KEYS
"""


class RedisHistory:
    """``{prefix}agent:{agent}:events``: a stream, entry id ``<seq>-0``, field ``e`` the envelope's JSON."""

    def __init__(self, redis: aioredis.Redis, *, key_prefix: str = "cti:", maxlen: int = HISTORY_MAXLEN) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._maxlen = maxlen
        self._append = redis.register_script(_APPEND)

    def key(self, agent: str) -> str:
        return f"{self._prefix}agent:{agent}:events"

    async def append(self, envelopes: Sequence[Envelope]) -> None:
        """One round trip for a batch. An id at or below the stream's last (another server numbered the
        agent higher meanwhile) is refused by Redis and skipped: the stream only goes up, like ``seq``."""
        if not envelopes:
            return
        args: list[Any] = [self._maxlen]
        for env in envelopes:
            args += (f"{env.seq}-0", env.body)
        await self._append(keys=[self.key(env.agent) for env in envelopes], args=args)

    async def since(self, agent: str, seq: int, *,
                    limit: int = HISTORY_MAXLEN) -> tuple[list[tuple[int, bytes]], bool]:
        """The stored envelopes after ``seq`` (oldest first, JSON), and whether they are all the client
        missed: only when the stream still holds ``seq`` itself or an older one, so nothing between was
        trimmed away (numbers jump after a restart, so counting cannot tell)."""
        key = self.key(agent)
        pipe = self._redis.pipeline(transaction=False)
        pipe.xrange(key, min="-", max="+", count=1)
        pipe.xrange(key, min=f"{seq + 1}-0", max="+", count=limit)
        first, entries = await pipe.execute()
        complete = bool(first) and _seq_of(first[0][0]) <= seq
        return [(_seq_of(entry_id), fields[b"e"]) for entry_id, fields in entries], complete and len(entries) < limit

    async def tail(self, agent: str, count: int = REBUILD_FROM) -> list[dict[str, Any]]:
        """The last ``count`` envelopes, oldest first, decoded."""
        entries: Any = await self._redis.xrevrange(self.key(agent), max="+", min="-", count=count)
        return [orjson.loads(fields[b"e"]) for _, fields in reversed(entries or [])]


def _seq_of(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])
