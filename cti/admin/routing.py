"""Editing the routing config while calls wait: validate, keep every version, dry-run, activate, roll back.

Every server of a call centre shares the Redis: the version in force is ``…:active`` there, the
server that activates re-indexes the waiting calls under it (:meth:`RouterStore.apply_config`, which
keeps each call and its place), and the others take it up within ``FOLLOW_S`` (:meth:`RoutingAdmin.follow`).
A version that would leave a waiting call with no entry point or tier is refused unless forced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import yaml
from pydantic import ValidationError
from redis.exceptions import RedisError

from cti.admin.dryrun import dry_run
from cti.admin.versions import AuditLog, ConfigVersions, Version, diff_text
from cti.router.store import RouterStore
from cti.supervise import raise_if_cancelling
from routing.config import RoutingConfig

__all__ = ["ActivationRefused", "ConfigInvalid", "RoutingAdmin", "load_yaml"]

log = structlog.get_logger(__name__)

FOLLOW_S = 1.0


@dataclass(frozen=True, slots=True)
class ConfigInvalid(Exception):
    """Each problem as ``{"path": "tiers.vip.priority", "message": ...}``."""

    errors: list[dict[str, str]]


class ActivationRefused(Exception):
    def __init__(self, message: str, stranded: list[str]) -> None:
        super().__init__(message)
        self.stranded = stranded


def load_yaml(text: str) -> Any:
    """An admin's YAML, or a :class:`ConfigInvalid` that says where it stops parsing."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigInvalid([{"path": where, "message": str(getattr(exc, "problem", exc))}]) from None


def validate(data: Any) -> RoutingConfig:
    if not isinstance(data, dict):
        raise ConfigInvalid([{"path": "", "message": "the routing config is a mapping (JSON object)"}])
    try:
        return RoutingConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigInvalid([{"path": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
                             for err in exc.errors()]) from None


def as_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


class RoutingAdmin:
    def __init__(self, *, store: RouterStore, versions: ConfigVersions, audit: AuditLog,
                 now_ms: Callable[[], int], source: str) -> None:
        self._store = store
        self.versions = versions
        self.audit = audit
        self._now_ms = now_ms
        self._source = source
        self.in_force: int | None = None

    @property
    def config(self) -> RoutingConfig:
        return self._store.config

    async def restore(self) -> None:
        """At start, before routing starts: the version an admin activated, else the file as version 1."""
        active = await self.versions.active()
        if active is None:
            first = await self.versions.add(self.config.model_dump(mode="json"), author=self._source,
                                            comment="loaded from the file at start")
            await self.versions.activate(first.version)
            self.in_force = first.version
            return
        version = await self.versions.get(active)
        if version is None:
            raise RuntimeError(f"routing config version {active} is active but not stored")
        self._store.config = validate(version.config)
        self.in_force = active
        log.info("admin.routing_restored", version=active, author=version.author,
                 note=f"the version in force in Redis, not {self._source}")

    async def propose(self, data: Any, *, who: str, role: str, comment: str = "") -> Version:
        """Store a validated config as a new version (not yet in force)."""
        config = validate(data)
        version = await self.versions.add(config.model_dump(mode="json"), author=who, comment=comment,
                                          parent=self.in_force)
        await self.audit.record(who=who, role=role, action="routing.version_added", version=version.version,
                                parent=self.in_force, comment=comment)
        return version

    async def dry_run(self, version: Version) -> dict[str, Any]:
        new = validate(version.config)
        return dry_run(await self._store.waiting(), await self._store.agents(), self.config, new, self._now_ms())

    async def activate(self, version: Version, *, who: str, role: str, force: bool = False,
                       action: str = "routing.activated") -> dict[str, Any]:
        new = validate(version.config)
        report = dry_run(await self._store.waiting(), await self._store.agents(), self.config, new, self._now_ms())
        if report["stranded"] and not force:
            raise ActivationRefused(f"{len(report['stranded'])} waiting call(s) would have no entry point or tier "
                                    "under this version (send force: true to activate anyway)", report["stranded"])
        previous = self.in_force
        await self._store.apply_config(new)
        await self.versions.activate(version.version)
        self.in_force = version.version
        await self.audit.record(who=who, role=role, action=action, version=version.version, previous=previous,
                                waiting=report["waiting"], changed=len(report["changed"]), forced=bool(force and
                                report["stranded"]))
        log.info("admin.routing_activated", version=version.version, previous=previous, who=who,
                 waiting=report["waiting"], changed=len(report["changed"]))
        return {"version": version.version, "previous": previous, "dry_run": report}

    async def rollback(self, *, who: str, role: str, force: bool = False) -> dict[str, Any]:
        """Put the version that was in force before the current one back (its audit entry says which)."""
        for entry in await self.audit.recent(1000):
            if entry["action"] in ("routing.activated", "routing.rolled_back") \
                    and entry["detail"].get("version") == self.in_force:
                previous = entry["detail"].get("previous")
                break
        else:
            previous = None
        version = await self.versions.get(previous) if isinstance(previous, int) else None
        if version is None:
            raise LookupError("no earlier version was in force")
        return await self.activate(version, who=who, role=role, force=force, action="routing.rolled_back")

    async def diff(self, version: Version, against: int | None) -> str:
        base = await self.versions.get(against) if against is not None else None
        return diff_text(as_yaml(base.config) if base is not None else "", as_yaml(version.config),
                         f"version {against}" if base else "(none)", f"version {version.version}")

    async def follow(self) -> None:
        """Take up a version another server activated."""
        while True:
            await asyncio.sleep(FOLLOW_S)
            raise_if_cancelling()
            try:
                active = await self.versions.active()
                if active is None or active == self.in_force:
                    continue
                version = await self.versions.get(active)
                if version is None:
                    continue
                self._store.config = validate(version.config)
            except (RedisError, OSError, ConfigInvalid) as exc:
                log.warning("admin.follow_failed", error=repr(exc))
                continue
            log.info("admin.routing_followed", version=active, previous=self.in_force)
            self.in_force = active
