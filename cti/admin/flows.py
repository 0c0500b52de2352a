"""Editing IVR flows from the admin API: each flow file's versions in Redis, validated as the server
reads flows, activated by writing the file, which :class:`~cti.agi.flows.FlowRegistry` takes up for
the next call (a caller already in the flow finishes on the version they started).

Redis holds the versions and the one in force (``{prefix}admin:ivr:{name}:…``, as for the routing
config); the file is what the FastAGI server runs. Every server writes the version in force to its own
flows directory (at start, and within ``FOLLOW_S`` of another server activating one). A file edited by
hand is not lost: at start a file that is none of the stored versions becomes a new version (author
``file``) and is put in force; one that is an older stored version is stale and gets the version in
force written over it.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import structlog
from pydantic import ValidationError
from redis.exceptions import RedisError

from cti.admin.routing import FOLLOW_S, ConfigInvalid, load_yaml
from cti.admin.versions import AuditLog, ConfigVersions, Version
from cti.agi.flows import flow_errors
from cti.supervise import raise_if_cancelling
from ivr_flows import Flow

__all__ = ["FLOW_NAME", "FlowAdmin", "validate_flow"]

log = structlog.get_logger(__name__)

#: A flow file's name without ``.yaml``: what the dialplan's ``agi://host/NAME`` names.
FLOW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def validate_flow(name: str, text: str) -> Flow:
    """As :class:`~cti.agi.flows.FlowRegistry` would take the file: parsed, validated, checked; every
    problem with its path (``nodes.menu.options.1.next``, or ``line 3, column 5`` for YAML)."""
    data = load_yaml(text)
    if not isinstance(data, dict):
        raise ConfigInvalid([{"path": "", "message": "a flow is a mapping (start, languages, nodes, …)"}])
    try:
        flow = Flow.model_validate({"id": name, **data, "source": f"{name}.yaml"})
    except ValidationError as exc:
        raise ConfigInvalid([{"path": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
                             for err in exc.errors()]) from None
    problems = flow_errors(flow)
    if problems:
        raise ConfigInvalid([{"path": f"nodes.{p.node}" if p.node else "", "message": f"{p.message} [{p.kind}]"}
                             for p in problems])
    return flow


class FlowAdmin:
    def __init__(self, *, redis: aioredis.Redis, key_prefix: str, directory: Path, audit: AuditLog,
                 reload: Callable[[], object] = lambda: None) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self.directory = directory
        self.audit = audit
        self._reload = reload  # the registry's refresh: the file in service before the reply
        self.in_force: dict[str, int] = {}

    def versions(self, name: str) -> ConfigVersions:
        return ConfigVersions(self._redis, key_prefix=self._prefix, kind=f"ivr:{name}")

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.yaml") if FLOW_NAME.match(p.stem))

    def text(self, name: str) -> str | None:
        try:
            return (self.directory / f"{name}.yaml").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    async def restore(self) -> None:
        """At start, before the flows are loaded: each file against the versions in Redis."""
        known = {n.decode() if isinstance(n, bytes) else n for n in await self._redis.smembers(self._names_key)}
        for name in sorted({*self.names(), *known}):
            versions, text = self.versions(name), self.text(name)
            active = await versions.active()
            current = await versions.get(active) if active is not None else None
            stored = current.config["yaml"] if current is not None else None
            if text is not None and text != stored and all(v.config["yaml"] != text for v in await versions.all()):
                await self._take_file(name, text, versions, active)  # edited by hand, or never stored
                continue
            if current is not None:
                if text != stored:
                    self._write(name, current.config["yaml"])
                    log.info("admin.flow_restored", flow=name, version=current.version,
                             note="the version in force in Redis, not the file")
                self.in_force[name] = current.version

    async def _take_file(self, name: str, text: str, versions: ConfigVersions, active: int | None) -> None:
        try:
            validate_flow(name, text)
        except ConfigInvalid as exc:  # the registry refuses it too, and says why
            log.warning("admin.flow_file_invalid", flow=name, errors=exc.errors, effect="not stored as a version")
            return
        made = await versions.add({"yaml": text}, author="file", parent=active,
                                  comment="read from the flows directory at start")
        await versions.activate(made.version)
        await self._redis.sadd(self._names_key, name)
        self.in_force[name] = made.version
        log.info("admin.flow_from_file", flow=name, version=made.version, previous=active)

    async def propose(self, name: str, text: str, *, who: str, role: str, comment: str = "") -> Version:
        validate_flow(name, text)
        parent = self.in_force.get(name)
        version = await self.versions(name).add({"yaml": text}, author=who, comment=comment, parent=parent)
        await self._redis.sadd(self._names_key, name)
        await self.audit.record(who=who, role=role, action="ivr.version_added", flow=name, version=version.version,
                                parent=parent, comment=comment)
        return version

    async def activate(self, name: str, version: Version, *, who: str, role: str,
                       action: str = "ivr.activated") -> dict[str, Any]:
        flow = validate_flow(name, version.config["yaml"])  # a version stored before a stricter check
        previous = self.in_force.get(name)
        # Redis first: a file written and then a Redis failure would leave this server alone on the new
        # version, and put back at its next start. A write that fails after it, :meth:`follow` tries again.
        await self.versions(name).activate(version.version)
        self._write(name, version.config["yaml"])
        self.in_force[name] = version.version
        self._reload()
        await self.audit.record(who=who, role=role, action=action, flow=name, version=version.version,
                                previous=previous)
        log.info("admin.flow_activated", flow=name, version=version.version, previous=previous, who=who,
                 flow_version=flow.version)
        return {"flow": name, "version": version.version, "previous": previous, "flow_version": flow.version}

    async def rollback(self, name: str, *, who: str, role: str) -> dict[str, Any]:
        """The version of this flow in force before the current one (its audit entry says which)."""
        for entry in await self.audit.recent(1000):
            detail = entry["detail"]
            if entry["action"] in ("ivr.activated", "ivr.rolled_back") and detail.get("flow") == name \
                    and detail.get("version") == self.in_force.get(name):
                previous = detail.get("previous")
                break
        else:
            previous = None
        version = await self.versions(name).get(previous) if isinstance(previous, int) else None
        if version is None:
            raise LookupError(f"no earlier version of {name} was in force")
        return await self.activate(name, version, who=who, role=role, action="ivr.rolled_back")

    async def follow(self) -> None:
        """Write the version another server activated."""
        while True:
            await asyncio.sleep(FOLLOW_S)
            raise_if_cancelling()
            try:
                for raw in await self._redis.smembers(self._names_key):
                    name = raw.decode() if isinstance(raw, bytes) else raw
                    versions = self.versions(name)
                    active = await versions.active()
                    if active is None or active == self.in_force.get(name):
                        continue
                    version = await versions.get(active)
                    if version is None:
                        continue
                    self._write(name, version.config["yaml"])
                    log.info("admin.flow_followed", flow=name, version=active, previous=self.in_force.get(name))
                    self.in_force[name] = active
            except (RedisError, OSError) as exc:
                log.warning("admin.flow_follow_failed", error=repr(exc))

    @property
    def _names_key(self) -> str:
        return f"{self._prefix}admin:ivr:names"

    def _write(self, name: str, text: str) -> None:
        """Whole or not at all: the registry never reads half a file (it skips dot files)."""
        path, tmp = self.directory / f"{name}.yaml", self.directory / f".{name}.yaml.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
