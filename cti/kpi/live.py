"""The KPI book fed from the call model's domain events, and the wallboard it pushes to.

:class:`KpiService` is a pipeline subscriber (every domain event, in order, on the AMI path: it only
counts) and a notifier sink (``agent.state`` changes what the wallboard shows). Its
:meth:`KpiService.run` task pushes a fresh board to every connected wallboard at most every
``PUSH_EVERY_S`` after something changed, and every ``REFRESH_S`` regardless (the rolling window
moves on and the longest wait grows without any event). Repeat calls are looked up in Redis
(:class:`RedisRepeats`), off the event path, so every server sharing the Redis knows every number.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from cti.agents import AgentRegistry
from cti.config import KpiConfig
from cti.directory.numbers import normalise_number
from cti.kpi.book import KpiBook, KpiRules, VisitEnd, dims_of
from cti.kpi.erlang import agents_needed
from cti.kpi.facts import Arrived, Fact, Handled, RedisFacts, tell
from cti.kpi.wrapups import WrapUp, WrapUps
from cti.model import events as ev
from cti.model.events import DomainEvent
from cti.model.reducer import CallModel
from cti.push.envelope import Envelope
from cti.push.history import AgentView
from cti.router.store import StatusChange
from cti.supervise import raise_if_cancelling

__all__ = ["KpiService", "RedisRepeats", "rules_of"]

log = structlog.get_logger(__name__)

PUSH_EVERY_S = 0.2
REFRESH_S = 5.0
SEND_TIMEOUT_S = 2.0
MAX_UNSAVED = 200_000  # facts kept while Redis is away (a busy day's hours)
STATES = ("logged_out", "ready", "not_ready", "offered", "on_call", "wrap_up")


class Repeats(Protocol):
    async def seen(self, calls: list[tuple[str, str, float]]) -> list[bool]:
        """For each (linkedid, normalised number, time): whether another call from the number came
        within the window of it."""
        ...


class StatusFeed(Protocol):
    """The router's status changes, every one, to a reader of its own (:class:`cti.router.store.RouterStore`)."""

    async def changes_end(self) -> str: ...

    async def changes_after(self, entry_id: str) -> tuple[str, list[StatusChange]]: ...


class RedisRepeats:
    """``{prefix}kpi:seen:{number}``: the number's last call (time and Linkedid), kept for the window.

    Calls are told when they end, not in the order they came, so "within the window" goes either way;
    and the same call told again (by a second server watching the same Asterisk) is not a repeat.
    """

    def __init__(self, redis: aioredis.Redis, *, key_prefix: str, window_s: float) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}kpi:seen:"
        self._window_s = window_s

    async def seen(self, calls: list[tuple[str, str, float]]) -> list[bool]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for linkedid, number, at in calls:
                pipe.set(self._prefix + number, f"{at!r} {linkedid}", ex=max(1, int(self._window_s)), get=True)
            before = await pipe.execute()
        out = []
        for value, (linkedid, _, at) in zip(before, calls, strict=True):
            then, _, other = (value.decode() if isinstance(value, bytes) else value or "").partition(" ")
            out.append(bool(then) and other != linkedid and abs(at - float(then)) <= self._window_s)
        return out


def rules_of(config: KpiConfig, timezone: str) -> KpiRules:
    return KpiRules(service_level_s=config.service_level_s, service_level_by_queue=dict(config.service_level_by_queue),
                    basis=config.service_level_basis, short_abandon_s=config.short_abandon_s,
                    window_s=config.window_s, timezone=timezone)


def tier_of(customer: dict[str, Any] | None) -> str:
    tier = customer.get("vip_tier") if isinstance(customer, dict) else None
    return f"vip{tier}" if isinstance(tier, int) and tier > 0 else "standard"


#: ``(linkedid, the CtiHold's Entry) -> (entry point, tier, skills)``: how CTI routing classes a held
#: caller (:meth:`cti.router.controller.RoutingController.kpi_place`).
Place = Callable[[str, str | None], tuple[str, str, tuple[str, ...]]]


