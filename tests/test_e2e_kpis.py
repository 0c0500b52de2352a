"""A seeded simulator run of two queues: every KPI on ``/api/kpis``, ``/metrics`` and the wallboard's
WebSocket equals what the test works out from the simulator's own record of each call.

The simulator runs on a clock the test moves, so waits and talk times are exact; callers abandon
(some within the short-abandon threshold), overflow from ``support`` to ``sales`` after 6 s, and some
numbers call twice (repeat calls). The delay from a call event to the wallboard's next board is
printed, not asserted (a loaded machine is slower, not wrong)."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson

from cti.app import CtiServer
from cti.config import AgentConfig
from cti.sim.server import AmiServer
from tests.e2e import ManualClock, eventually, make_config, running
from tests.kpi_expect import figures_of, metric_values, queue_visits, same

AGENTS = [AgentConfig(id=n.lower(), name=n, interface=f"Local/{1001 + i}@sim-agents/n", extension=str(1001 + i))
          for i, n in enumerate(["Alice", "Bob", "Chen"])]
THRESHOLD = {"support": 20.0, "sales": 10.0}
SHORT_S = 5.0


def board_count(board: dict[str, Any]) -> int:
    """Abandons on a board (short ones included)."""
    total = board["today"]["all"][""]
    return int(total["abandoned"] + total["short_abandons"])


async def test_every_kpi_equals_the_simulators_records(redis_url: str, mqtt_port: int) -> None:
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port, ring_s=1, mean_talk_s=12, mean_patience_s=15,
                         channel_style="local", overflow_share=0.5, overflow_timeout_s=6, second_queue_share=0.7,
                         seed=11)
    config = config.model_copy(update={
        "agents": AGENTS,
        "kpi": config.kpi.model_copy(update={"service_level_by_queue": {"sales": 10.0}, "short_abandon_s": SHORT_S}),
    })
    clock, rnd = ManualClock(), random.Random(11)
    boards: list[tuple[float, dict[str, Any]]] = []
    async with running(config, clock=clock) as (sim, server), aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.http_port}"

        async def watch() -> None:
            async with http.ws_connect(f"{base}/ws/wallboard") as ws:
                async for message in ws:
                    boards.append((time.monotonic(), orjson.loads(message.data)))

        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(watch())
            await eventually(lambda: len(boards) >= 1)
            placed: list[str] = []
            numbers = [f"1390000{i:04d}" for i in range(30)]
            delays: list[float] = []
            for second in range(90):
                if rnd.random() < 0.35:
                    placed.append(sim.sim.place_call(rnd.choice(numbers), "Caller", patience=rnd.uniform(2, 45)))
                for _ in range(4):
                    clock.advance(0.25)
                    sim.sim.tick()
                    await asyncio.sleep(0)
                waiting = [c for q in server.model.queues.values() for c in q.waiting if c in sim.sim.pbx.calls]
                if second % 15 == 14 and waiting:  # a caller hangs up: how soon does a board show it?
                    gone = sum(board_count(b) for _, b in boards[-1:])
                    sent = time.monotonic()
                    sim.sim.hangup(sim.sim.pbx.calls[waiting[0]].caller.name)
                    await eventually(lambda g=gone: board_count(boards[-1][1]) > g, timeout=30)
                    delays.append(boards[-1][0] - sent)
            for linkedid in placed:
                call = sim.sim.pbx.calls.get(linkedid)
                if call is not None:
                    sim.sim.hangup(call.caller.name)
            clock.advance(1)
            sim.sim.tick()
            await eventually(lambda: all(c in server.model.ended for c in placed), timeout=30)
            queued = [r for r in sim.sim.pbx.records if r["linkedid"] in placed and r["queue"] is not None]
            await eventually(lambda: server.kpis.book.figures(clock())["today"]["all"][""]["arrivals"] == len(queued),
                             timeout=20)
            pushed = server.kpis.pushed
            await eventually(lambda: server.kpis.pushed > pushed, timeout=20)  # a board after the last fact
            await asyncio.sleep(0.5)
            async with http.get(f"{base}/api/kpis") as response:
                assert response.status == 200
                api = await response.json()
            async with http.get(f"{base}/metrics") as response:
                metrics = metric_values(await response.text())
            watcher.cancel()

    print(f"wallboard: a board {', '.join(f'{1000 * d:.0f}' for d in delays)} ms after a fact was counted")
    records = [r for r in sim.sim.pbx.records if r["linkedid"] in placed]
    want = figures_of(queue_visits(records, api["day"], THRESHOLD), SHORT_S)
    assert want[("all", "")]["abandoned"] > 0 and want[("all", "")]["short_abandons"] > 0
    assert 0 < want[("all", "")]["service_level"] < 1 and 0 < want[("queue", "sales")]["service_level"] < 1
    assert want[("queue", "sales")]["answered"] > 0 and want[("queue", "support")]["unanswered"], "overflow visits"
    board = boards[-1][1]
    for source, figures in (("api", api), ("wallboard", board)):
        for (kind, value), w in want.items():
            same(figures["today"][kind][value], w, f"{source} today {kind} {value}")
            same(figures["rolling"][kind][value], w, f"{source} 15 min {kind} {value}")  # all inside the window
        waiting = figures["queues"]
        assert all(q["waiting"] == 0 for q in waiting.values())
    for (kind, value), w in want.items():
        for key in ("offered", "answered", "abandoned", "short_abandons", "service_level", "asa_s", "aht_s"):
            if w[key] is None:
                continue
            got = metrics[(f"cti_kpi_{key}", (("kind", kind), ("value", value), ("window", "today")))]
            assert math.isclose(got, w[key], abs_tol=2e-3), (key, kind, value, got, w[key])
        for reason, n in w["unanswered"].items():
            labels = (("kind", kind), ("reason", reason), ("value", value), ("window", "today"))
            assert metrics[("cti_kpi_unanswered", labels)] == n

    # repeat calls: a number that reached a queue again (of the calls that reached one)
    by_number: dict[str, int] = {}
    for r in records:
        if r["queue"] is not None:
            by_number[r["caller"]] = by_number.get(r["caller"], 0) + 1
    calls = sum(by_number.values())
    repeats = calls - len(by_number)
    assert repeats > 0
    assert math.isclose(api["today"]["all"][""]["repeat_rate"], repeats / calls, abs_tol=1e-4)
    assert metrics[("cti_kpi_agents", (("state", "ready"),))] + metrics[
        ("cti_kpi_agents", (("state", "wrap_up"),))] == len(AGENTS)


async def test_the_days_figures_survive_a_restart_and_count_each_call_once(redis_url: str, mqtt_port: int) -> None:
    """A server stopped with calls waiting and talking, and another started on the same Redis: the day
    so far is back on its board at once, and the calls that were live are counted once, not again
    for the part of them the first server had counted. The simulator's clock stands still between."""
    config = make_config(redis_url=redis_url, mqtt_port=mqtt_port, ring_s=1, mean_talk_s=20, mean_patience_s=20,
                         channel_style="local", overflow_share=0.5, overflow_timeout_s=6, second_queue_share=0.7,
                         seed=5)
    config = config.model_copy(update={"agents": AGENTS, "kpi": config.kpi.model_copy(update={
        "service_level_by_queue": {"sales": 10.0}, "short_abandon_s": SHORT_S})})
    clock, rnd = ManualClock(), random.Random(5)
    placed: list[str] = []

    def drive(seconds: int) -> Iterator[None]:
        for _ in range(seconds):
            if rnd.random() < 0.4:
                placed.append(sim.sim.place_call(f"1370000{rnd.randrange(20):04d}", "Caller",
                                                 patience=rnd.uniform(2, 40)))
            for _ in range(4):
                clock.advance(0.25)
                sim.sim.tick()
                yield

    async with AmiServer(config=config.sim, agents=config.agents, port=0, random_arrivals=False, clock=clock) as sim:
        config = config.model_copy(update={"ami": config.ami.model_copy(update={"port": sim.port})})
        async with CtiServer(config) as first:
            await eventually(lambda: first.health()["ok"])
            for _ in drive(40):
                await asyncio.sleep(0)
            live = {c for c in placed if c in sim.sim.pbx.calls}
            await eventually(lambda: all(c in first.model.calls for c in live))
            talking = [c for c in live if first.model.calls[c].talking is not None]
            waiting = [c for q in first.model.queues.values() for c in q.waiting]
            assert talking and waiting, "a restart with calls half counted"
            await eventually(lambda: not first.store._dirty and first.kpis.unsaved == 0 and not first.kpis._arrivals)
            before = first.kpis.book.figures(clock())["today"]
        async with CtiServer(config) as second:
            await eventually(lambda: second.health()["ok"])
            assert second.kpis.book.figures(clock())["today"] == before, "the day so far, back at once"
            for _ in drive(30):
                await asyncio.sleep(0)
            for linkedid in placed:
                call = sim.sim.pbx.calls.get(linkedid)
                if call is not None:
                    sim.sim.hangup(call.caller.name)
            clock.advance(1)
            sim.sim.tick()
            await eventually(lambda: not sim.sim.pbx.calls and not second.model.calls, timeout=30)
            queued = [r for r in sim.sim.pbx.records if r["linkedid"] in placed and r["queue"] is not None]
            await eventually(lambda: second.kpis.book.figures(clock())["today"]["all"][""]["arrivals"]
                             == len(queued), timeout=20)
            final = second.kpis.book.figures(clock())
            got = final["today"]

    records = [r for r in sim.sim.pbx.records if r["linkedid"] in placed]
    want = figures_of(queue_visits(records, final["day"], THRESHOLD), SHORT_S)
    assert want[("all", "")]["answered"] > before["all"][""]["answered"] > 0
    for (kind, value), w in want.items():
        same(got[kind][value], w, f"after the restart: today {kind} {value}")
