"""CTI routing mode: AMI events in, routing decisions and AMI actions out.

The dialplan (``config/asterisk/extensions_cti.conf``) parks each caller in the hold context and says
so (``UserEvent CtiHold``). The controller queues the call in the router store and offers it to the
best agent: ``Setvar`` CTI_AGENT, CTI_ENDPOINT (the agent's dial string) and CTI_RING_S on the held
channel, then ``Redirect`` to the connect context, whose ``Dial`` rings the agent. The dial's events,
``CtiNoAnswer`` (RONA), ``Hangup``, ``BlindTransfer`` and the fallback to ``Queue()`` follow the call
to its end; the agent then wraps up and is offered the next call.

Several servers, each with its own AMI connection to the same Asterisk and one Redis, run this on
the same event stream. So every step after a match is a conditional store operation
(:class:`~cti.router.store.RouterStore`: ``settle``, ``requeue`` for a named agent, ``transition``
from the statuses expected, ``end_wrap_ups``, ``expire_offers``): the first server to handle an event
makes the change and the others find nothing to do. Only the server whose script made a reservation
sends its Redirect, so one match rings one phone. Counters count on the server that made the change:
summed over the servers they are the cluster's.

Timing: :meth:`RoutingController.on_event` only appends (the AMI read path never waits);
:meth:`RoutingController.run` handles the events strictly in arrival order and, between them, the
timers: wrap-ups that end (their deadlines are in Redis, so any server ends them) and the sweep. The
clock is injected (epoch ms, the same on every server: they compare each other's enqueue times).

Reconciliation: the controller also follows the agents' phones (``DeviceStateChange``) and, after each AMI
login and periodic resync (:meth:`RoutingController.on_connect`), ``DeviceStateList`` and the channels the call
model resynchronised from. What is wrong and how to put it right is decided by ``cti/router/reconcile.py``
(an agent on_call or reserved whose phone stays idle, a ready agent whose phone is busy with a call outside
routing, an unregistered phone) and ``cti/router/resync.py`` (calls that ended or moved while nobody looked,
calls to follow again after a restart, a caller on hold that Redis lost); each correction here is a
conditional store step like the others, counted and logged (``route.reconciled``).

Nothing here pushes to agents: screen pops come from the call model, which offers a call on the
``DialBegin`` to an agent's endpoint (``cti/model/reducer.py``).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, Protocol

import structlog
from redis.exceptions import RedisError, ResponseError

from cti.agents import AgentRegistry, device_of
from cti.ami.codec import Message, UnsafeValueError
from cti.ami.errors import AmiActionError, AmiConnectionError, AmiTimeout
from cti.config import AgentConfig, RoutingModeConfig
from cti.pipeline import ListActions
from cti.router import agent_state, resync
from cti.router.agent_state import AgentStateError, UnknownAgentError
from cti.router.intake import Intake, waiting_call
from cti.router.lag import EventLag
from cti.router.reconcile import MARKS, Correction, Reconciler, Rules
from cti.router.store import RouterStore
from cti.supervise import raise_if_cancelling
from routing.config import RoutingConfig
from routing.decide import explain_call
from routing.escalation import next_escalation_ms, wait_ms
from routing.model import AgentStatus, WaitingCall
from routing.score import call_key, call_score
from routing.trace import Decision, Trace

__all__ = ["HANDLED_EVENTS", "Actions", "Explanation", "RoutingController", "RoutingCounters"]

log = structlog.get_logger(__name__)

#: The AMI events :meth:`RoutingController.on_event` keeps; every other is dropped on arrival.
HANDLED_EVENTS: Final = frozenset({
    "UserEvent", "DialBegin", "DialEnd", "Hangup", "BridgeEnter", "BlindTransfer", "QueueCallerJoin",
    "DeviceStateChange",
})

#: How Asterisk 22 says the channel is gone: Setvar (and Hangup, Getvar) ``No such channel``; Redirect
#: ``Channel does not exist: <name>`` (ctiedge capture); the simulator ``Channel specified does not exist``.
_GONE: Final = ("No such channel", "Channel does not exist", "Channel specified does not exist")

Side = Literal["call", "agent"]
Phase = Literal["waiting", "offered", "ringing", "talking", "done"]


class Actions(Protocol):
    """What the controller needs of the AMI client (:meth:`cti.ami.client.AmiClient.action`)."""

    def action(self, name: str, fields: Mapping[str, str]) -> Awaitable[Message]: ...


@dataclass(slots=True)
class RoutingCounters:
    """Outcomes, counted on the server that made each change (the app copies them into Prometheus)."""

    offered: int = 0            # Redirects that went through
    answered: int = 0
    abandoned_hold: int = 0     # the caller hung up waiting (or before the offer's dial began)
    abandoned_ringing: int = 0  # ... while the agent's phone rang (no RONA: the agent is ready again)
    rona: int = 0               # no answer (or busy, unavailable): requeued, the agent not ready
    gone: int = 0               # the channel was gone when offered (or a value could not be sent)
    fallback: int = 0           # left for Asterisk's Queue() (the hold limit)
    offer_failed: int = 0       # AMI down, timed out or refusing: requeued, retried by the sweep
    offer_expired: int = 0      # a reservation whose dial never began (its server died?): requeued
    redis_errors: int = 0       # events and timers that failed on Redis (logged, skipped)
    # Reconciliation against the phones' device states (cti/router/reconcile.py: the names are its kinds):
    stuck_on_call: int = 0      # on_call, the phone idle past the grace: the call's end was lost; wrapped up
    stuck_reserved: int = 0     # reserved, the same: the offer's end was lost; requeued, the agent ready
    busy_outside: int = 0       # ready with a busy phone (a call routing did not make): on_call meanwhile
    busy_outside_over: int = 0  # ... that phone idle again: wrap-up, then ready
    phone_unavailable: int = 0  # ready with an unregistered phone: not ready
    phone_available: int = 0    # ... registered again: ready
    # Resync against CoreShowChannels after each login (cti/router/resync.py):
    resync_abandoned: int = 0   # a waiting call whose channel was gone: out of the store
    resync_freed: int = 0       # a reserved call whose channel was gone: out, its agent ready
    resync_requeued: int = 0    # a reserved call back on hold (its CtiNoAnswer lost): waiting, the agent ready
    resync_ended: int = 0       # an agent on_call whose call's channel was gone: wrapped up
    resync_enqueued: int = 0    # a channel on hold the store lacked (Redis lost it): queued again
    resync_followed: int = 0    # calls up that this server did not follow (a restart): followed again


@dataclass(frozen=True, slots=True)
class Explanation:
    """One decision about a call: when, to whom, whose side asked (a new call or a free agent), why."""

    at_ms: int
    agent: str
    side: Side
    trace: Trace


@dataclass(slots=True)
class _Call:
    """What this server knows of a held call (the store knows the rest)."""

    id: str                     # the held channel's Uniqueid: the router's call id
    channel: str                # the channel to Redirect
    linkedid: str
    waiting: WaitingCall
    phase: Phase = "waiting"
    agent: str | None = None    # offered to, ringing or talking
    agent_leg: str | None = None  # Uniqueid of the agent's channel the dial created


#: The event that marks a resync's place among the events (:meth:`RoutingController.on_connect`); no
#: Asterisk event has this name, and :meth:`RoutingController.on_event` never keeps it.
_RESYNC_EVENT: Final = "CtiRouterResync"


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What Asterisk said at a login (or a periodic resync): its channels and device states."""

    channels: tuple[Message, ...]
    devices: tuple[Message, ...]
    at_ms: int
    login: int  # the AMI client's login count: the same as the last one's on a live link


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _is_gone(message: str) -> bool:
    return message.startswith(_GONE)


