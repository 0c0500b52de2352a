"""The integer score that orders waiting calls, one formula per policy (README has them exactly).

Integers only, every intermediate below 2**53, so the Redis Lua port (doubles) computes the same.
"""

from __future__ import annotations

from routing.config import RoutingConfig, Tier

__all__ = ["AGED_BASE", "call_key", "call_score"]

#: Aged calls score above every other: no non-aged score reaches it (README: bounds).
AGED_BASE = 10**15


def call_score(tier: Tier, wait_ms: int, config: RoutingConfig) -> int:
    """Higher goes first. ``wait_ms`` is :func:`routing.escalation.wait_ms` (clamped, never negative)."""
    max_wait_s = config.aging.max_wait_s
    if max_wait_s is not None and wait_ms >= max_wait_s * 1000:
        return AGED_BASE + wait_ms
    if config.policy == "strict":
        return tier.priority
    if config.policy == "priority_plus_wait":
        boost = config.wait_boost
        return tier.priority * 1000 + min(wait_ms * boost.per_s, boost.cap * 1000)
    # sla_deficit: how far through its tier's answer-time target the call is, in permille.
    return wait_ms // tier.service_level.within_s


def call_key(score: int, enqueued_at_ms: int, call_id: str) -> tuple[int, int, str]:
    """Sort ascending: higher score, then earlier enqueue, then the smaller id (code point order)."""
    return (-score, enqueued_at_ms, call_id)
