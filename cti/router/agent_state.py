"""Which agent status may follow which, for the routing controller and the people who drive it.

The statuses are :data:`routing.model.AgentStatus`. Routing moves an agent along the call
(``ready`` → ``reserved`` → ``on_call`` → ``wrap_up`` → ``ready``, or back from ``reserved`` when
the offer is withdrawn or not answered; ``ready`` → ``on_call`` for a call routing did not make);
a person (CLI, API, the agent's console) may only take the :data:`MANUAL` steps, so "ready" cannot
cut a ringing offer short nor "log out" end a call.

Pure: the status itself lives in Redis, and the store applies a step only from the statuses this
module allows (:func:`sources`), in one atomic script, so a check here never races the change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, get_args

from routing.model import AgentStatus

__all__ = ["MANUAL", "STATUSES", "TRANSITIONS", "AgentStateError", "UnknownAgentError", "check", "sources"]

STATUSES: Final[tuple[AgentStatus, ...]] = get_args(AgentStatus)

#: Every legal step, manual or automatic. A status may repeat where that changes nothing harmful
#: (ready again; not ready for another reason; logged out again).
TRANSITIONS: Final[Mapping[AgentStatus, frozenset[AgentStatus]]] = {
    "logged_out": frozenset({"logged_out", "ready", "not_ready"}),
    # on_call straight from ready: a call routing did not make (Asterisk's fallback Queue(), a direct,
    # transferred or outbound call: the phone is busy, cti/router/reconcile.py), or a dial that outlived
    # its expired offer and was answered
    "ready": frozenset({"ready", "not_ready", "reserved", "on_call", "logged_out"}),
    "not_ready": frozenset({"not_ready", "ready", "logged_out"}),
    # answered; withdrawn (caller gone, AMI failed, stale); no answer (RONA)
    "reserved": frozenset({"on_call", "ready", "not_ready"}),
    "on_call": frozenset({"wrap_up"}),
    # wrap-up over (or cut short by the agent); a break or the end of the shift after the call
    "wrap_up": frozenset({"ready", "not_ready", "logged_out"}),
}

#: The steps a person may take: into ready, not ready or logged out, from neither an offer nor a call.
MANUAL: Final[Mapping[AgentStatus, frozenset[AgentStatus]]] = {
    status: frozenset(nxt & {"ready", "not_ready", "logged_out"}) if status not in ("reserved", "on_call")
    else frozenset()
    for status, nxt in TRANSITIONS.items()
}


class AgentStateError(Exception):
    """A status step the state machine does not allow (``reserved`` → ``logged_out``, …)."""

    def __init__(self, agent_id: str, current: AgentStatus, wanted: AgentStatus, *, manual: bool = False) -> None:
        self.agent_id, self.current, self.wanted = agent_id, current, wanted
        allowed = sorted((MANUAL if manual else TRANSITIONS)[current])
        super().__init__(f"agent {agent_id!r} is {current}: cannot go {wanted} "
                         f"(from {current}: {', '.join(allowed) or 'only as the call goes on'})")


class UnknownAgentError(LookupError):
    """An agent id that is not configured (``cti.yaml`` agents) or not in the routing store."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        super().__init__(f"unknown agent {agent_id!r}")


def sources(wanted: AgentStatus, *, manual: bool = False) -> frozenset[AgentStatus]:
    """The statuses ``wanted`` may follow: what the store's conditional step is given to expect."""
    table = MANUAL if manual else TRANSITIONS
    return frozenset(s for s, nxt in table.items() if wanted in nxt)


def check(agent_id: str, current: Iterable[AgentStatus], wanted: AgentStatus, *, manual: bool = False) -> None:
    """Raise :class:`AgentStateError` unless ``wanted`` may follow every one of ``current``."""
    table = MANUAL if manual else TRANSITIONS
    for status in current:
        if wanted not in table[status]:
            raise AgentStateError(agent_id, status, wanted, manual=manual)
