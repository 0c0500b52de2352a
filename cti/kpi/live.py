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
from cti.kpi.book import KpiBook, KpiRules, VisitEnd
from cti.kpi.erlang import agents_needed
from cti.model import events as ev
from cti.model.events import DomainEvent
from cti.model.reducer import CallModel
from cti.push.envelope import Envelope
from cti.push.history import AgentView
from cti.supervise import raise_if_cancelling

__all__ = ["KpiService", "RedisRepeats", "rules_of"]

log = structlog.get_logger(__name__)

PUSH_EVERY_S = 0.2
REFRESH_S = 5.0
SEND_TIMEOUT_S = 2.0
STATES = ("logged_out", "ready", "not_ready", "offered", "on_call", "wrap_up")


class Repeats(Protocol):
    async def seen(self, calls: list[tuple[str, str, float]]) -> list[bool]:
        """For each (linkedid, normalised number, time): whether another call from the number came
        within the window of it."""
        ...


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


class KpiService:
    def __init__(self, *, config: KpiConfig, timezone: str, model: CallModel, agents: AgentRegistry,
                 view: Callable[[str], AgentView], customer_of: Callable[[str], dict[str, Any] | None],
                 repeats: Repeats | None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.book = KpiBook(rules_of(config, timezone))
        self._model = model
        self._agents = agents
        self._view = view
        self._customer_of = customer_of
        self._repeats = repeats
        self._clock = clock
        self._counted: dict[str, int] = {}  # linkedid -> segments already counted (closed ones, in order)
        self._tiers: dict[str, str] = {}
        self._arrivals: list[tuple[str, str, float]] = []  # (linkedid, number, first join) for the repeat lookup
        self._arrival_queued = asyncio.Event()
        self._changed = asyncio.Event()
        self._boards: set[web.WebSocketResponse] = set()
        self.changes = 0  # facts counted: a test or benchmark waits for one
        self.pushed = 0  # boards sent

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
            self.book.visit_ended(VisitEnd(queue=queue, at=at, outcome=seg["outcome"], wait_s=seg.get("wait_s") or 0.0,
                                           reason=seg.get("reason"), tier=self._tier(linkedid)))
        if counted != done:
            self._counted[linkedid] = counted
            self._touch()
        if event.type == ev.CALL_FINISHED:
            self._finished(linkedid, data, event.ts)

    def publish(self, envelope: Envelope) -> None:
        """A notifier sink: an agent's state changed, and with it the board's agents."""
        if envelope.type == ev.AGENT_STATE:
            self._changed.set()

    def _finished(self, linkedid: str, data: dict[str, Any], ts: float | None) -> None:
        tier = self._tier(linkedid)
        queued = [s for s in data.get("segments") or () if s.get("queue") is not None]
        end = data.get("ended_at") or ts or self._clock()
        for seg in queued:
            if seg.get("outcome") in ("answered", "transferred") and seg.get("talk_s") is not None:
                self.book.handled(seg["queue"], end, float(seg["talk_s"]), tier)
        number = normalise_number(data.get("caller"))
        if queued and not data.get("merged_into"):
            at = queued[0].get("joined_at") or end
            if number and self._repeats is not None:
                self._arrivals.append((linkedid, number, at))
                self._arrival_queued.set()
            else:
                self.book.arrived(at, repeat=False)
        self._counted.pop(linkedid, None)
        self._tiers.pop(linkedid, None)
        self._touch()

    def _tier(self, linkedid: str) -> str:
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
        staffing = {}
        for name, f in figures["rolling"].get("queue", {}).items():
            arrivals = f["offered"] + f["short_abandons"]
            aht = f["aht_s"] or figures["today"].get("queue", {}).get(name, {}).get("aht_s")
            threshold = rules.threshold(name)
            staffing[name] = {
                "arrival_rate_per_h": round(3600 * arrivals / rules.window_s, 2), "aht_s": aht,
                "threshold_s": threshold, "target": self.config.target_service_level,
                "agents_needed": agents_needed(arrivals / rules.window_s, aht, threshold,
                                               self.config.target_service_level) if aht else None,
            }
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
                "agents": agents, "agents_by_state": by_state,
                "thresholds": {"default_s": rules.service_level_s, "by_queue": dict(rules.service_level_by_queue)},
                "target_service_level": self.config.target_service_level}

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

    async def run(self) -> None:
        """Push boards and look repeat callers up, until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._push_boards(), name="cti.kpi.boards")
            if self._repeats is not None:
                group.create_task(self._look_up_repeats(), name="cti.kpi.repeats")

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
            for (_, _, at), repeat in zip(batch, repeats, strict=True):
                self.book.arrived(at, repeat=repeat)
            self._touch()

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
            "asa_s": "average speed of answer, seconds", "aht_s": "average handle time, seconds",
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
        waiting = GaugeMetricFamily("cti_kpi_calls_waiting", "calls waiting in the queue now", labels=["queue"])
        longest = GaugeMetricFamily("cti_kpi_longest_wait_s", "the longest wait in the queue now, seconds",
                                    labels=["queue"])
        for name, q in board["queues"].items():
            waiting.add_metric([name], q["waiting"])
            if q["longest_wait_s"] is not None:
                longest.add_metric([name], q["longest_wait_s"])
        needed = GaugeMetricFamily("cti_kpi_agents_needed", "Erlang C: agents for the target service level at the "
                                   "rolling arrival rate and handle time", labels=["queue"])
        for name, s in board["staffing"].items():
            if s["agents_needed"] is not None:
                needed.add_metric([name], s["agents_needed"])
        states = GaugeMetricFamily("cti_kpi_agents", "agents by state", labels=["state"])
        for state, n in board["agents_by_state"].items():
            states.add_metric([state], n)
        yield from (*families.values(), unanswered, waiting, longest, needed, states)
