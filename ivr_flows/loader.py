"""Reading flow files: YAML in, a validated :class:`~ivr_flows.model.Flow` out, or an error that names
the file, the key path and the reason (the style of :class:`cti.config.ConfigError`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ivr_flows.model import Flow

__all__ = ["FlowError", "load_flow", "load_flows", "parse_flow"]


class FlowError(Exception):
    """A flow file cannot be used; the message says where and why."""


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"  {'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()]
    return "\n".join([f"{source}: {exc.error_count()} invalid setting(s)", *lines])


def parse_flow(data: Any, *, source: str, default_id: str | None = None) -> Flow:
    """Validate already-parsed YAML (the admin API gets JSON); ``default_id`` names a flow that does not."""
    if not isinstance(data, dict):
        raise FlowError(f"{source}: the top level must be a mapping, not {type(data).__name__}")
    if default_id is not None and "id" not in data:
        data = {**data, "id": default_id}
    try:
        return Flow.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise FlowError(_format_errors(source, exc)) from exc


def load_flow(path: Path | str) -> Flow:
    """One ``*.yaml`` file; its id defaults to the file name without the extension."""
    path = Path(path)
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FlowError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise FlowError(f"{source}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except yaml.YAMLError as exc:
        raise FlowError(f"{source}: not valid YAML: {exc}") from exc
    return parse_flow(data, source=source, default_id=path.stem)


def load_flows(directory: Path | str) -> dict[str, Flow]:
    """Every ``*.yaml`` in ``directory`` by flow id; all errors at once, and two files with one id is one."""
    flows: dict[str, Flow] = {}
    errors: list[str] = []
    for path in sorted(Path(directory).glob("*.yaml")):
        try:
            flow = load_flow(path)
        except FlowError as exc:
            errors.append(str(exc))
            continue
        if flow.id in flows:
            errors.append(f"{path}: flow id {flow.id!r} is also the id of {flows[flow.id].source}")
            continue
        flows[flow.id] = flow
    if errors:
        raise FlowError("\n".join(errors))
    return flows
