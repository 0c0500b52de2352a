"""One publish path for every transport: build the envelope once, hand it to each sink.

The AMI consumer must never wait on Redis or a broker, so it only :meth:`~AgentNotifier.submit`\\ s;
:meth:`~AgentNotifier.run` (a named task of the server) takes what has piled up, allocates the
sequence numbers for the whole batch in one Redis round trip, and publishes in submission order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from cti.push.envelope import Envelope, EnvelopeError, Sequencer
from cti.supervise import raise_if_cancelling

__all__ = ["AgentNotifier", "Sink"]

log = structlog.get_logger(__name__)

MAX_BATCH = 256
RETRY_S = 0.5
STORE_TIMEOUT_S = 1.0
STORE_EVERY_S = 0.05


class Sink(Protocol):
    """A transport to agents' clients. ``publish`` only queues (its own task sends), so it never
    waits, whether the peer is slow or down; a raise is that transport's failure alone."""

    def publish(self, envelope: Envelope) -> None: ...


@dataclass(slots=True)
class _Job:
    agent: str
    type: str
    payload: dict[str, Any]
    on_sent: Callable[[Envelope], None] | None


class History(Protocol):
    """Where published envelopes are kept for clients that reconnect (:class:`cti.push.history.RedisHistory`)."""

    async def append(self, envelopes: Sequence[Envelope]) -> None: ...


class AgentNotifier:
    """Every transport gets the same envelope (same id and seq), so a client on two of them can dedupe.

    With a ``history``, what was published is stored behind the pushes, gathered every
    ``STORE_EVERY_S``; :meth:`caught_up` waits until an agent's events so far are published and
    stored, which is what makes a snapshot or a resume consistent with a ``seq``."""

    def __init__(self, *, sequencer: Sequencer, sinks: Sequence[Sink], history: History | None = None) -> None:
        self._sequencer = sequencer
        self._sinks = tuple(sinks)
        self._history = history
        self._jobs: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self._pending: dict[str, int] = {}  # per agent: submitted, not yet published and stored
        self._batch_done = asyncio.Event()
        self._unstored: list[Envelope] = []
        self._to_store = asyncio.Event()

    @property
    def backlog(self) -> int:
        return len(self._jobs)

    def submit(self, agent_id: str, type: str, payload: dict[str, Any], *,
               on_sent: Callable[[Envelope], None] | None = None) -> None:
        """Queue an event for ``run()``; never blocks. ``on_sent`` sees the envelope once sinks have it."""
        self._jobs.append(_Job(agent_id, type, payload, on_sent))
        self._pending[agent_id] = self._pending.get(agent_id, 0) + 1
        self._wakeup.set()

    async def caught_up(self, agent_id: str) -> None:
        """Return once every event submitted for the agent so far is published (and stored)."""
        while self._pending.get(agent_id):
            await self._batch_done.wait()

    async def run(self) -> None:
        """Publish in order; with a history, a second loop stores what was published, gathered."""
        if self._history is None:
            await self._drain()
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(self._keep(), name="cti.notifier.history")
            await self._drain()

    async def _drain(self) -> None:
        jobs, wakeup = self._jobs, self._wakeup
        while True:
            raise_if_cancelling()  # a cancel redis-py's wait_for dropped (Python 3.11) stops us here
            if not jobs:
                wakeup.clear()
                await wakeup.wait()
                continue
            batch = [jobs[i] for i in range(min(len(jobs), MAX_BATCH))]
            try:
                seqs = await self._sequencer.next_many([job.agent for job in batch])
            except Exception as exc:  # Redis away: keep the events, in order, and try again
                raise_if_cancelling()
                log.error("push.sequence_failed", error=repr(exc), backlog=len(jobs), retry_in_s=RETRY_S)
                await asyncio.sleep(RETRY_S)
                continue
            for _ in batch:
                jobs.popleft()
            settled: list[str] = []
            for job, seq in zip(batch, seqs, strict=True):
                try:
                    envelope = Envelope(type=job.type, agent=job.agent, seq=seq, payload=job.payload)
                except EnvelopeError as exc:  # a bug in whoever built the payload: that event only
                    log.error("push.unencodable", agent=job.agent, event_type=job.type, seq=seq, error=str(exc))
                    settled.append(job.agent)
                    continue
                self._publish(envelope)
                if self._history is not None:
                    self._unstored.append(envelope)
                else:
                    settled.append(job.agent)
                if job.on_sent is not None:
                    job.on_sent(envelope)
            if self._unstored:
                self._to_store.set()
            if settled:
                self._settle(settled)

    async def _keep(self) -> None:
        """Store published envelopes for resumes, ``STORE_EVERY_S`` at a time: one pipelined round trip
        per gathering rather than per batch (a round trip per batch was a third of a call's CPU)."""
        assert self._history is not None
        while True:
            raise_if_cancelling()  # redis-py can swallow a stop inside append: then the wait below is for ever
            if not self._unstored:
                self._to_store.clear()
                await self._to_store.wait()
                continue
            await asyncio.sleep(STORE_EVERY_S)
            envelopes, self._unstored = self._unstored, []
            try:
                async with asyncio.timeout(STORE_TIMEOUT_S):
                    await self._history.append(envelopes)
            except Exception as exc:  # the pushes went out; a resume over this stretch says incomplete
                raise_if_cancelling()
                log.warning("push.history_failed", error=repr(exc), envelopes=len(envelopes))
            self._settle([e.agent for e in envelopes])

    def _settle(self, agents: list[str]) -> None:
        pending = self._pending
        for agent in agents:
            left = pending[agent] - 1
            if left:
                pending[agent] = left
            else:
                del pending[agent]
        done, self._batch_done = self._batch_done, asyncio.Event()
        done.set()

    async def notify(self, agent_id: str, type: str, payload: dict[str, Any]) -> Envelope:
        """Publish one event now and return its envelope (tools and tests; the server uses submit)."""
        envelope = Envelope(type=type, agent=agent_id, seq=await self._sequencer.next(agent_id), payload=payload)
        self._publish(envelope)
        return envelope

    def _publish(self, envelope: Envelope) -> None:
        for sink in self._sinks:
            try:
                sink.publish(envelope)
            except Exception as exc:  # one broken transport must not cost the agent the pop on the others
                log.error("push.sink_failed", sink=type(sink).__name__, agent=envelope.agent, seq=envelope.seq,
                          event_type=envelope.type, error=repr(exc))
