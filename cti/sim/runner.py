"""Start the simulator the way the server's config describes it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from cti.config import Config
from cti.directory.importer import DirectoryImportError, load_customers
from cti.sim.pbx import Caller
from cti.sim.server import AmiServer

__all__ = ["callers_from_directory", "simulator_for"]

log = structlog.get_logger(__name__)


def callers_from_directory(config: Config) -> list[Caller]:
    """Simulated callers are the directory's customers (VIPs among them), so pops show records."""
    if config.directory.source is None:
        return []
    try:
        customers = load_customers(config.directory.source)
    except DirectoryImportError as exc:
        log.warning("sim.no_directory_callers", error=str(exc))
        return []
    return [Caller(number=c.numbers[0], name=c.name, vip=c.vip_tier > 0) for c in customers if c.numbers]


@asynccontextmanager
async def simulator_for(config: Config) -> AsyncIterator[AmiServer]:
    """The AMI simulator with the config's agents and manager credentials, on ``config.sim``'s port."""
    async with AmiServer(
        config=config.sim, agents=config.agents, callers=callers_from_directory(config),
        username=config.ami.username, secret=config.ami.secret.get_secret_value(),
    ) as server:
        yield server
