"""Long-lived tasks that cannot end quietly.

Policy: a supervised task that returns, raises, or is cancelled by anything but
the server's shutdown is logged as an error, the server is unhealthy while it
is down, and it is started again after ``restart_delay`` seconds. A task that
dies ``max_restarts`` times within ``window`` seconds stops the server (the
process exits non-zero, for systemd or the orchestrator to restart it): a loop
that keeps dying is a bug, and a dead node is easier to see than a lame one.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

__all__ = ["Supervisor", "TaskFailedRepeatedly", "raise_if_cancelling"]

log = structlog.get_logger(__name__)


def raise_if_cancelling() -> None:
    """Re-raise a cancellation a library swallowed. Python 3.11's ``asyncio.wait_for`` (inside
    redis-py's commands and aiomqtt's publish and connect) drops a cancel that arrives as its inner
    future completes, and redis-py can turn one into an error of its own; a loop that goes round
    again after that would never stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class TaskFailedRepeatedly(Exception):
    """A supervised task kept dying: the server stops rather than limp on."""


@dataclass(slots=True)
class TaskState:
    name: str
    state: str = "starting"  # running, restarting
    restarts: int = 0
    last_error: str | None = None
    deaths: deque[float] = field(default_factory=deque)

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error}


class Supervisor:
    """Runs named tasks in the caller's TaskGroup and restarts them when they end unexpectedly."""

    def __init__(self, group: asyncio.TaskGroup, *, restart_delay: float = 1.0, max_restarts: int = 5,
                 window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._group = group
        self._restart_delay = restart_delay
        self._max_restarts = max_restarts
        self._window = window
        self._clock = clock
        self.tasks: dict[str, TaskState] = {}

    def start(self, name: str, factory: Callable[[], Awaitable[Any]]) -> asyncio.Task[None]:
        state = self.tasks[name] = TaskState(name)
        return self._group.create_task(self._keep(state, factory), name=name)

    @property
    def healthy(self) -> bool:
        return all(t.state == "running" for t in self.tasks.values())

    def snapshot(self) -> dict[str, Any]:
        return {name: t.snapshot() for name, t in self.tasks.items()}

    async def _keep(self, state: TaskState, factory: Callable[[], Awaitable[Any]]) -> None:
        while True:
            state.state = "running"
            try:
                await factory()
                why = "returned"
            except asyncio.CancelledError:
                raise_if_cancelling()  # the server is stopping
                why = "cancelled from inside"  # a future it awaited was cancelled: not our shutdown
            except Exception as exc:
                raise_if_cancelling()
                why = repr(exc)
                log.exception("task.failed", task=state.name)
            raise_if_cancelling()  # ended because the server is stopping: nothing to restart
            state.state, state.last_error = "restarting", why
            now = self._clock()
            state.deaths.append(now)
            while state.deaths and state.deaths[0] < now - self._window:
                state.deaths.popleft()
            log.error("task.died", task=state.name, why=why, restarts=state.restarts,
                      restart_in_s=self._restart_delay)
            if len(state.deaths) >= self._max_restarts:
                raise TaskFailedRepeatedly(f"{state.name} died {len(state.deaths)} times in {self._window:.0f}s: {why}")
            await asyncio.sleep(self._restart_delay)
            state.restarts += 1
