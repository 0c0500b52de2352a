"""From AMI messages to agents' screens: model, enrich, push — in arrival order.

The AMI client calls :meth:`EventPipeline.on_event` for each event, one at a
time, and :meth:`EventPipeline.on_connect` after every login, before the events
that follow it; so the model is resynchronised before it is trusted again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from cti.ami.codec import Message
from cti.metrics import DOMAIN_EVENTS, POP_LATENCY, RESYNCS
from cti.model import events as ev
from cti.model.events import DomainEvent
from cti.model.reducer import CallModel

__all__ = ["CustomerLookup", "EventPipeline", "Notifier"]

log = structlog.get_logger(__name__)

#: Domain events an agent's client receives.
PUSHED = frozenset({ev.CALL_OFFERED, ev.CALL_OFFER_WITHDRAWN, ev.CALL_ANSWERED, ev.CALL_ENDED, ev.AGENT_STATE})


class CustomerLookup(Protocol):
    async def lookup(self, number: str) -> Any: ...


class Notifier(Protocol):
    def submit(self, agent_id: str, type: str, payload: dict[str, Any], *,
               on_sent: Callable[[Any], None] | None = None) -> None: ...


class _LoginCount(Protocol):
    @property
    def connects(self) -> int: ...


class ListActions(Protocol):
    """What a resync needs of the AMI client (``AmiClient`` is one)."""

    @property
    def stats(self) -> _LoginCount: ...

    async def action_list(
        self, name: str, fields: dict[str, str] | None = None, *, timeout: float | None = None
    ) -> tuple[Message, list[Message]]: ...


class EventPipeline:
    """Owns the call model. It awaits only the directory (once per call, bounded by Redis's
    socket timeout); pushes are submitted to the notifier, which never blocks."""

    def __init__(
        self, *, model: CallModel, notifier: Notifier, directory: CustomerLookup | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self._notifier = notifier
        self._directory = directory
        self._clock = clock
        self._customers: dict[str, dict[str, Any] | None] = {}
        self.synced = False
        self._synced_login: int | None = None

    def customer_of(self, linkedid: str) -> dict[str, Any] | None:
        """The directory record found for a live call's caller (looked up when it queued)."""
        return self._customers.get(linkedid)

    async def on_event(self, msg: Message) -> None:
        for event in self.model.apply(msg, self._clock()):
            await self._dispatch(event)

    async def on_connect(self, client: ListActions) -> None:
        """Resynchronise from CoreShowChannels and QueueStatus after every (re)login,
        and periodically on the same connection (``AmiClient.request_resync``)."""
        login = client.stats.connects
        live_link = login == self._synced_login
        self.synced = self.synced and live_link
        _, channels = await client.action_list("CoreShowChannels")
        _, queues = await client.action_list("QueueStatus")
        events = self.model.resync(channels, queues, self._clock(), live_link=live_link)
        self._synced_login = login
        RESYNCS.inc()
        log.info("ami.resynced", live_link=live_link, channels=len(channels), queue_items=len(queues),
                 calls=len(self.model.calls), ended_while_away=sum(e.type == ev.CALL_ENDED for e in events))
        for event in events:
            await self._dispatch(event)
        self.synced = True

    async def _dispatch(self, event: DomainEvent) -> None:
        DOMAIN_EVENTS.labels(event.type).inc()
        linkedid = event.linkedid or ""
        pushed = event.agent is not None and event.type in PUSHED
        call_event = event.type != ev.AGENT_STATE
        # Look the caller up when they join the queue, not when an agent rings: the pop is then instant.
        if call_event and (event.type == ev.CALL_QUEUED or pushed) and linkedid not in self._customers:
            self._customers[linkedid] = await self._customer(event.data.get("caller"))
        if pushed:
            assert event.agent is not None
            payload = dict(event.data)
            if call_event:
                payload["customer"] = self._customers[linkedid]
            on_sent = None
            if event.type == ev.CALL_OFFERED:

                def on_sent(_envelope: Any, received: float = time.perf_counter()) -> None:
                    POP_LATENCY.observe(time.perf_counter() - received)

            self._notifier.submit(event.agent, event.type, payload, on_sent=on_sent)
        if event.type == ev.CALL_ENDED:
            self._customers.pop(linkedid, None)

    async def _customer(self, number: str | None) -> dict[str, Any] | None:
        if not number or self._directory is None:
            return None
        try:
            customer = await self._directory.lookup(number)
        except Exception as exc:  # the pop goes out without the record rather than not at all
            log.warning("directory.lookup_failed", number=number, error=repr(exc))
            return None
        if customer is None:
            return None
        dumped: dict[str, Any] = customer.model_dump(mode="json") if hasattr(customer, "model_dump") else dict(customer)
        return dumped
