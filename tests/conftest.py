"""Real redis-server and mosquitto for the test session, on free 127.0.0.1 ports.

They are started once per session through :mod:`cti.devservices` (the same code
``cti demo`` uses) and stopped at the end.  A missing binary fails the run with
the Debian package to install: a skipped integration test looks like a pass.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import structlog

import cti.cli
from cti.devservices import ServiceError, mosquitto, redis_server
from cti.logs import configure_logging


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_url(services_dir: Path) -> Iterator[str]:
    """URL of a private redis-server (no persistence) for the whole session."""
    workdir = services_dir / "redis"
    workdir.mkdir()
    try:
        with redis_server(workdir) as url:
            yield url
    except ServiceError as exc:
        pytest.fail(f"cannot start redis-server: {exc} (Debian package: redis-server)", pytrace=False)


@pytest.fixture(scope="session")
def mqtt_port(services_dir: Path) -> Iterator[int]:
    """Port of a private anonymous mosquitto on 127.0.0.1 for the whole session."""
    workdir = services_dir / "mosquitto"
    workdir.mkdir()
    try:
        with mosquitto(workdir) as port:
            yield port
    except ServiceError as exc:
        pytest.fail(f"cannot start mosquitto: {exc} (Debian package: mosquitto)", pytrace=False)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on an empty database; each test starts from a flushed one."""
    client = aioredis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(autouse=True)
def _structlog_defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Commands under test configure logging for the process: never with cached loggers (they
    would keep that configuration for the rest of the session), and put back after each test."""
    monkeypatch.setattr(cti.cli, "configure_logging", functools.partial(configure_logging, cache=False))
    yield
    structlog.reset_defaults()
