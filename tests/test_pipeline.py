"""The pipeline: customer records off the ordered path, held pushes, late records, subscribers."""

from __future__ import annotations

import asyncio
from typing import Any

from cti.ami.codec import Decoder
from cti.model import events as ev
from cti.model.events import DomainEvent
from cti.model.reducer import CallModel
from cti.pipeline import EventPipeline
from tests.e2e import eventually
from tests.test_model_traces import AGENTS
from tests.traces import trace_bytes

RECORD = {"id": "c-1", "name": "Wang Lei", "vip_tier": 2}


class Pushes:
    """Call events handed to the notifier (agent.state ones are not about a call)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def submit(self, agent_id: str, type: str, payload: dict[str, Any], *, on_sent: Any = None) -> None:
        if type.startswith("call."):
            self.sent.append((agent_id, type, payload))


class Directory:
    """Answers from a dict; ``down`` makes it fail the way an unreachable Redis does."""

    def __init__(self) -> None:
        self.down = False
        self.gate: asyncio.Event | None = None
        self.calls = 0

    async def lookup(self, number: str) -> dict[str, Any] | None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ConnectionError("Connection refused")
        return RECORD if number == "13800000001" else None

    def peek(self, number: str) -> tuple[bool, Any]:
        return False, None  # no cache: every call goes through the lookup task


async def feed(pipeline: EventPipeline, name: str, stop_at: str | None = None) -> None:
    for msg in Decoder().feed(trace_bytes(name)):
        pipeline.on_event(msg)
        if stop_at and msg.event == stop_at:
            return


async def test_pushes_wait_for_the_record_without_holding_up_the_ami_path() -> None:
    pushes, directory = Pushes(), Directory()
    directory.gate = asyncio.Event()  # Redis is slow
    pipeline = EventPipeline(model=CallModel(agents=AGENTS), notifier=pushes, directory=directory)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(pipeline.run())
        await feed(pipeline, "basic", stop_at="AgentConnect")  # the whole ordered path ran meanwhile
        assert pipeline.model.calls and not pushes.sent, "held for the record, not sent without it"
        directory.gate.set()
        await eventually(lambda: len(pushes.sent) >= 2)
        assert [t for _, t, _ in pushes.sent[:2]] == [ev.CALL_OFFERED, ev.CALL_ANSWERED]
        assert all(p["customer"] == RECORD for _, _, p in pushes.sent)
        task.cancel()


async def test_a_failed_lookup_is_retried_and_the_record_follows_as_call_updated() -> None:
    pushes, directory = Pushes(), Directory()
    directory.down = True
    pipeline = EventPipeline(model=CallModel(agents=AGENTS), notifier=pushes, directory=directory)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(pipeline.run())
        await feed(pipeline, "basic", stop_at="AgentConnect")
        await eventually(lambda: len(pushes.sent) >= 2)
        assert [(a, t, p["customer"]) for a, t, p in pushes.sent] == [
            ("bob", ev.CALL_OFFERED, None), ("bob", ev.CALL_ANSWERED, None)], "the pop did not wait for Redis"
        directory.down = False  # Redis is back
        await eventually(lambda: any(t == ev.CALL_UPDATED for _, t, _ in pushes.sent), timeout=15)
        [update] = [p for a, t, p in pushes.sent if t == ev.CALL_UPDATED]
        assert update["customer"] == RECORD and update["caller"] == "13800000001" and update["agent_id"] == "bob"
        task.cancel()


async def test_subscribers_see_every_domain_event_in_order_and_a_broken_one_changes_nothing() -> None:
    seen: list[DomainEvent] = []

    class Broken:
        def on_domain_event(self, event: DomainEvent) -> None:
            raise RuntimeError("bug in a subscriber")

    class Recorder:
        def on_domain_event(self, event: DomainEvent) -> None:
            seen.append(event)

    pushes = Pushes()
    pipeline = EventPipeline(model=CallModel(agents=AGENTS), notifier=pushes, directory=None,
                             subscribers=[Broken(), Recorder()])
    await feed(pipeline, "basic")
    kinds = [e.type for e in seen if e.linkedid]
    assert kinds[0] == ev.CALL_ARRIVED and kinds[-1] == ev.CALL_FINISHED
    assert kinds.index(ev.CALL_QUEUED) < kinds.index(ev.CALL_OFFERED) < kinds.index(ev.CALL_ANSWERED)
    assert [t for _, t, _ in pushes.sent] == [ev.CALL_OFFERED, ev.CALL_ANSWERED, ev.CALL_ENDED]


async def test_a_known_caller_pops_without_waiting_for_the_lookup_task() -> None:
    """With the record in the cache the offer goes out at once, although the lookup task never runs."""

    class Cached(Directory):
        def peek(self, number: str) -> tuple[bool, Any]:
            return (True, RECORD) if number == "13800000001" else (False, None)

    pushes, directory = Pushes(), Cached()
    pipeline = EventPipeline(model=CallModel(agents=AGENTS), notifier=pushes, directory=directory)
    await feed(pipeline, "basic", stop_at="AgentCalled")  # pipeline.run() is not running
    assert [(a, t) for a, t, _ in pushes.sent] == [("bob", "call.offered")]
    assert pushes.sent[0][2]["customer"] == RECORD and directory.calls == 0


async def test_pops_carry_crm_links_and_an_offer_its_expiry() -> None:
    """The record URL when the caller is known (their record's id), a search by number otherwise; the
    offer says when a client should stop showing it."""
    from cti.crm import CrmLinkConfig

    class Cached(Directory):
        def peek(self, number: str) -> tuple[bool, Any]:
            return (True, RECORD) if number == "13800000001" else (False, None)

    crm = [CrmLinkConfig(name="CRM", record_url="https://crm.example/r/{customer_id}",
                         search_url="https://crm.example/s?q={number}")]
    pushes = Pushes()
    pipeline = EventPipeline(model=CallModel(agents=AGENTS), notifier=pushes, directory=Cached(), crm=crm,
                             offer_ttl_s=45)
    await feed(pipeline, "basic")
    offered, answered, ended = (p for _, _, p in pushes.sent)
    assert offered["crm_links"] == [{"name": "CRM", "url": "https://crm.example/r/c-1"}]
    assert answered["crm_links"] == ended["crm_links"] == offered["crm_links"]
    assert offered["expires_at"] == round(offered["offered_at"] + 45, 3) and "expires_at" not in answered

    without = Pushes()
    pipeline = EventPipeline(model=CallModel(agents=AGENTS), notifier=without, directory=None)
    await feed(pipeline, "basic")
    assert all("crm_links" not in p for _, _, p in without.sent)  # nothing configured, nothing added
