"""From AMI messages to agents' screens: model, enrich, push — in arrival order.

The AMI client calls :meth:`EventPipeline.on_event` for each event, one at a
time, and :meth:`EventPipeline.on_connect` after every login, before the events
that follow it; so the model is resynchronised before it is trusted again.

Nothing on that ordered path waits for Redis: a caller's customer record is
looked up by :meth:`EventPipeline.run` (its own task) when they join a queue,
and the call's pushes wait for that one lookup — bounded by ``lookup_timeout``
— while every other call's pushes go on. Subscribers (routing, KPIs, agent
state) see every domain event, synchronously and in order.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from cti.ami.codec import Message
from cti.crm import CrmLinkConfig, crm_links
from cti.directory.store import account_key
from cti.metrics import DOMAIN_EVENTS, POP_LATENCY, RESYNCS
from cti.model import events as ev
from cti.model.events import DomainEvent
from cti.model.reducer import CallModel
from cti.supervise import raise_if_cancelling

__all__ = ["CustomerLookup", "EventPipeline", "ListActions", "Notifier", "ResyncHook", "Subscriber"]

log = structlog.get_logger(__name__)

#: Domain events an agent's client receives.
PUSHED = frozenset({ev.CALL_OFFERED, ev.CALL_OFFER_WITHDRAWN, ev.CALL_ANSWERED, ev.CALL_ENDED, ev.AGENT_STATE,
                    ev.CALL_UPDATED})
#: How long a pop may show with no word from the server (``expires_at``): the ring ends, or is withdrawn,
#: long before in any queue; this only clears a pop whose withdrawal a client missed.
OFFER_TTL_S = 60.0
LOOKUP_TIMEOUT_S = 1.0
LOOKUP_RETRY_S = (1.0, 2.0, 5.0)  # then every 5 s while the call lasts


class CustomerLookup(Protocol):
    """The caller's record, or None. ``peek`` answers without I/O when it can (a cache), so the call's
    pushes need not wait for the lookup task at all."""

    async def lookup(self, number: str) -> Any: ...

    def peek(self, number: str) -> tuple[bool, Any]: ...


class Notifier(Protocol):
    def submit(self, agent_id: str, type: str, payload: dict[str, Any], *,
               on_sent: Callable[[Any], None] | None = None) -> None: ...


class Subscriber(Protocol):
    """Sees every domain event in order, on the AMI path: must not block."""

    def on_domain_event(self, event: DomainEvent) -> None: ...


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


#: Runs after each resync, in order with the events, given the client and the ``CoreShowChannels`` items
#: the model was resynchronised from (CTI routing checks its own store against them).
ResyncHook = Callable[[ListActions, Sequence[Message]], Awaitable[None]]


@dataclass(slots=True)
class _Customer:
    """One call's directory record: pushes for the call wait in ``held`` until it is known.

    When the lookup failed (Redis away), the pushes go out without it, the lookup is retried
    while the call lasts, and every agent told meanwhile gets a ``call.updated`` with it."""

    number: str | None
    done: bool = False
    failed: bool = False
    record: dict[str, Any] | None = None
    held: list[tuple[str, str, dict[str, Any], Callable[[Any], None] | None]] = field(default_factory=list)
    told: set[str] = field(default_factory=set)  # agents pushed to without the record, after a failure
    last: dict[str, Any] = field(default_factory=dict)  # the call's latest snapshot
    links: list[dict[str, str]] | None = None  # the CRM links, made once per record
    links_for: dict[str, Any] | None = None


#: One labelled child per event type, looked up once: ``labels()`` takes a lock and builds a key
#: per call, and this runs for every domain event.
_domain_events = functools.cache(DOMAIN_EVENTS.labels)


class EventPipeline:
    """Owns the call model; :meth:`run` must be running for customer records to arrive."""

    def __init__(
        self, *, model: CallModel, notifier: Notifier, directory: CustomerLookup | None,
        subscribers: Sequence[Subscriber] = (), clock: Callable[[], float] = time.time,
        lookup_timeout: float = LOOKUP_TIMEOUT_S, agent_states: bool = True, offer_ttl_s: float = OFFER_TTL_S,
        crm: Sequence[CrmLinkConfig] = (),
    ) -> None:
        """``agent_states``: push the queue members' ``agent.state`` (observe mode); in CTI mode the
        router's statuses are the agents' states instead (cti/router/state_push.py)."""
        self.model = model
        self._notifier = notifier
        self._directory = directory
        self._subscribers = tuple(subscribers)
        self._clock = clock
        self._lookup_timeout = lookup_timeout
        self._pushed = PUSHED if agent_states else PUSHED - {ev.AGENT_STATE}
        self._offer_ttl_s = offer_ttl_s
        self._crm = tuple(crm)
        self._customers: dict[str, _Customer] = {}
        self._lookups: asyncio.Queue[tuple[str, _Customer]] = asyncio.Queue()
        self.synced = False
        self.resyncs = 0
        self._synced_login: int | None = None
        #: :data:`ResyncHook` s, run in order after each resync (a hook that raises fails the resync).
        self.after_resync: list[ResyncHook] = []

    def customer_of(self, linkedid: str) -> dict[str, Any] | None:
        """The directory record found for a live call's caller (looked up when it queued)."""
        slot = self._customers.get(linkedid)
        return slot.record if slot is not None else None

    def on_event(self, msg: Message) -> None:
        """Synchronous: the AMI client calls it straight from the read path when nothing is queued."""
        for event in self.model.apply(msg, self._clock()):
            self._dispatch(event)

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
        self.resyncs += 1
        log.info("ami.resynced", live_link=live_link, channels=len(channels), queue_items=len(queues),
                 calls=len(self.model.calls), ended_while_away=sum(e.type == ev.CALL_FINISHED for e in events))
        for event in events:
            self._dispatch(event)
        self.synced = True
        for hook in self.after_resync:
            await hook(client, channels)

    async def run(self) -> None:
        """Look customers up, several at a time, off the ordered AMI path."""
        async with asyncio.TaskGroup() as group:
            while True:
                raise_if_cancelling()
                linkedid, slot = await self._lookups.get()
                group.create_task(self._look_up(linkedid, slot), name=f"cti.lookup.{linkedid}")

    def _dispatch(self, event: DomainEvent) -> None:
        _domain_events(event.type).inc()
        for subscriber in self._subscribers:
            try:
                subscriber.on_domain_event(event)
            except Exception:  # one broken subscriber must not stop the calls
                log.exception("pipeline.subscriber_failed", subscriber=type(subscriber).__name__,
                              event_type=event.type, linkedid=event.linkedid)
        linkedid = event.linkedid or ""
        pushed = event.agent is not None and event.type in self._pushed
        call_event = event.type != ev.AGENT_STATE
        slot = self._customers.get(linkedid) if call_event else None
        # Look the caller up when they join the queue, not when an agent rings: the pop is then instant.
        if call_event and slot is None and (event.type == ev.CALL_QUEUED or pushed):
            slot = self._customers[linkedid] = self._start_lookup(linkedid, _lookup_key(event.data))
        if pushed:
            assert event.agent is not None
            on_sent = None
            data = event.data
            if event.type == ev.CALL_OFFERED:
                offered_at = data.get("offered_at")
                data = {**data, "expires_at": round((offered_at if offered_at is not None else self._clock())
                                                    + self._offer_ttl_s, 3)}

                def on_sent(_envelope: Any, received: float = time.perf_counter()) -> None:
                    POP_LATENCY.observe(time.perf_counter() - received)

            if slot is None:
                self._notifier.submit(event.agent, event.type, dict(data), on_sent=on_sent)
            elif slot.done:
                self._notifier.submit(event.agent, event.type, self._with_customer(slot, data), on_sent=on_sent)
                if slot.failed:
                    slot.told.add(event.agent)
            else:
                slot.held.append((event.agent, event.type, data, on_sent))
        if slot is not None and call_event:
            slot.last = event.data
        if event.type == ev.CALL_FINISHED:
            finished = self._customers.pop(linkedid, None)
            if finished is not None:
                self._release(finished)  # nothing may stay held once the call is gone

    def _start_lookup(self, linkedid: str, number: str | None) -> _Customer:
        slot = _Customer(number)
        if not number or self._directory is None:
            slot.done = True
            return slot
        known, record = self._directory.peek(number)
        if known:
            slot.done, slot.record = True, _as_record(record)
        else:
            self._lookups.put_nowait((linkedid, slot))
        return slot

    async def _look_up(self, linkedid: str, slot: _Customer) -> None:
        assert slot.number is not None
        retries = iter(LOOKUP_RETRY_S)
        while True:
            try:
                slot.record = await self._fetch(slot.number)
            except Exception as exc:  # the pop goes out without the record rather than late or not at all
                raise_if_cancelling()
                if not slot.failed:
                    log.warning("directory.lookup_failed", linkedid=linkedid, number=slot.number, error=repr(exc),
                                action="pushed without the record; retrying while the call lasts")
                    slot.failed = True
                    slot.told.update(agent for agent, *_ in slot.held)
                    self._release(slot)
                await asyncio.sleep(next(retries, LOOKUP_RETRY_S[-1]))
                if self._customers.get(linkedid) is not slot:
                    return  # the call is over
                continue
            break
        if not slot.failed:
            self._release(slot)
            return
        slot.failed = False
        log.info("directory.lookup_recovered", linkedid=linkedid, number=slot.number, found=slot.record is not None,
                 agents=len(slot.told))
        if slot.record is not None:
            for agent in sorted(slot.told):
                self._notifier.submit(agent, ev.CALL_UPDATED, self._with_customer(slot, slot.last))
            slot.told.clear()
        # else: Redis is back but may not have its directory yet; look_up_missing() tries again.

    def look_up_missing(self) -> None:
        """The directory was (re)loaded: calls pushed without a record get a lookup again, and their
        agents a ``call.updated`` if it now finds one."""
        for linkedid, slot in self._customers.items():
            if slot.done and slot.record is None and slot.told and slot.number and not slot.failed:
                slot.failed = True
                self._lookups.put_nowait((linkedid, slot))

    async def _fetch(self, number: str) -> dict[str, Any] | None:
        assert self._directory is not None
        async with asyncio.timeout(self._lookup_timeout):
            return _as_record(await self._directory.lookup(number))

    def _with_customer(self, slot: _Customer, data: dict[str, Any]) -> dict[str, Any]:
        """The payload with the call's customer record and, when configured, its CRM links."""
        if not self._crm:
            return {**data, "customer": slot.record}
        if slot.links is None or slot.links_for is not slot.record:
            slot.links = crm_links(self._crm, caller=data.get("caller"), customer=slot.record,
                                   linkedid=str(data.get("linkedid") or ""), queue=data.get("queue"))
            slot.links_for = slot.record
        return {**data, "customer": slot.record, "crm_links": slot.links}

    def _release(self, slot: _Customer) -> None:
        """Send the call's held pushes, in order, with the record (None if not found in time)."""
        slot.done = True
        held, slot.held = slot.held, []
        for agent, kind, data, on_sent in held:
            self._notifier.submit(agent, kind, self._with_customer(slot, data), on_sent=on_sent)


def _lookup_key(call: dict[str, Any]) -> str | None:
    """Whom the pop shows: the customer the IVR identified (the caller said who they are, perhaps from
    someone else's phone), else whoever the calling number belongs to."""
    ivr = call.get("ivr")
    customer_id = ivr.get("customer_id") if isinstance(ivr, dict) else None
    if isinstance(customer_id, str) and customer_id:
        return account_key(customer_id)
    caller = call.get("caller")
    return caller if isinstance(caller, str) else None


def _as_record(customer: Any) -> dict[str, Any] | None:
    """A pop's ``customer``: the directory's dict, or a ``Customer`` model dumped to one."""
    if customer is None or isinstance(customer, dict):
        return customer
    return customer.model_dump(mode="json")  # type: ignore[no-any-return]
