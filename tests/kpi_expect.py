"""The KPIs worked out from the simulator's own records, per docs/kpis.md, for the e2e KPI tests to
hold the server's figures against: a list of visits, then each dimension's figures."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REASONS = ("timeout", "leaveempty", "joinempty", "full", "fallback")
Dim = tuple[str, str]


@dataclass(frozen=True)
class Visit:
    dims: tuple[Dim, ...]
    outcome: str  # answered, transferred, abandoned, unanswered
    wait_s: float
    threshold_s: float
    talk_s: float | None = None
    reason: str | None = None
    wrap_s: float | None = None  # the answering agent's wrap-up after it (CTI routing)


def on_day(at: float | None, day: str) -> bool:
    return at is not None and datetime.fromtimestamp(at, UTC).date().isoformat() == day


def queue_visits(records: Iterable[dict[str, Any]], day: str, thresholds: dict[str, float], *,
                 tier: str | None = None) -> Iterator[Visit]:
    """Each app_queue segment (``tier``: count it in that tier too)."""
    for record in records:
        for seg in record["segments"]:
            queue = seg["queue"]
            if queue is None or not on_day(seg["left_at"], day):
                continue
            dims = (("all", ""), ("queue", queue), *((("tier", tier),) if tier else ()))
            yield Visit(dims, seg["outcome"], seg["wait_s"], thresholds[queue], seg["talk_s"], seg["reason"])


def figures_of(visits: Iterable[Visit], short_abandon_s: float) -> dict[Dim, dict[str, Any]]:
    out: dict[Dim, dict[str, Any]] = {}
    for visit in visits:
        for dim in visit.dims:
            k = out.setdefault(dim, {"offered": 0, "answered": 0, "abandoned": 0, "short_abandons": 0, "good": 0,
                                     "wait": 0.0, "handled": 0, "handle": 0.0, "wrap_ups": 0, "wrap": 0.0,
                                     "unanswered": {}})
            if visit.outcome in ("answered", "transferred"):
                k["offered"] += 1
                k["answered"] += 1
                k["wait"] += visit.wait_s
                k["good"] += visit.wait_s <= visit.threshold_s
                if visit.talk_s is not None:
                    k["handled"] += 1
                    k["handle"] += visit.talk_s
                if visit.wrap_s is not None:
                    k["wrap_ups"] += 1
                    k["wrap"] += visit.wrap_s
            elif visit.outcome == "abandoned":
                if visit.wait_s < short_abandon_s:
                    k["short_abandons"] += 1
                else:
                    k["offered"] += 1
                    k["abandoned"] += 1
            else:
                k["offered"] += 1
                reason = visit.reason if visit.reason in REASONS else "other"
                k["unanswered"][reason] = k["unanswered"].get(reason, 0) + 1
    return {dim: {
        "offered": k["offered"], "answered": k["answered"], "abandoned": k["abandoned"],
        "short_abandons": k["short_abandons"], "unanswered": k["unanswered"], "handled": k["handled"],
        "service_level": k["good"] / k["answered"] if k["answered"] else None,
        "answer_rate": k["answered"] / k["offered"] if k["offered"] else None,
        "abandon_rate": k["abandoned"] / k["offered"] if k["offered"] else None,
        "asa_s": k["wait"] / k["answered"] if k["answered"] else None,
        "aht_s": (k["handle"] + k["wrap"]) / k["handled"] if k["handled"] else None,
        "wrap_ups": k["wrap_ups"], "acw_s": k["wrap"] / k["wrap_ups"] if k["wrap_ups"] else None,
    } for dim, k in out.items()}


async def wrap_ups(redis: Any, key_prefix: str) -> dict[str, float]:
    """Each routed call's wrap-up, from the router's status stream as written: from an agent's
    ``wrap_up`` about the call to that agent's next status."""
    entries = await redis.xrange(f"{key_prefix}router:changes")
    last: dict[str, tuple[float, str, str]] = {}  # agent -> (at, status, call)
    out: dict[str, float] = {}
    for entry_id, fields in entries:
        at = int(entry_id.decode().split("-")[0]) / 1000
        agent, status, call = (fields[k].decode() for k in (b"a", b"s", b"c"))
        before = last.get(agent)
        wrapping = before is not None and before[1] == "wrap_up"
        if wrapping and (status, call) == ("wrap_up", before[2]):
            continue  # extended: the same wrap-up
        if wrapping:
            out[before[2]] = out.get(before[2], 0.0) + at - before[0]
        last[agent] = (at, status, call)
    return out


def same(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] is not None and math.isclose(got[key], value, abs_tol=2e-3), (where, key, got[key], value)
        else:
            assert got[key] == value, (where, key, got[key], value)


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values
