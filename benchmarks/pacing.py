"""Sending on a schedule, shared by the benchmarks (each runs as a script from this folder)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def paced(count: int, rate: float, send: Callable[[int], Awaitable[None]]) -> None:
    """``count`` sends at ``rate`` a second, on a schedule (not sleep-after-send, which drifts)."""
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(i)