class KpiService:
    def __init__(self, *, config: KpiConfig, timezone: str, model: CallModel, agents: AgentRegistry,
                 view: Callable[[str], AgentView], customer_of: Callable[[str], dict[str, Any] | None],
                 repeats: Repeats | None, clock: Callable[[], float] = time.time, place: Place | None = None,
                 facts: RedisFacts | None = None, retry_s: float = 1.0) -> None:
        self.config = config
        self.book = KpiBook(rules_of(config, timezone))
        self._model = model
        self._agents = agents
        self._view = view
        self._customer_of = customer_of
        self._repeats = repeats
        self._clock = clock
        self._place = place
        self._retry_s = retry_s
        self._facts = facts
        self._loaded: set[str] = set()  # ids of the facts a restart read back: told already
        self._unsaved: list[tuple[str, Fact]] = []
        self._saving: list[tuple[str, Fact]] = []  # the batch on its way to Redis
        self._fact_queued = asyncio.Event()
        self._wraps = WrapUps()
        self._counted: dict[str, int] = {}  # linkedid -> segments already counted (closed ones, in order)
        self._holds_counted: dict[str, int] = {}  # linkedid -> the router's holds already counted
        self._places: dict[str, dict[str | None, tuple[str, str, tuple[str, ...]]]] = {}  # linkedid -> Entry -> place
        self._tiers: dict[str, str] = {}
        self._arrivals: list[tuple[str, str, float]] = []  # (linkedid, number, first join) for the repeat lookup
        self._arrival_queued = asyncio.Event()
        self._changed = asyncio.Event()
        self._boards: set[web.WebSocketResponse] = set()
        self.changes = 0  # facts counted: a test or benchmark waits for one
        self.pushed = 0  # boards sent
        self.saved = 0  # facts written to Redis
        self.restored = 0  # facts read back at start

    # --- fed by the pipeline and the notifier ----------------------------------------------------

    def on_domain_event(self, event: DomainEvent) -> None:
        if event.type == ev.AGENT_STATE or not event.linkedid:
            return
        linkedid, data = event.linkedid, event.data
        segments = data.get("segments") or ()
        done = self._counted.get(linkedid, 0)
        counted = done
        for seg in segments[done:]:
            if seg.get("outcome") is None:
                break  # still waiting (or ringing): counted when its wait ends
            counted += 1
            queue = seg.get("queue")
            if queue is None:
                continue  # a direct hand-off to an agent: no queue to count it in
            at = seg.get("left_at") or event.ts or self._clock()
            self._tell(f"v:{linkedid}:{counted - 1}",
                       VisitEnd(queue=queue, at=at, outcome=seg["outcome"], wait_s=seg.get("wait_s") or 0.0,
                                reason=seg.get("reason"), tier=self._tier(linkedid)))
        if counted != done:
            self._counted[linkedid] = counted
            self._touch()
        holds = data.get("holds")
        if holds:
            if event.type == ev.CALL_HELD:
                self.placed(linkedid, holds[-1].get("entry"))
                self._touch()  # one more caller waiting
            self._count_holds(linkedid, holds, event.ts)
        if event.type == ev.CALL_FINISHED:
            self._finished(linkedid, data, event.ts)

    def _count_holds(self, linkedid: str, holds: list[dict[str, Any]], ts: float | None) -> None:
        """CTI routing mode: each wait for the router is a visit of its entry point (docs/kpis.md)."""
        done = self._holds_counted.get(linkedid, 0)
        counted = done
        for hold in holds[done:]:
            if hold.get("outcome") is None:
                break
            counted += 1
            entry, tier, skills = self.placed(linkedid, hold.get("entry"))
            at = hold.get("left_at") or ts or self._clock()
            self._tell(f"h:{linkedid}:{counted - 1}",
                       VisitEnd(queue=None, entry=entry, skills=skills, tier=tier, at=at, outcome=hold["outcome"],
                                wait_s=hold.get("wait_s") or 0.0, reason=hold.get("reason")))
            if hold["outcome"] == "answered" and hold.get("leg") and hold.get("agent_id"):
                self._wrapped(self._wraps.answered(hold["leg"], hold["agent_id"],
                                                   dims_of(None, tier, entry, skills), at))
        if counted != done:
            self._holds_counted[linkedid] = counted
            self._touch()

    def _wrapped(self, wrap: WrapUp | None) -> None:
        if wrap is not None:
            self._tell(wrap.id, wrap)
            self._touch()

    def _tell(self, fact_id: str, fact: Fact) -> None:
        """Count a fact once (a restart read it back already), and keep it in Redis."""
        if fact_id in self._loaded:
            return
        tell(self.book, fact)
        if self._facts is not None:
            if len(self._unsaved) >= MAX_UNSAVED:
                del self._unsaved[: MAX_UNSAVED // 10]
                log.warning("kpi.facts_dropped", facts=MAX_UNSAVED // 10, why="Redis away too long",
                            effect="a restart will not count them")
            self._unsaved.append((fact_id, fact))
            self._fact_queued.set()

    async def restore(self) -> int:
        """Tell the book today's facts and the rolling window's, as kept in Redis (a restart, or
        another server's day); how many. Redis away: none, and the day starts again (logged)."""
        if self._facts is None:
            return 0
        now = self._clock()
        since = min(now - self.book.rules.window_s, self.book.midnight(now))
        try:
            facts, bad = await self._facts.load(since, now)
        except (RedisError, OSError) as exc:
            log.warning("kpi.restore_failed", error=repr(exc), effect="today's figures start from now")
            return 0
        for fact_id, fact in sorted(facts, key=lambda f: f[1].at):
            self._loaded.add(fact_id)
            if fact.at >= since:
                tell(self.book, fact)
        log.info("kpi.restored", facts=len(facts), unreadable=bad)
        self.restored = len(facts)
        self._touch()
        return len(facts)

    def placed(self, linkedid: str, entry: str | None) -> tuple[str, str, tuple[str, ...]]:
        """Classed once, while the call is live (its variables go with it): a hold that ends at the
        hang-up counts where it waited."""
        if self._place is None:
            return entry or "cti", self._tier(linkedid), ()
        places = self._places.setdefault(linkedid, {})
        place = places.get(entry)
        if place is None:
            place = places[entry] = self._place(linkedid, entry)
        return place

    def publish(self, envelope: Envelope) -> None:
        """A notifier sink: an agent's state changed, and with it the board's agents."""
        if envelope.type == ev.AGENT_STATE:
            self._changed.set()

    def _finished(self, linkedid: str, data: dict[str, Any], ts: float | None) -> None:
        tier = self._tier(linkedid)
        segments = data.get("segments") or ()
        queued = [s for s in segments if s.get("queue") is not None]
        holds = data.get("holds") or ()
        end = data.get("ended_at") or ts or self._clock()
        for n, seg in enumerate(segments):
            if seg.get("queue") is not None and seg.get("outcome") in ("answered", "transferred") \
                    and seg.get("talk_s") is not None:
                self._tell(f"t:{linkedid}:{n}", Handled(dims_of(seg["queue"], tier), end, float(seg["talk_s"])))
        for n, hold in enumerate(holds):
            # the router's hand-off the hold ended in: answered at the very moment the hold ended
            talk = next((s.get("talk_s") for s in segments if s.get("queue") is None
                         and s.get("left_at") == hold.get("left_at") and s.get("talk_s") is not None), None)
            if hold.get("outcome") == "answered" and talk is not None:
                entry, hold_tier, skills = self.placed(linkedid, hold.get("entry"))
                self._tell(f"t:{linkedid}:h{n}", Handled(dims_of(None, hold_tier, entry, skills), end, float(talk)))
        number = normalise_number(data.get("caller"))
        waits = [w.get("joined_at") for w in (*holds, *queued)]
        if waits and not data.get("merged_into"):
            at = min((w for w in waits if w is not None), default=end)
            if number and self._repeats is not None:
                self._arrivals.append((linkedid, number, at))
                self._arrival_queued.set()
            else:
                self._tell(f"a:{linkedid}", Arrived(at, repeat=False))
        self._counted.pop(linkedid, None)
        self._holds_counted.pop(linkedid, None)
        self._places.pop(linkedid, None)
        self._tiers.pop(linkedid, None)
        self._touch()

    def _tier(self, linkedid: str) -> str:
        if self._place is not None:  # CTI routing mode: its own tiers, for the fallback queue's visits too
            held = next(iter(self._places.get(linkedid, {}).values()), None)
            return held[1] if held is not None else self._place(linkedid, None)[1]
        tier = self._tiers.get(linkedid)
        if tier is None or tier == "standard":  # the record may have arrived since
            tier = self._tiers[linkedid] = tier_of(self._customer_of(linkedid))
        return tier

    def _touch(self) -> None:
        self.changes += 1
        self._changed.set()

    # --- the board ---------------------------------------------------------------------------------

    def board(self) -> dict[str, Any]:
        """Everything the wallboard shows, as of now."""
        now = max(self._clock(), self.book.latest)
        figures = self.book.figures(now)
        rules = self.book.rules
        waiting: dict[str, dict[str, Any]] = {}
        for name, queue in self._model.queues.items():
            joined = []
            for linkedid in queue.waiting:
                call = self._model.calls.get(linkedid)
                seg = call.current if call is not None else None
                if seg is not None and seg.joined_at is not None:
                    joined.append(seg.joined_at)
            waiting[name] = {"waiting": len(queue.waiting),
                             "longest_wait_s": round(now - min(joined), 1) if joined else None,
                             "oldest_joined_at": min(joined) if joined else None}
        held: dict[str, list[float]] = {}
        for call in self._model.calls.values():
            hold = call.held
            if hold is not None:
                joined = held.setdefault(self.placed(call.linkedid, hold.entry)[0], [])
                if hold.joined_at is not None:
                    joined.append(hold.joined_at)
        entry_points: dict[str, dict[str, Any]] = {name: {"waiting": len(joined),
                               "longest_wait_s": round(now - min(joined), 1) if joined else None,
                               "oldest_joined_at": min(joined) if joined else None}
                        for name, joined in sorted(held.items())}
        for name in figures["rolling"].get("entry", {}):
            entry_points.setdefault(name, {"waiting": 0, "longest_wait_s": None, "oldest_joined_at": None})
        staffing = self._staffing(figures, "queue")
        for name, needed in self._staffing(figures, "entry").items():
            entry_points[name]["staffing"] = needed
        agents = []
        by_state = dict.fromkeys(STATES, 0)
        for agent in self._agents:
            state = self._view(agent.id).state or {}
            name = state.get("state") or "logged_out"
            by_state[name] = by_state.get(name, 0) + 1
            since = state.get("since")
            in_state = round(now - since, 1) if isinstance(since, int | float) else None
            agents.append({"id": agent.id, "name": agent.name, "state": name, "reason": state.get("reason"),
                           "since": since, "in_state_s": in_state})
        return {"type": "kpi.board", "at": round(now, 3), **figures, "queues": waiting, "staffing": staffing,
                "entry_points": entry_points,
                "agents": agents, "agents_by_state": by_state,
                "thresholds": {"default_s": rules.service_level_s, "by_queue": dict(rules.service_level_by_queue)},
                "target_service_level": self.config.target_service_level}

    def _staffing(self, figures: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
        """Erlang C per queue (or entry point) at the rolling window's arrival rate and handle time."""
        rules, out = self.book.rules, {}
        for name, f in figures["rolling"].get(kind, {}).items():
            arrivals = f["offered"] + f["short_abandons"]
            aht = f["aht_s"] or figures["today"].get(kind, {}).get(name, {}).get("aht_s")
            threshold = rules.threshold(name)
            out[name] = {
                "arrival_rate_per_h": round(3600 * arrivals / rules.window_s, 2), "aht_s": aht,
                "threshold_s": threshold, "target": self.config.target_service_level,
                "agents_needed": agents_needed(arrivals / rules.window_s, aht, threshold,
                                               self.config.target_service_level) if aht else None,
            }
        return out

    async def serve_board(self, request: web.Request) -> web.WebSocketResponse:
        """One wallboard: the board now, then every change."""
        ws = web.WebSocketResponse(heartbeat=30, compress=False)
        await ws.prepare(request)
        self._boards.add(ws)
        try:
            await ws.send_str(orjson.dumps(self.board()).decode())
            async for _ in ws:
                pass  # a wallboard only listens
        finally:
            self._boards.discard(ws)
        return ws

    async def close_boards(self) -> None:
        for ws in list(self._boards):
            with contextlib.suppress(Exception):
                await ws.close()

    async def run(self, statuses: StatusFeed | None = None) -> None:
        """Push boards, look repeat callers up and (CTI routing) follow the router's ``statuses`` for
        wrap-ups, until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._push_boards(), name="cti.kpi.boards")
            if self._repeats is not None:
                group.create_task(self._look_up_repeats(), name="cti.kpi.repeats")
            if statuses is not None:
                group.create_task(self._follow_wrap_ups(statuses), name="cti.kpi.wrap_ups")
            if self._facts is not None:
                group.create_task(self._save_facts(self._facts), name="cti.kpi.facts")

    async def _push_boards(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH_S):
                    await self._changed.wait()
            raise_if_cancelling()
            await asyncio.sleep(PUSH_EVERY_S)  # the events of a burst go in one board
            self._changed.clear()
            if not self._boards:
                continue
            body = orjson.dumps(self.board()).decode()
            await asyncio.gather(*(self._send(ws, body) for ws in list(self._boards)))
            self.pushed += 1

    async def _send(self, ws: web.WebSocketResponse, body: str) -> None:
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await ws.send_str(body)
        except (TimeoutError, ConnectionError, RuntimeError):
            self._boards.discard(ws)  # a stuck wallboard gets the next board after it reconnects
            with contextlib.suppress(Exception):
                await ws.close()

    async def _look_up_repeats(self) -> None:
        assert self._repeats is not None
        while True:
            await self._arrival_queued.wait()
            self._arrival_queued.clear()
            batch, self._arrivals = self._arrivals, []
            try:
                repeats = await self._repeats.seen(batch)
            except (RedisError, OSError) as exc:
                raise_if_cancelling()
                log.warning("kpi.repeat_lookup_failed", calls=len(batch), error=repr(exc),
                            action="counted as first calls")
                repeats = [False] * len(batch)
            raise_if_cancelling()  # a cancel redis-py's wait_for swallowed as the reply came
            for (linkedid, _, at), repeat in zip(batch, repeats, strict=True):
                self._tell(f"a:{linkedid}", Arrived(at, repeat=repeat))
            self._touch()

    async def _save_facts(self, facts: RedisFacts) -> None:
        """The facts counted, into Redis in batches; Redis away: kept, and sent again once it is back.
        A server that stops writes what it has left first (one that is killed loses the last batch)."""
        try:
            while True:
                await self._fact_queued.wait()
                self._fact_queued.clear()
                self._saving, self._unsaved = self._unsaved, []
                try:
                    await facts.save(self._saving)
                except (RedisError, OSError) as exc:
                    raise_if_cancelling()
                    self._unsaved = self._saving + self._unsaved
                    self._saving = []
                    self._fact_queued.set()
                    log.warning("kpi.facts_unsaved", facts=len(self._unsaved), error=repr(exc), retry_s=self._retry_s)
                    await asyncio.sleep(self._retry_s)
                    continue
                self.saved += len(self._saving)
                self._saving = []
                raise_if_cancelling()
        finally:
            left = self._saving + self._unsaved  # with the batch a stop cut short (HSETNX: twice is once)
            self._saving, self._unsaved = [], []
            if left:
                try:
                    async with asyncio.timeout(SEND_TIMEOUT_S):
                        await facts.save(left)
                    self.saved += len(left)
                except (RedisError, OSError, TimeoutError) as exc:
                    log.warning("kpi.facts_lost_at_stop", facts=len(left), error=repr(exc))

    @property
    def unsaved(self) -> int:
        """Facts counted that are not in Redis yet."""
        return len(self._unsaved) + len(self._saving)

    async def _follow_wrap_ups(self, statuses: StatusFeed) -> None:
        """Every agent's statuses, from this server's start on: the wrap-ups' ends. Redis away is waited
        out; the stream keeps what came meanwhile (the newest 10,000 changes)."""
        after: str | None = None
        while True:
            try:
                if after is None:
                    after = await statuses.changes_end()
                while True:
                    after, changes = await statuses.changes_after(after)
                    raise_if_cancelling()  # redis-py can swallow a cancellation inside a command
                    for change in changes:
                        self._wrapped(self._wraps.status(change.agent, change.status, change.call,
                                                         change.at_ms / 1000))
            except (RedisError, OSError) as exc:
                raise_if_cancelling()
                log.warning("kpi.wrap_ups_unreadable", error=repr(exc), retry_s=self._retry_s)
                await asyncio.sleep(self._retry_s)

    # --- Prometheus ------------------------------------------------------------------------------

    def collect(self) -> Iterable[Any]:
        """The board as gauges, for a ``prometheus_client`` registry of the server's own."""
        from prometheus_client.core import GaugeMetricFamily

        board = self.board()
        labels = ["window", "kind", "value"]
        names = {
            "offered": "queue visits offered (short abandons excluded)", "answered": "visits answered",
            "abandoned": "visits abandoned (short abandons excluded)",
            "short_abandons": "abandons quicker than kpi.short_abandon_s",
            "handled": "answered visits whose call ended", "arrivals": "calls that reached a queue",
            "service_level": "share answered within the threshold, on the configured basis",
            "answer_rate": "answered / offered", "abandon_rate": "abandoned / offered",
            "asa_s": "average speed of answer, seconds",
            "aht_s": "average handle time (talk + wrap-up), seconds", "att_s": "average talk time, seconds",
            "acw_s": "average after-call work (wrap-up), seconds", "wrap_ups": "wrap-ups over (CTI routing)",
            "repeat_rate": "calls from a number seen within kpi.repeat_window_h / calls",
        }
        families = {k: GaugeMetricFamily(f"cti_kpi_{k}", help_, labels=labels) for k, help_ in names.items()}
        unanswered = GaugeMetricFamily("cti_kpi_unanswered", "visits that left a queue without an agent, by reason",
                                       labels=[*labels, "reason"])
        for window in ("rolling", "today"):
            for kind, values in board[window].items():
                for value, figures in values.items():
                    for key, family in families.items():
                        if figures.get(key) is not None:
                            family.add_metric([window, kind, value], figures[key])
                    for reason, n in figures["unanswered"].items():
                        unanswered.add_metric([window, kind, value, reason], n)
        queues = _place_gauges("cti_kpi_", "queue", "in the queue", board["queues"], board["staffing"])
        entries = _place_gauges("cti_kpi_entry_", "entry_point", "on the router's hold (CTI routing)",
                                board["entry_points"],
                                {name: e["staffing"] for name, e in board["entry_points"].items() if "staffing" in e})
        states = GaugeMetricFamily("cti_kpi_agents", "agents by state", labels=["state"])
        for state, n in board["agents_by_state"].items():
            states.add_metric([state], n)
        yield from (*families.values(), unanswered, *queues, *entries, states)


def _place_gauges(prefix: str, label: str, where: str, waiting: dict[str, dict[str, Any]],
                  staffing: dict[str, dict[str, Any]]) -> tuple[Any, ...]:
    """Calls waiting, the longest wait and Erlang C's agents needed, per queue or entry point."""
    from prometheus_client.core import GaugeMetricFamily

    count = GaugeMetricFamily(f"{prefix}calls_waiting", f"calls waiting {where} now", labels=[label])
    longest = GaugeMetricFamily(f"{prefix}longest_wait_s", f"the longest wait {where} now, seconds", labels=[label])
    needed = GaugeMetricFamily(f"{prefix}agents_needed", f"Erlang C: agents for the target service level {where}, "
                               "at the rolling arrival rate and handle time", labels=[label])
    for name in sorted({*waiting, *staffing}):
        now = waiting.get(name, {})
        count.add_metric([name], now.get("waiting", 0))
        if now.get("longest_wait_s") is not None:
            longest.add_metric([name], now["longest_wait_s"])
        if staffing.get(name, {}).get("agents_needed") is not None:
            needed.add_metric([name], staffing[name]["agents_needed"])
    return count, longest, needed
