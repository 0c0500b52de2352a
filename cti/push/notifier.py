"""One publish path for every transport: build the envelope once, hand it to each sink."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import structlog

from cti.push.envelope import Envelope, Sequencer

__all__ = ["AgentNotifier", "Sink"]

log = structlog.get_logger(__name__)


class Sink(Protocol):
    """A transport to agents' clients; ``publish`` must return promptly even when its peer is down."""

    async def publish(self, envelope: Envelope) -> None: ...


class AgentNotifier:
    """Every transport gets the same envelope (same id and seq), so a client on two of them can dedupe."""

    def __init__(self, *, sequencer: Sequencer, sinks: Sequence[Sink]) -> None:
        self._sequencer = sequencer
        self._sinks = tuple(sinks)

    async def notify(self, agent_id: str, type: str, payload: dict[str, Any]) -> Envelope:
        envelope = Envelope(type=type, agent=agent_id, seq=await self._sequencer.next(agent_id), payload=payload)
        results = await asyncio.gather(*(sink.publish(envelope) for sink in self._sinks), return_exceptions=True)
        for sink, result in zip(self._sinks, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                # One broken transport must not cost the agent the pop on the others.
                log.error("push.sink_failed", sink=_name(sink), agent=agent_id, seq=envelope.seq,
                          event_type=type, error=repr(result))
        return envelope


def _name(obj: object) -> str:
    return obj.__class__.__name__
