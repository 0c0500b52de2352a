"""Nothing ends quietly: supervised tasks restart or stop the server, and /healthz says what is down."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import pytest

from cti.devservices import redis_server
from cti.supervise import Supervisor, TaskFailedRepeatedly
from tests.e2e import eventually, make_config, running


async def test_a_task_that_returns_is_restarted_and_reported() -> None:
    runs = 0
    release = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            return  # ends unexpectedly
        await release.wait()
        if runs == 2:
            raise RuntimeError("boom")
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as group:
        sup = Supervisor(group, restart_delay=0)
        task = sup.start("flaky", flaky)
        await eventually(lambda: runs == 2)
        assert sup.tasks["flaky"].restarts == 1 and sup.tasks["flaky"].last_error == "returned"
        assert sup.healthy
        release.set()
        await eventually(lambda: runs == 3)
        assert sup.tasks["flaky"].last_error == "RuntimeError('boom')"
        task.cancel()


async def test_a_cancelled_future_inside_a_task_is_a_death_not_a_shutdown() -> None:
    runs = 0

    async def victim() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.cancel()  # as a transport closing under a send does
            await future
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as group:
        sup = Supervisor(group, restart_delay=0)
        task = sup.start("victim", victim)
        await eventually(lambda: runs == 2)
        assert sup.tasks["victim"].last_error == "cancelled from inside" and sup.healthy
        task.cancel()


async def test_a_task_that_keeps_dying_stops_the_server() -> None:
    async def broken() -> None:
        raise OSError("no")

    with pytest.raises(ExceptionGroup) as info:
        async with asyncio.TaskGroup() as group:
            Supervisor(group, restart_delay=0, max_restarts=3, clock=lambda: 0.0).start("broken", broken)
    assert info.group_contains(TaskFailedRepeatedly)


async def test_healthz_is_503_while_redis_is_down(tmp_path: Path, mqtt_port: int) -> None:
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(redis_server(tmp_path))
        config = make_config(redis_url=url, mqtt_port=mqtt_port)
        async with running(config) as (_sim, server), aiohttp.ClientSession() as http:
            healthz = f"http://127.0.0.1:{server.http_port}/healthz"
            async with http.get(healthz) as response:
                body = await response.json()
                assert response.status == 200 and body["redis"]["ok"] and body["tasks"]["cti.notifier"]["state"]
            stack.close()  # redis-server stops
            await eventually(lambda: not server.health()["redis"]["ok"])
            async with http.get(healthz) as response:
                body = await response.json()
                assert response.status == 503 and not body["ok"] and body["redis"]["error"]
                assert body["ami_connected"] and body["mqtt"]["connected"], "the rest is still up, and says so"
