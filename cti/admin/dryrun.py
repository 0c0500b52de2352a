"""What a new routing config would do to the calls waiting now: pure, from the router's own decision
functions (``routing/``), so the answer is the one the router would reach."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from routing.config import RoutingConfig
from routing.decide import best_agent_for_call, explain_call
from routing.escalation import effective
from routing.model import AgentState, WaitingCall
from routing.score import call_key, call_score

__all__ = ["dry_run"]


def _under(call: WaitingCall, agents: Sequence[AgentState], config: RoutingConfig, now_ms: int) -> dict[str, Any]:
    if call.entry_point not in config.entry_points:
        return {"routable": False, "why": f"no entry point {call.entry_point!r}"}
    tier = config.tiers.get(call.tier)
    if tier is None:
        return {"routable": False, "why": f"no tier {call.tier!r}"}
    eff = effective(call, config, now_ms)
    decision = best_agent_for_call(call, agents, config, now_ms)
    trace = explain_call(call, agents, config, now_ms)
    passed = {p.id for p in trace.agents_passed}
    return {"routable": True, "score": call_score(tier, eff.wait_ms, config), "step": trace.step,
            "agent_now": decision.agent_id if decision is not None else None,
            "eligible": sorted(a.id for a in agents if a.id not in passed),
            "passed": {p.id: p.reason for p in trace.agents_passed}}


def dry_run(calls: Sequence[WaitingCall], agents: Sequence[AgentState], old: RoutingConfig, new: RoutingConfig,
            now_ms: int) -> dict[str, Any]:
    """Per waiting call (oldest first): its rank, score, escalation step and the agent it would go to
    now, under the config in force and under the new one; and the calls the new one could not route."""
    before = {c.id: _under(c, agents, old, now_ms) for c in calls}
    after = {c.id: _under(c, agents, new, now_ms) for c in calls}

    def ranks(results: dict[str, dict[str, Any]]) -> dict[str, int]:
        order = sorted((c for c in calls if results[c.id]["routable"]),
                       key=lambda c: call_key(results[c.id]["score"], c.enqueued_at_ms, c.id))
        return {c.id: i + 1 for i, c in enumerate(order)}

    rank_before, rank_after = ranks(before), ranks(after)
    rows: list[dict[str, Any]] = []
    for call in sorted(calls, key=lambda c: (c.enqueued_at_ms, c.id)):
        rows.append({"call": call.id, "entry_point": call.entry_point, "tier": call.tier,
                     "waited_s": round(max(0, now_ms - call.enqueued_at_ms) / 1000, 1),
                     "before": {**before[call.id], "rank": rank_before.get(call.id)},
                     "after": {**after[call.id], "rank": rank_after.get(call.id)}})
    stranded = [r["call"] for r in rows if not r["after"]["routable"]]
    changed = [r["call"] for r in rows if (r["before"].get("rank"), r["before"].get("agent_now"))
               != (r["after"].get("rank"), r["after"].get("agent_now"))]
    return {"waiting": len(rows), "calls": rows, "stranded": stranded, "changed": changed}
