"""Skills-based routing with VIP priority: the pure core (no I/O, no clock, no Redis).

Snapshots in (:mod:`routing.model`), decisions out (:mod:`routing.decide`), under one validated
configuration (:mod:`routing.config`). The Redis store reimplements the same decision as a Lua
script; ``routing/README.md`` gives the formulas and tie-breaks it must reproduce exactly.
"""

from routing.config import RoutingConfig, RoutingConfigError, load_routing_config, parse_routing_config
from routing.decide import best_agent_for_call, best_call_for_agent, explain_call, match_all
from routing.eligibility import agent_index_keys, index_keys, match
from routing.escalation import Effective, effective, next_escalation_ms
from routing.model import AgentState, AgentStatus, Requirements, WaitingCall
from routing.score import call_score
from routing.trace import Decision, Passed, Reason, Trace

__all__ = [
    "AgentState",
    "AgentStatus",
    "Decision",
    "Effective",
    "Passed",
    "Reason",
    "Requirements",
    "RoutingConfig",
    "RoutingConfigError",
    "Trace",
    "WaitingCall",
    "agent_index_keys",
    "best_agent_for_call",
    "best_call_for_agent",
    "call_score",
    "effective",
    "explain_call",
    "index_keys",
    "load_routing_config",
    "match",
    "match_all",
    "next_escalation_ms",
    "parse_routing_config",
]
