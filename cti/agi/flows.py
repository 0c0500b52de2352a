"""The flows of ``agi.flows`` as the FastAGI server runs them: read at start, read again when a file changes.

    registry = FlowRegistry(config.agi.flows)
    registry.load()                                   # at start: any bad file is a FlowError
    AgiServer(flows=registry.current, ...)            # each new call: at most one directory scan a second

An admin edits ``config/ivr/hotline.yaml`` on a running server; the next call runs the edit, and a call
already in the flow finishes on the version it started (its session holds that :class:`~ivr_flows.Flow`).
No signal or command is needed: :meth:`FlowRegistry.current` compares each file's stamp (mtime, size,
inode) with the one it read, at most every ``check_every`` seconds, so a busy server costs one ``scandir``
a second, not one per call. SIGHUP is not used: ``cti serve`` stops on it, as systemd expects.

A changed file is taken whole or not at all, each file on its own: one that does not parse, or that
:func:`ivr_flows.check_flow` finds errors in (a ``next`` naming no node, a loop with no exit), is rejected
and logged, and the flow it held before stays in service; so does a file whose id another file already
has. Rejected stamps are remembered, so a bad file is logged once, not every second, and the next save
is tried again. A removed file's flow is removed: new calls to it are refused and the dialplan goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

import structlog
from structlog.typing import FilteringBoundLogger

from ivr_flows import Flow, FlowError, Problem, check_flow, load_flow

__all__ = ["FlowRegistry", "Stamp", "flow_errors"]

log: FilteringBoundLogger = structlog.get_logger(__name__)

#: What tells a file changed without reading it: (mtime ns, size, inode, ctime ns).
Stamp = tuple[int, int, int, int]
_SUFFIX: Final = ".yaml"


@dataclass(frozen=True, slots=True)
class _File:
    stamp: Stamp
    flow: Flow | None  # the flow in service from this file (an older version when the latest edit was rejected)
    error: str | None = None  # why the latest version was rejected


def flow_errors(flow: Flow) -> list[Problem]:
    """What keeps a flow out of service: :func:`check_flow`'s errors (its warnings do not)."""
    return [p for p in check_flow(flow) if p.severity == "error"]