def _lost_config(exc: RedisError) -> bool:
    """Redis lost the routing state (restarted without persistence, flushed)."""
    return isinstance(exc, ResponseError) and "no routing config" in str(exc)


class RoutingController:
    """Routes the held callers of CTI routing mode. One per server; see the module docstring.

    ``agents`` are the configured agents (``interface`` is what CTI_ENDPOINT dials); their routing
    profiles come from ``store.config.agents``. ``call_vars(linkedid)`` gives a call's ``CTI_*``
    variables (the call model keeps them) and ``customer_of(linkedid)`` its directory record.
    """

    def __init__(self, store: RouterStore, actions: Actions, agents: Iterable[AgentConfig], mode: RoutingModeConfig,
                 *, call_vars: Callable[[str], Mapping[str, str] | None],
                 customer_of: Callable[[str], Mapping[str, Any] | None],
                 now_ms: Callable[[], int] = _wall_ms, traces_per_call: int = 8, traced_calls: int = 1024,
                 max_calls: int = 100_000, clock_rate: float = 1.0) -> None:
        """``clock_rate``: how much faster ``now_ms`` runs than the event loop's clock (``cti simulate``
        accelerates simulated time); the timers' waits in :meth:`run` are divided by it."""
        self._store = store
        self._actions = actions
        self._agents = AgentRegistry(agents)
        self._mode = mode
        self._call_vars = call_vars
        self._customer_of = customer_of
        self._now = now_ms
        self._traces_per_call = traces_per_call
        self._traced_calls = traced_calls
        self._max_calls = max_calls
        self.counters = RoutingCounters()
        self._events: deque[Message] = deque()
        self._wake = asyncio.Event()
        self._calls: OrderedDict[str, _Call] = OrderedDict()
        self._legs: dict[str, str] = {}  # agent channel Uniqueid -> call id
        self._tried: OrderedDict[str, int] = OrderedDict()  # call id -> when this server last matched it
        self._traces: OrderedDict[str, deque[Explanation]] = OrderedDict()
        self._wrap_due: list[int] = []  # heap of wrap-up ends this server started
        self._next_sweep_ms: int | None = None
        self._timers_held_until_ms = 0  # after a failed tick: not before this
        self._sweep_ms = max(1, int(mode.sweep_s * 1000))
        self._clock_rate = clock_rate
        self._reconciler = Reconciler(self._agents)
        self._lag = EventLag()
        self._snapshots: deque[_Snapshot] = deque()
        self._resync_login: int | None = None
        self._missing: frozenset[str] = frozenset()  # calls the last resync found gone (a live link confirms)
        self._handlers: dict[str, Callable[[Message], Awaitable[None]]] = {
            "UserEvent": self._on_user_event, "DialBegin": self._on_dial_begin, "DialEnd": self._on_dial_end,
            "Hangup": self._on_hangup, "BridgeEnter": self._on_bridge_enter, "BlindTransfer": self._on_blind_transfer,
            "QueueCallerJoin": self._on_queue_join, "DeviceStateChange": self._on_device_state,
            _RESYNC_EVENT: self._on_resync,
        }

    @property
    def store(self) -> RouterStore:
        """The shared routing state (for tools and tests: statuses, waiting calls, reservations)."""
        return self._store

    @property
    def config(self) -> RoutingConfig:
        return self._store.config

    @property
    def pending(self) -> int:
        """Events received and not yet handled."""
        return len(self._events)

    # ----- the event path ---------------------------------------------------------------------------

    def on_event(self, msg: Message) -> None:
        """The AMI client's callback: keep the event for :meth:`run`, never wait."""
        if msg.event in HANDLED_EVENTS:
            self._events.append(msg)
            self._wake.set()

    async def run(self) -> None:
        """Start (:meth:`start`), then handle events in order and the timers between them, for ever."""
        await self.start()
        # redis-py can swallow a cancellation that lands inside a command: check after each await, or
        # a stop that came during start-up or a Redis step would leave this loop running for ever.
        raise_if_cancelling()
        while True:
            while self._events:
                await self.handle(self._events.popleft())
                raise_if_cancelling()
                if self._timers_due():
                    await self.tick()
                    raise_if_cancelling()
            if self._timers_due():
                await self.tick()
                raise_if_cancelling()
            self._wake.clear()
            if self._events:
                continue
            try:
                async with asyncio.timeout(self._seconds_to_timer()):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def drain(self) -> int:
        """Handle every event received so far, now (tests and tools; :meth:`run` does this itself)."""
        handled = 0
        while self._events:
            await self.handle(self._events.popleft())
            handled += 1
        return handled

    async def start(self) -> None:
        """Put this server's routing config in force, add the configured agents the store lacks as
        ready (the others keep their status: another server runs, or this one restarted), and offer
        each ready agent a call."""
        await self._store.apply_config()
        now = self._now()
        new = [a.id for a in self._agents
               if await self._store.init_agent(self.config.agent_state(a.id, status="ready"), now_ms=now)]
        log.info("route.started", agents=len(self._agents), new_agents=new, hold_context=self._mode.hold_context,
                 connect_context=self._mode.connect_context)
        self._next_sweep_ms = now + self._sweep_ms
        for agent in self._agents:
            raise_if_cancelling()
            await self._match_agent(agent.id)

    async def handle(self, msg: Message) -> None:
        """One event, now. A Redis failure is logged and the event skipped: the sweep, the next
        event of the call or (at worst) the dialplan's hold limit picks the call up again."""
        handler = self._handlers.get(msg.event or "")
        self._lag.saw(msg.timestamp(), self._now())
        if msg.event in ("DialBegin", "DialEnd"):  # anyone's dial to an agent's phone: not a lost call's end
            self._reconciler.observe_dial(msg.event or "", msg.get("DestChannel") or "", self._now())
        if handler is not None:
            await self._guarded(handler(msg), msg.event or "")

    async def tick(self) -> None:
        """The timers, by the injected clock: wrap-ups that are over, then the sweep when due. One that
        failed (Redis away) is tried again a sweep interval later, not at once: the loop must not spin."""
        if not await self._guarded(self._tick(), "tick"):
            self._timers_held_until_ms = self._now() + self._sweep_ms

    async def _guarded(self, step: Awaitable[None], what: str) -> bool:
        try:
            await step
            return True
        except RedisError as exc:
            raise_if_cancelling()
            self.counters.redis_errors += 1
            log.error("route.redis_failed", during=what, error=repr(exc))
            if _lost_config(exc):
                await self._recover()
            return False

    async def _recover(self) -> None:
        """Redis came back empty: the config, the calls this server holds on hold (in their places)
        and the agents (as at start-up) go back in, and the agents are offered the calls."""
        try:
            await self._store.apply_config()
            held = [c for c in self._calls.values() if c.phase in ("waiting", "offered")]
            for call in held:
                call.phase, call.agent = "waiting", None
                await self._store.enqueue(call.waiting, channel=call.channel)
            log.warning("route.recovered", calls=len(held))
            await self.start()
        except RedisError as exc:
            raise_if_cancelling()
            log.error("route.recover_failed", error=repr(exc))

    # ----- timers -----------------------------------------------------------------------------------

    def _next_timer_ms(self) -> int | None:
        due = [t for t in (self._next_sweep_ms, self._wrap_due[0] if self._wrap_due else None) if t is not None]
        return max(min(due), self._timers_held_until_ms) if due else None

    def _timers_due(self) -> bool:
        at = self._next_timer_ms()
        return at is not None and self._now() >= at

    def _seconds_to_timer(self) -> float:
        at = self._next_timer_ms()
        clock_s = self._sweep_ms / 1000 if at is None else max(0.0, (at - self._now()) / 1000)
        return clock_s / self._clock_rate

    async def _tick(self) -> None:
        now = self._now()
        while self._wrap_due and self._wrap_due[0] <= now:
            heapq.heappop(self._wrap_due)
        for agent_id in await self._store.end_wrap_ups(now):
            log.info("route.ready", agent=agent_id, after="wrap_up")
            await self._match_agent(agent_id)
        if self._next_sweep_ms is None or now >= self._next_sweep_ms:
            self._next_sweep_ms = now + self._sweep_ms
            await self.sweep()

    async def sweep(self) -> None:
        """Requeue reservations no dial followed within ``reservation_timeout_s``, then offer again the
        waiting calls whose escalation has moved on since this server last tried them (a step that
        relaxed the requirements takes effect), best call first, while anyone is ready."""
        now = self._now()
        await self._reconcile(now)
        # Behind the event stream, an offer's DialBegin may still be in the backlog: look back that much more.
        cutoff = now - self._lag.lag_ms() - int(self._mode.reservation_timeout_s * 1000)
        for call_id, agent_id in await self._store.expire_offers(cutoff):
            self.counters.offer_expired += 1
            self._tried.pop(call_id, None)
            call = self._calls.get(call_id)
            if call is not None:
                call.phase, call.agent = "waiting", None
            log.warning("route.offer_expired", call=call_id, agent=agent_id,
                        timeout_s=self._mode.reservation_timeout_s)
            if agent_id:
                await self._match_agent(agent_id)
        if not await self._store.ready_count():
            return
        due = [c for c in await self._store.waiting() if self._retry_due(c, now)]
        for waiting in sorted(due, key=lambda c: self._rank(c, now)):
            await self._match_call(waiting.id, now)

    def _retry_due(self, call: WaitingCall, now: int) -> bool:
        tried = self._tried.get(call.id)
        if tried is None:
            return True
        if call.entry_point not in self.config.entry_points:
            return False
        step_at = next_escalation_ms(call, self.config, tried)
        return step_at is not None and step_at <= now

    def _rank(self, call: WaitingCall, now: int) -> tuple[int, int, str]:
        tier = self.config.tiers.get(call.tier)
        score = -1 if tier is None else call_score(tier, wait_ms(call, now), self.config)
        return call_key(score, call.enqueued_at_ms, call.id)

    # ----- matching and offering --------------------------------------------------------------------

    async def _match_call(self, call_id: str, now: int) -> None:
        self._tried[call_id] = now
        self._tried.move_to_end(call_id)
        while len(self._tried) > self._max_calls:
            self._tried.popitem(last=False)
        decision = await self._store.match_for_call(call_id, now)
        if decision is not None and await self._offer(decision, "call"):
            await self._match_agent(decision.agent_id)

    async def _match_agent(self, agent_id: str) -> None:
        """The agent is free: their best call, and again while the calls offered turn out gone."""
        while True:
            decision = await self._store.match_for_agent(agent_id, self._now())
            if decision is None or not await self._offer(decision, "agent"):
                return

    async def _offer(self, d: Decision, side: Side) -> bool:
        """Ring the agent through the dialplan. True if the call was gone and this server freed the
        agent again (the caller offers them the next call); an AMI failure is left to the sweep, which
        keeps a dead link from spinning through every waiting call."""
        self._explain(d, side)
        agent = self._agents.get(d.agent_id)
        call = self._calls.get(d.call_id) or await self._adopt(d.call_id)
        if agent is None or call is None:
            why = "agent not configured on this server" if agent is None else "channel unknown"
            await self._offer_failed(d, call.channel if call is not None else None, why, retry=agent is not None)
            return False
        channel = call.channel
        call.phase, call.agent = "offered", agent.id
        try:
            for name, fields in self._offer_actions(channel, agent):
                await self._actions.action(name, fields)
        except AmiActionError as exc:
            if _is_gone(exc.message):
                return await self._gone(d, channel, f"{exc.action}: {exc.message}")
            await self._offer_failed(d, channel, f"{exc.action}: {exc.message}")
            return False
        except UnsafeValueError as exc:
            return await self._gone(d, channel, str(exc))
        except (AmiConnectionError, AmiTimeout) as exc:
            await self._offer_failed(d, channel, repr(exc))
            return False
        self.counters.offered += 1
        log.info("route.offered", call=d.call_id, agent=agent.id, channel=channel, endpoint=agent.interface)
        return False

    def _offer_actions(self, channel: str, agent: AgentConfig) -> list[tuple[str, dict[str, str]]]:
        ring_s = str(self.config.reservation.offer_timeout_s)
        return [
            *(("Setvar", {"Channel": channel, "Variable": var, "Value": value})
              for var, value in (("CTI_AGENT", agent.id), ("CTI_ENDPOINT", agent.interface), ("CTI_RING_S", ring_s))),
            ("Redirect", {"Channel": channel, "Context": self._mode.connect_context, "Exten": "s", "Priority": "1"}),
        ]

    async def _gone(self, d: Decision, channel: str, why: str) -> bool:
        settled = await self._store.settle(d.call_id, agent=d.agent_id, agent_status="ready", now_ms=self._now())
        if settled.state is not None:
            self.counters.gone += 1
        log.warning("route.gone", call=d.call_id, agent=d.agent_id, channel=channel, reason=why)
        self._forget(d.call_id)
        return settled.agent == d.agent_id

    async def _offer_failed(self, d: Decision, channel: str | None, why: str, *, retry: bool = True) -> None:
        """Give the call back in its place and the agent their readiness; ``retry``: the sweep tries
        the call again (not for an agent this server cannot ring: it would only pick them again)."""
        requeued = await self._store.requeue(d.call_id, agent_status="ready", agent=d.agent_id)
        if requeued:
            self.counters.offer_failed += 1
        if retry:
            self._tried.pop(d.call_id, None)
        call = self._calls.get(d.call_id)
        if call is not None:
            call.phase, call.agent = "waiting", None
        log.warning("route.offer_failed", call=d.call_id, agent=d.agent_id, channel=channel, reason=why,
                    requeued=requeued)

    # ----- explainability ---------------------------------------------------------------------------

    def _explain(self, d: Decision, side: Side) -> None:
        t = d.trace
        passed = t.agents_passed if side == "call" else t.calls_passed
        req = t.requirements
        log.info("route.matched", call=d.call_id, agent=d.agent_id, side=side, step=t.step, wait_ms=t.wait_ms,
                 score=t.score, skills=dict(req.skills), any_of=dict(req.any_of), language=req.language,
                 preferred=t.preferred_agent, held_for_preferred=t.waits_for_preferred,
                 passed=[f"{p.id}:{p.reason}" for p in passed])
        kept = self._traces.get(d.call_id)
        if kept is None:
            kept = self._traces[d.call_id] = deque(maxlen=self._traces_per_call)
            while len(self._traces) > self._traced_calls:
                self._traces.popitem(last=False)
        else:
            self._traces.move_to_end(d.call_id)
        kept.append(Explanation(self._now(), d.agent_id, side, t))

    def explain(self, call_id: str) -> tuple[Explanation, ...]:
        """The last decisions about a call (oldest first), from this server; empty if none kept."""
        return tuple(self._traces.get(call_id, ()))

    async def why_waiting(self, call_id: str) -> Trace | None:
        """Why a waiting call has no agent now: every agent with the reason they cannot take it
        (:func:`routing.decide.explain_call` over the store's state). None if it is not waiting."""
        call = next((c for c in await self._store.waiting() if c.id == call_id), None)
        if call is None:
            return None
        return explain_call(call, await self._store.agents(), self.config, self._now())

    # ----- the calls --------------------------------------------------------------------------------

    async def _adopt(self, call_id: str) -> _Call | None:
        """A call another server queued before this one saw it (this one started later): followed from
        here on, so its dial is seen to begin (else the sweep would take it for a stale offer)."""
        held = await self._store.held_call(call_id)
        if held is None or held[1] is None:
            return None
        call = _Call(call_id, held[1], call_id, held[0])
        self._track(call)
        return call

    def _track(self, call: _Call) -> None:
        old = self._calls.get(call.id)
        if old is not None and old.agent_leg is not None:
            self._legs.pop(old.agent_leg, None)
        self._calls[call.id] = call
        self._calls.move_to_end(call.id)
        while len(self._calls) > self._max_calls:
            old_id, _ = self._calls.popitem(last=False)
            log.warning("route.forgotten", call=old_id, reason="too many calls tracked")

    def _forget(self, call_id: str) -> None:
        call = self._calls.pop(call_id, None)
        if call is not None and call.agent_leg is not None:
            self._legs.pop(call.agent_leg, None)
        self._tried.pop(call_id, None)

    def _agent_named(self, name: str | None) -> str | None:
        """CtiNoAnswer's ``Agent``: an agent id (CTI_AGENT), or an extension (older dialplans)."""
        if not name:
            return None
        agent = self._agents.get(name) or self._agents.by_extension(name)
        return agent.id if agent is not None else None

    async def _on_user_event(self, msg: Message) -> None:
        kind = msg.get("UserEvent")
        if kind == "CtiHold":
            await self._on_hold(msg)
        elif kind == "CtiNoAnswer":
            await self._on_no_answer(msg)
        elif kind == "CtiFallback":
            await self._left_router(msg.get("Uniqueid") or "", msg.get("Queue"))

    async def _on_hold(self, msg: Message) -> None:
        """The caller waits: queue them (again, after a no-answer: the store keeps their first enqueue
        time) and look for an agent."""
        f = msg.fields
        call_id, channel = f.get("Uniqueid"), f.get("Channel")
        if not call_id or not channel:
            log.warning("route.malformed", ami_event="CtiHold", missing="Uniqueid" if not call_id else "Channel")
            return
        linkedid = f.get("Linkedid") or call_id
        now = self._now()
        intake = waiting_call(call_id, self.config, now_ms=now, entry=f.get("Entry"),
                              variables=self._call_vars(linkedid) or {}, customer=self._customer_of(linkedid),
                              agents=self._agents.ids)
        waiting = intake.call
        known = self._calls.get(call_id)
        if known is not None:
            waiting = replace(waiting, enqueued_at_ms=known.waiting.enqueued_at_ms)
        self._track(_Call(call_id, channel, linkedid, waiting))
        if intake.ignored:
            log.warning("route.intake_ignored", call=call_id, ignored=list(intake.ignored))
        new = await self._store.enqueue(waiting, channel=channel)
        log.info("route.waiting", call=call_id, linkedid=linkedid, channel=channel, entry_point=waiting.entry_point,
                 tier=waiting.tier, language=waiting.language, preferred=waiting.preferred_agent, again=not new)
        await self._match_call(call_id, now)

    async def _on_no_answer(self, msg: Message) -> None:
        """RONA (or busy, unavailable): the call waits again in its place, the agent goes not ready;
        the caller is back on hold and a fresh CtiHold offers the call again."""
        call_id = msg.get("Uniqueid") or ""
        call = self._calls.get(call_id)
        agent_id = self._agent_named(msg.get("Agent")) or (call.agent if call is not None else None)
        reason = self.config.reservation.rona_not_ready_reason
        requeued = await self._store.requeue(call_id, agent_status="not_ready", reason=reason, agent=agent_id)
        if call is not None and (requeued or call.agent in (None, agent_id)):  # not a late report of an old offer
            if call.agent_leg is not None:
                self._legs.pop(call.agent_leg, None)
            call.phase, call.agent, call.agent_leg = "waiting", None, None
        if requeued:
            self.counters.rona += 1
            log.info("route.rona", call=call_id, agent=agent_id, status=msg.get("Status"), not_ready_reason=reason)

    async def _left_router(self, call_id: str, queue: str | None) -> None:
        """CtiFallback, or the held channel joined app_queue: Asterisk's queue has the call now."""
        if not call_id:
            return
        settled = await self._store.settle(call_id, agent_status="ready", now_ms=self._now())
        self._forget(call_id)
        if settled.state is not None:
            self.counters.fallback += 1
            log.info("route.fallback", call=call_id, queue=queue, was=settled.state, agent=settled.agent)
        if settled.agent is not None:
            await self._match_agent(settled.agent)

    async def _on_queue_join(self, msg: Message) -> None:
        call_id = msg.get("Uniqueid") or ""
        if call_id in self._calls:
            await self._left_router(call_id, msg.get("Queue"))

    async def _on_dial_begin(self, msg: Message) -> None:
        f = msg.fields
        call = self._calls.get(f.get("Uniqueid", ""))
        dest = f.get("DestChannel")
        agent = self._agents.by_device(device_of(dest)) if call is not None and dest else None
        if call is None or agent is None:
            return  # not a held caller ringing one of our agents (app_queue's rings, other dials)
        if call.agent not in (None, agent.id):
            log.warning("route.unexpected_dial", call=call.id, offered=call.agent, dialled=agent.id)
        call.phase, call.agent = "ringing", agent.id
        leg = f.get("DestUniqueid")
        if leg:
            call.agent_leg = leg
            self._legs[leg] = call.id
        if await self._store.mark_dialed(call.id, agent.id):
            log.info("route.ringing", call=call.id, agent=agent.id, agent_channel=dest)

    async def _on_dial_end(self, msg: Message) -> None:
        f = msg.fields
        call = self._calls.get(f.get("Uniqueid", ""))
        if call is None or call.phase in ("talking", "done"):
            return
        dest = f.get("DestChannel")
        agent = self._agents.by_device(device_of(dest)) if dest else None
        status = f.get("DialStatus")
        if status == "ANSWER":
            await self._answered(call, agent.id if agent is not None else call.agent)
        elif status == "CANCEL":  # the caller hung up while it rang (or was taken away from the dial)
            await self._caller_left(call)
            self._forget(call.id)
        # NOANSWER, BUSY, CHANUNAVAIL, CONGESTION: the dialplan's CtiNoAnswer follows

    async def _on_bridge_enter(self, msg: Message) -> None:
        """The agent's channel entering the caller's bridge answers too (when no DialEnd says so)."""
        call_id = self._legs.get(msg.get("Uniqueid") or "")
        call = self._calls.get(call_id) if call_id else None
        if call is not None and call.phase == "ringing":
            await self._answered(call, call.agent)

    async def _answered(self, call: _Call, agent_id: str | None) -> None:
        if agent_id is None:
            return
        call.phase, call.agent = "talking", agent_id
        now = self._now()
        settled = await self._store.settle(call.id, agent=agent_id, agent_status="on_call", keep_call=True,
                                           now_ms=now)
        if settled.state is None:
            return  # another server settled it
        if not settled.named:  # answered by someone the store had not reserved: they are on it all the same
            # (a dial that outlived its expired offer): ready -> on_call, as for a call outside routing
            # (a phone already seen busy has them on_call for that: cti/router/reconcile.py).
            moved = (await self._store.transition(agent_id, "on_call", expect={"ready"}, now_ms=now,
                                                  call=call.id)).changed
            log.warning("route.unexpected_answer", call=call.id, agent=agent_id, reserved=settled.agent, moved=moved)
            if settled.agent is not None:
                await self._match_agent(settled.agent)
        self.counters.answered += 1
        log.info("route.answered", call=call.id, agent=agent_id, wait_ms=now - call.waiting.enqueued_at_ms)

    async def _caller_left(self, call: _Call) -> None:
        """The caller is gone: out of the store if still there, the agent of an offer ready again."""
        settled = await self._store.settle(call.id, agent_status="ready", now_ms=self._now())
        if settled.state in ("waiting", "offered"):
            self.counters.abandoned_hold += 1
            log.info("route.abandoned", call=call.id, phase="hold", agent=settled.agent)
        elif settled.state == "ringing":
            self.counters.abandoned_ringing += 1
            log.info("route.abandoned", call=call.id, phase="ringing", agent=settled.agent)
        if settled.agent is not None:
            await self._match_agent(settled.agent)

    async def _on_hangup(self, msg: Message) -> None:
        uid = msg.get("Uniqueid") or ""
        call = self._calls.get(uid)
        if call is not None:  # the caller's side
            await self._caller_left(call)
            if call.phase == "talking":
                await self._wrap_up(call, "caller hung up")
            self._forget(uid)
            return
        call_id = self._legs.get(uid)
        call = self._calls.get(call_id) if call_id else None
        if call is not None and call.phase == "talking":  # the agent's side, first
            await self._wrap_up(call, "agent hung up")

    async def _on_blind_transfer(self, msg: Message) -> None:
        """The agent handed the caller on: their part is over. The caller is no longer ours either (a
        transfer back into the hold context brings a fresh CtiHold)."""
        f = msg.fields
        if f.get("Result", "Success") != "Success":
            return
        call = self._calls.get(f.get("TransfereeUniqueid", ""))
        if call is None:
            call = self._calls.get(self._legs.get(f.get("TransfererUniqueid", ""), ""))
        if call is None or call.phase != "talking":
            return
        log.info("route.transferred", call=call.id, agent=call.agent,
                 to=f"{f.get('Extension', '')}@{f.get('Context', '')}")
        await self._wrap_up(call, "blind transfer")
        self._forget(call.id)

    async def _wrap_up(self, call: _Call, why: str) -> None:
        """The agent's part of the call is over: wrap-up, then ready (by the timer, on any server)."""
        agent_id, call.phase = call.agent, "done"
        if agent_id is None:
            return
        now = self._now()
        until = now + self._wrapup_ms(call.waiting.entry_point)
        if await self._step(agent_id, "wrap_up", expect={"on_call"}, now_ms=now, expect_call=call.id, call=call.id,
                            wrap_until_ms=until):
            heapq.heappush(self._wrap_due, until)
            log.info("route.wrap_up", agent=agent_id, call=call.id, until_ms=until, reason=why)

    def _wrapup_ms(self, entry_point: str) -> int:
        """The entry point's own ``wrapup_s`` if it sets one, else the routing config's ``wrapup_s``."""
        if entry_point in self.config.entry_points:
            return self.config.wrapup_s_for(entry_point) * 1000
        return self.config.wrapup_s * 1000

    async def _step(self, agent_id: str, status: AgentStatus, *, expect: Collection[AgentStatus], now_ms: int,
                    expect_call: str | None = None, call: str | None = None, wrap_until_ms: int | None = None) -> bool:
        """A routing step of the agent's state machine, applied only from ``expect`` (for ``expect_call``)."""
        agent_state.check(agent_id, expect, status)
        moved = await self._store.transition(agent_id, status, expect=expect, now_ms=now_ms, expect_call=expect_call,
                                             call=call, wrap_until_ms=wrap_until_ms)
        return moved.changed

    # ----- reconciliation: the store against Asterisk's phones and channels --------------------------
    # What to correct is decided in cti/router/reconcile.py (device states) and cti/router/resync.py
    # (CoreShowChannels); here each correction is applied as a conditional store step, counted and logged.

    async def on_connect(self, client: ListActions, channels: Sequence[Message]) -> None:
        """After each AMI login and periodic resync (``EventPipeline.after_resync``: the ordered event stream
        waits for it): read every device state (``DeviceStateList``), then queue the check of the store
        against them and ``channels`` (the ``CoreShowChannels`` the call model resynchronised from) behind the
        events received so far, for :meth:`run`. Never raises: a failure here would cut the AMI link."""
        at = self._now()
        try:
            _, devices = await client.action_list("DeviceStateList")
        except (AmiActionError, AmiConnectionError, AmiTimeout) as exc:
            log.warning("route.device_states_unread", error=str(exc), effect="phones followed from their changes")
            devices = []
        self._snapshots.append(_Snapshot(tuple(channels), tuple(devices), at, client.stats.connects))
        self._events.append(Message(fields={"Event": _RESYNC_EVENT}))
        self._wake.set()

    async def _on_device_state(self, msg: Message) -> None:
        now = self._now()
        agent_id = self._reconciler.observe_state(msg.get("Device") or "", msg.get("State") or "", now, live=True)
        if agent_id is not None:
            await self._reconcile(now, [agent_id], changed={agent_id})

    async def _reconcile(self, now: int, agents: Collection[str] | None = None, *,
                         changed: Collection[str] = ()) -> None:
        """Check ``agents`` (default: every agent whose phone has a reading) against their phones; ``changed``:
        those whose phone's state was just read or changed."""
        ids = self._reconciler.followed() if agents is None else agents
        if not ids:
            return
        rules = Rules.of(self._mode, self.config).behind(self._lag.lag_ms())
        for agent_id, seen in (await self._store.agent_calls(ids)).items():
            fix = self._reconciler.check(agent_id, seen.status, seen.call, now_ms=now, rules=rules,
                                         changed=agent_id in changed)
            if fix is not None:
                await self._correct(agent_id, fix, now)

    async def _correct(self, agent_id: str, fix: Correction, now: int) -> None:
        """One correction, only if the store still has what it was decided on."""
        if fix.kind == "stuck_reserved":
            assert fix.expect_call is not None
            moved = await self._store.requeue(fix.expect_call, agent_status="ready", agent=agent_id)
            call = self._calls.get(fix.expect_call)
            if moved and call is not None:
                call.phase, call.agent = "waiting", None
            self._tried.pop(fix.expect_call, None)  # the sweep offers it again
        else:
            agent_state.check(agent_id, {fix.before}, fix.after)
            moved = (await self._store.transition(agent_id, fix.after, expect={fix.before}, now_ms=now,
                                                  expect_call=fix.expect_call, reason=fix.reason, call=fix.call,
                                                  wrap_until_ms=fix.wrap_until_ms)).changed
        if not moved:
            return
        setattr(self.counters, fix.kind, getattr(self.counters, fix.kind) + 1)
        call_id = None if fix.expect_call in MARKS else fix.expect_call
        report = log.warning if fix.kind.startswith("stuck") else log.info
        report("route.reconciled", source="device", kind=fix.kind, agent=agent_id, call=call_id, before=fix.before,
               after=fix.after, reason=fix.reason, why=fix.why)
        if fix.wrap_until_ms is not None:
            heapq.heappush(self._wrap_due, fix.wrap_until_ms)
        if fix.kind == "stuck_on_call" and call_id is not None:
            self._forget(call_id)
        if fix.after == "ready":
            await self._match_agent(agent_id)

    async def _on_resync(self, _msg: Message) -> None:
        """The store against a login's channels and device states (:func:`cti.router.resync.plan`)."""
        if not self._snapshots:
            return
        snap = self._snapshots.popleft()
        now = self._now()
        changed = {a for d in snap.devices
                   if (a := self._reconciler.observe_state(d.get("Device") or "", d.get("State") or "", now,
                                                           live=False)) is not None}
        live_link = snap.login == self._resync_login
        self._resync_login = snap.login
        found = resync.plan(resync.channels_of(snap.channels), await self._store.held_calls(),
                            await self._store.agent_calls(), hold_context=self._mode.hold_context,
                            taken_at_ms=snap.at_ms, agent_devices=self._reconciler.devices,
                            followed=self._calls.keys(), confirm=self._missing if live_link else None)
        self._missing = found.missing
        for step in found.steps:
            raise_if_cancelling()
            await self._guarded(self._resync_step(step, snap.at_ms), "resync")
        log.info("route.resynced", live_link=live_link, channels=len(snap.channels), devices=len(snap.devices),
                 steps=len(found.steps))
        await self._reconcile(now, changed=changed)

    async def _resync_step(self, step: resync.Step, at_ms: int) -> None:
        now = self._now()
        match step:
            case resync.Gone(call_id, state, agent):
                settled = await self._store.settle(call_id, agent_status="ready", now_ms=now)
                self._forget(call_id)
                if settled.state is not None:
                    kind = "resync_abandoned" if state == "waiting" else "resync_freed"
                    setattr(self.counters, kind, getattr(self.counters, kind) + 1)
                    log.warning("route.reconciled", source="resync", kind=kind, call=call_id, agent=settled.agent,
                                before=settled.state, after="gone", why="its channel is gone")
                if settled.agent is not None:
                    await self._match_agent(settled.agent)
            case resync.FellBack(call_id):
                await self._left_router(call_id, None)
            case resync.BackOnHold(call_id, agent):
                if await self._store.requeue(call_id, agent_status="ready", agent=agent):
                    self.counters.resync_requeued += 1
                    self._tried.pop(call_id, None)
                    known = self._calls.get(call_id)
                    if known is not None:
                        known.phase, known.agent = "waiting", None
                    log.warning("route.reconciled", source="resync", kind="resync_requeued", call=call_id,
                                agent=agent, before="ringing", after="waiting", why="back on hold: no answer lost")
                    if agent is not None:
                        await self._match_agent(agent)
            case resync.Follow():
                waiting = step.waiting or self._intake(step.call_id, step.linkedid, now).call
                self._track(_Call(step.call_id, step.channel, step.linkedid, waiting, phase=step.phase,
                                  agent=step.agent, agent_leg=step.agent_leg))
                if step.agent_leg is not None:
                    self._legs[step.agent_leg] = step.call_id
                self.counters.resync_followed += 1
                log.info("route.followed", call=step.call_id, phase=step.phase, agent=step.agent,
                         agent_leg=step.agent_leg)
            case resync.TalkOver(agent, call_id):
                known = self._calls.get(call_id)
                until = now + (self._wrapup_ms(known.waiting.entry_point) if known else self.config.wrapup_s * 1000)
                if await self._step(agent, "wrap_up", expect={"on_call"}, now_ms=now, expect_call=call_id,
                                    call=call_id, wrap_until_ms=until):
                    heapq.heappush(self._wrap_due, until)
                    self.counters.resync_ended += 1
                    log.warning("route.reconciled", source="resync", kind="resync_ended", call=call_id, agent=agent,
                                before="on_call", after="wrap_up", why="its call's channel is gone")
                self._forget(call_id)
            case resync.Enqueue(call_id, channel, linkedid, age_ms):
                start = (self._call_vars(linkedid) or {}).get("CTI_HOLD_START", "")
                waiting = self._intake(call_id, linkedid, min(now, int(start) * 1000 if start.isdigit()
                                                               else at_ms - age_ms)).call
                self._track(_Call(call_id, channel, linkedid, waiting))
                if await self._store.enqueue(waiting, channel=channel):
                    self.counters.resync_enqueued += 1
                    log.warning("route.reconciled", source="resync", kind="resync_enqueued", call=call_id,
                                before=None, after="waiting", why="on hold, and the store lacks it")
                await self._match_call(call_id, now)

    def _intake(self, call_id: str, linkedid: str, enqueued_at_ms: int) -> Intake:
        """A call the router takes up again from the call model's CTI_* variables (no CtiHold seen)."""
        return waiting_call(call_id, self.config, now_ms=enqueued_at_ms, entry=None,
                            variables=self._call_vars(linkedid) or {}, customer=self._customer_of(linkedid),
                            agents=self._agents.ids)

    def kpi_place(self, linkedid: str, entry: str | None) -> tuple[str, str, tuple[str, ...]]:
        """Where the KPIs count a held caller: the entry point, tier and skills routing gives them, from
        the same variables and record as :meth:`_on_hold` (every server, from its own call model)."""
        call = waiting_call(linkedid, self.config, now_ms=0, entry=entry, variables=self._call_vars(linkedid) or {},
                            customer=self._customer_of(linkedid), agents=self._agents.ids).call
        if call.requirements is not None:
            skills = call.requirements.skills
        else:
            skills = self.config.entry_points[call.entry_point].requires.skills
        return call.entry_point, call.tier, tuple(sorted(skills))

    # ----- agents, by hand (CLI, API) ---------------------------------------------------------------

    async def set_ready(self, agent_id: str) -> None:
        """Ready for calls (from not ready, logged out, or wrap-up cut short); offered one at once."""
        await self._by_hand(agent_id, "ready")
        await self._match_agent(agent_id)

    async def set_not_ready(self, agent_id: str, reason: str) -> None:
        """Not ready for one of the routing config's ``not_ready_reasons``."""
        if reason not in self.config.not_ready_reasons:
            raise ValueError(f"unknown not-ready reason {reason!r} (known: {', '.join(self.config.not_ready_reasons)})")
        await self._by_hand(agent_id, "not_ready", reason)

    async def status(self, agent_id: str) -> AgentStatus | None:
        """The agent's status in the store now (None: not in the routing config)."""
        state = await self.store.agent(agent_id)
        return state.status if state is not None else None

    async def log_out(self, agent_id: str) -> None:
        await self._by_hand(agent_id, "logged_out")

    async def extend_wrap_up(self, agent_id: str, seconds: int) -> float:
        """The agent's wrap-up ends ``seconds`` later; when it now ends (epoch seconds). Raises
        :class:`AgentStateError` when they are not in wrap-up."""
        if agent_id not in self._agents:
            raise UnknownAgentError(agent_id)
        until, status = await self._store.extend_wrap_up(agent_id, seconds, now_ms=self._now())
        if status is None:
            raise UnknownAgentError(agent_id)
        if until is None:
            raise AgentStateError(agent_id, status, "wrap_up", manual=True)
        heapq.heappush(self._wrap_due, until)
        log.info("route.wrap_up_extended", agent=agent_id, seconds=seconds, until_ms=until)
        return until / 1000

    async def _by_hand(self, agent_id: str, status: AgentStatus, reason: str | None = None) -> None:
        """Raise :class:`UnknownAgentError` or :class:`AgentStateError` (the store's status decides,
        atomically: the step is applied only from the statuses a person may leave)."""
        if agent_id not in self._agents:
            raise UnknownAgentError(agent_id)
        moved = await self._store.transition(agent_id, status, expect=agent_state.sources(status, manual=True),
                                             now_ms=self._now(), reason=reason)
        if moved.before is None:
            raise UnknownAgentError(agent_id)
        if not moved.changed:
            raise AgentStateError(agent_id, moved.before, status, manual=True)
        log.info("route.agent_status", agent=agent_id, status=status, reason=reason, before=moved.before)
