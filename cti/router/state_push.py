"""Routing statuses onto agents' screens (CTI mode): every status the store writes, whichever
server wrote it, becomes one ``agent.state`` envelope, pushed by one server.

The store's scripts append each status they write to a stream (:meth:`RouterStore.changes`); the
servers read it as one consumer group, so each change is pushed once. The payload has the same
``state`` / ``reason`` / ``since`` fields as observe mode's (``docs/events.md``), so a client shows
one state machine whichever mode routes the calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import structlog
from redis.exceptions import RedisError

from cti.agents import AgentRegistry
from cti.router.store import RouterStore, StatusChange
from cti.supervise import raise_if_cancelling
from routing.model import AgentStatus

__all__ = ["PUSH_GROUP", "StatePusher", "public_state", "state_payload"]

log = structlog.get_logger(__name__)

PUSH_GROUP: Final = "cti-push"
_PUBLIC: Final[dict[AgentStatus, str]] = {"reserved": "offered"}

#: ``(agent, type, payload)``: the notifier's submit.
Submit = Callable[[str, str, dict[str, Any]], None]


def public_state(status: AgentStatus) -> str:
    """The state a client shows: the router's ``reserved`` (an offer is out) is ``offered``."""
    return _PUBLIC.get(status, status)


def state_payload(change: StatusChange, *, name: str | None, interface: str | None) -> dict[str, Any]:
    """The ``agent.state`` payload of one routing status. ``routing_call`` is the router's call id (the
    held channel's Uniqueid); the reconciler's ``device:…`` marks are not calls."""
    call = change.call if change.call is not None and not change.call.startswith("device:") else None
    state = public_state(change.status)
    return {
        "agent_id": change.agent, "name": name, "interface": interface, "mode": "cti",
        "state": state, "status": change.status, "reason": change.reason,
        "since": change.at_ms / 1000,
        "wrap_up_ends_at": change.wrap_until_ms / 1000 if change.wrap_until_ms is not None and state == "wrap_up"
        else None,
        "routing_call": call, "paused": state == "not_ready",
    }


class StatePusher:
    """Reads the store's status changes for this server and submits them as ``agent.state``."""

    def __init__(self, store: RouterStore, agents: AgentRegistry, submit: Submit, *, consumer: str,
                 retry_s: float = 1.0) -> None:
        self._store = store
        self._agents = agents
        self._submit = submit
        self._consumer = consumer
        self._retry_s = retry_s
        self._last: dict[str, tuple[object, ...]] = {}

    async def run(self) -> None:
        """For ever; Redis away is waited out (the statuses stay in the store, the stream keeps
        the changes until this server reads them)."""
        while True:
            try:
                await self._store.open_changes(PUSH_GROUP)
                raise_if_cancelling()
                while True:
                    changes = await self._store.changes(PUSH_GROUP, self._consumer)
                    raise_if_cancelling()  # redis-py can swallow a cancellation inside a command
                    for change in changes:
                        self.push(change)
            except (RedisError, OSError) as exc:
                raise_if_cancelling()
                log.warning("route.state_push_paused", error=repr(exc), retry_in_s=self._retry_s)
                await asyncio.sleep(self._retry_s)

    def push(self, change: StatusChange) -> None:
        """Submit one change, unless it repeats the last one pushed for the agent (ready again)."""
        key = (change.status, change.reason, change.call, change.wrap_until_ms)
        if self._last.get(change.agent) == key:
            return
        agent = self._agents.get(change.agent)
        if agent is None:  # in routing.yaml but not in cti.yaml's agents: no screen to push to
            return
        self._last[change.agent] = key
        self._submit(change.agent, "agent.state", state_payload(change, name=agent.name, interface=agent.interface))