class FlowRegistry(Mapping[str, Flow]):
    """Flows by id from the ``*.yaml`` files of one directory, kept current as the files change.

    As a mapping it is the flows in service, without looking at the files (``sorted(registry)``).

    ``check(flow)`` returns the problems that keep a flow out of service (default: :func:`check_flow`'s
    errors; the server may add its routing config's entry points, skills and tiers).
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        check_every: float = 1.0,
        check: Callable[[Flow], list[Problem]] = flow_errors,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self.check_every = check_every
        self._check = check
        self._clock = clock
        self._files: dict[Path, _File] = {}
        self._flows: Mapping[str, Flow] = MappingProxyType({})
        self._checked_at: float | None = None
        self.reloads = 0  # flow versions taken into service after the start
        self.rejected = 0  # file versions refused

    # ------------------------------------------------------------------ reading

    def load(self) -> Mapping[str, Flow]:
        """The first read, strict: every problem of every file in one :class:`FlowError`, nothing taken."""
        errors: list[str] = []
        files: dict[Path, _File] = {}
        for path, stamp in self._scan().items():
            try:
                flow = self._read(path)
            except FlowError as exc:
                errors.append(str(exc))
                continue
            files[path] = _File(stamp, flow)
        by_id: dict[str, Path] = {}
        for path, entry in files.items():
            assert entry.flow is not None
            if entry.flow.id in by_id:
                errors.append(f"{path}: flow id {entry.flow.id!r} is also the id of {by_id[entry.flow.id]}")
            by_id[entry.flow.id] = path
        if errors:
            raise FlowError("\n".join(errors))
        self._files = files
        self._publish()
        self._checked_at = self._clock()
        return self._flows

    def current(self) -> Mapping[str, Flow]:
        """The flows for a new call: the files are looked at if ``check_every`` has passed since last time."""
        now = self._clock()
        if self._checked_at is None or now - self._checked_at >= self.check_every:
            self._checked_at = now
            self.refresh()
        return self._flows

    def refresh(self) -> bool:
        """Look at the files now; True when the flows in service changed. Never raises: a directory that
        cannot be read keeps the flows in service (logged)."""
        try:
            stamps = self._scan()
        except FlowError as exc:
            log.warning("agi.flows_unreadable", directory=str(self.directory), error=str(exc),
                        effect="the flows in service stay")
            return False
        changed = False
        for path in [p for p in self._files if p not in stamps]:
            gone = self._files.pop(path)
            if gone.flow is not None:
                changed = True
                log.warning("agi.flow_removed", file=str(path), flow=gone.flow.id,
                            effect="new calls to it are refused; calls in it finish")
        taken = {entry.flow.id: path for path, entry in self._files.items() if entry.flow is not None}
        for path, stamp in sorted(stamps.items()):
            old = self._files.get(path)
            if old is not None and old.stamp == stamp:
                continue
            changed |= self._take(path, stamp, old, taken)
        if changed:
            self._publish()
        return changed

    # ------------------------------------------------------------------ inside

    def _take(self, path: Path, stamp: Stamp, old: _File | None, taken: dict[str, Path]) -> bool:
        """One new or changed file: into service, or rejected with the old version kept."""
        kept = old.flow if old is not None else None
        try:
            flow = self._read(path)
        except FlowError as exc:
            self._reject(path, stamp, kept, str(exc))
            return False
        except Exception as exc:  # whatever a file holds, it must not take the calls down: reject it, go on
            self._reject(path, stamp, kept, f"{path}: cannot be read as a flow: {exc!r}")
            return False
        owner = taken.get(flow.id)
        if owner is not None and owner != path:
            self._reject(path, stamp, kept, f"{path}: flow id {flow.id!r} is also the id of {owner}")
            return False
        if kept is not None and kept.version == flow.version and kept.id == flow.id:
            self._files[path] = _File(stamp, kept)  # touched or saved unchanged: the same version
            return False
        if kept is not None and kept.id != flow.id:
            taken.pop(kept.id, None)
        taken[flow.id] = path
        self._files[path] = _File(stamp, flow)
        self.reloads += 1
        log.info("agi.flow_loaded", file=str(path), flow=flow.id, version=flow.version,
                 replaces=kept.version if kept is not None else None,
                 effect="new calls run this version; calls in the flow finish on theirs")
        return True

    def _reject(self, path: Path, stamp: Stamp, kept: Flow | None, error: str) -> None:
        self._files[path] = _File(stamp, kept, error)
        self.rejected += 1
        log.error("agi.flow_rejected", file=str(path), error=error,
                  kept=f"{kept.id}@{kept.version}" if kept is not None else None,
                  effect="the version in service stays" if kept is not None else "no flow from this file")

    def _read(self, path: Path) -> Flow:
        flow = load_flow(path)
        problems = self._check(flow)
        if problems:
            raise FlowError("\n".join([f"{path}: {len(problems)} error(s)", *(f"  {p}" for p in problems)]))
        return flow

    def _scan(self) -> dict[Path, Stamp]:
        """``*.yaml`` files and their stamps, in name order."""
        try:
            with os.scandir(self.directory) as entries:
                found = [e for e in entries if e.name.endswith(_SUFFIX) and not e.name.startswith(".")]
                stamps: dict[Path, Stamp] = {}
                for entry in found:
                    try:
                        if not entry.is_file():
                            continue
                        st = entry.stat()
                    except OSError:  # removed between the listing and the stat
                        continue
                    stamps[Path(entry.path)] = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
        except OSError as exc:
            raise FlowError(f"{self.directory}: cannot read the flows directory: {exc.strerror or exc}") from exc
        return dict(sorted(stamps.items()))

    def _publish(self) -> None:
        """A new mapping each time (never changed in place): a caller holding the old one keeps a whole set."""
        self._flows = MappingProxyType({e.flow.id: e.flow for e in self._files.values() if e.flow is not None})

    def __getitem__(self, flow_id: str) -> Flow:
        return self._flows[flow_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._flows)

    def __len__(self) -> int:
        return len(self._flows)

    @property
    def problems(self) -> dict[str, str]:
        """Files whose latest version was rejected, and why (for /healthz or a log line)."""
        return {str(p): e.error for p, e in self._files.items() if e.error is not None}
