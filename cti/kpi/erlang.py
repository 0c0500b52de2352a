"""Erlang C: how many agents a queue needs to answer ``target`` of its calls within ``threshold_s``.

Calls arrive at random (Poisson) at ``rate_per_s``, each takes ``aht_s`` on average and callers wait
for ever: the textbook model a staffing sheet uses, optimistic where callers abandon.
"""

from __future__ import annotations

import math

__all__ = ["agents_needed", "service_level", "wait_probability"]

MAX_AGENTS = 100_000


def wait_probability(agents: int, load: float) -> float:
    """Erlang C: the chance a call has to wait, ``load`` being rate x handle time (Erlangs).

    Made from Erlang B's recurrence (B(n) = A·B(n-1) / (n + A·B(n-1))), which stays in floating-point
    range where the factorial form overflows, then C = N·B / (N - A·(1 - B)).
    """
    if load <= 0:
        return 0.0
    if agents <= load:
        return 1.0
    b = 1.0
    for n in range(1, agents + 1):
        b = load * b / (n + load * b)
    return agents * b / (agents - load * (1 - b))


def service_level(agents: int, rate_per_s: float, aht_s: float, threshold_s: float) -> float:
    """The share of calls answered within ``threshold_s`` with ``agents`` agents."""
    load = rate_per_s * aht_s
    if load <= 0:
        return 1.0
    if agents <= load:
        return 0.0
    return 1.0 - wait_probability(agents, load) * math.exp(-(agents - load) * threshold_s / aht_s)


def agents_needed(rate_per_s: float, aht_s: float, threshold_s: float, target: float) -> int | None:
    """The fewest agents whose service level reaches ``target`` (0 with no traffic); None past MAX_AGENTS."""
    if rate_per_s <= 0 or aht_s <= 0:
        return 0
    agents = max(1, math.floor(rate_per_s * aht_s) + 1)
    while service_level(agents, rate_per_s, aht_s, threshold_s) < target:
        agents += 1
        if agents > MAX_AGENTS:
            return None
    return agents
