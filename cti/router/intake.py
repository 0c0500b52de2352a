"""A held caller as routing sees them: the :class:`routing.model.WaitingCall` built from the
channel's ``CTI_*`` variables (what the IVR decided, ``ivr_flows/interpreter.py``) and the
customer's directory record.

Pure, and forgiving: the variables come from a dialplan and an IVR flow someone edits, so a value
routing cannot use (an entry point or tier the routing config lacks, a skill it does not know, a
level outside 1..5, JSON that does not parse) is left out and reported in :attr:`Intake.ignored`
rather than keeping the caller from an agent. Only what the routing config knows reaches the store.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from routing.config import RoutingConfig
from routing.model import Requirements, WaitingCall

__all__ = ["Intake", "waiting_call"]


@dataclass(frozen=True, slots=True)
class Intake:
    call: WaitingCall
    ignored: tuple[str, ...] = ()  # what was left out, and why (for the log)


def waiting_call(call_id: str, config: RoutingConfig, *, now_ms: int, entry: str | None,
                 variables: Mapping[str, str], customer: Mapping[str, Any] | None,
                 agents: Collection[str]) -> Intake:
    """The call to enqueue at ``now_ms``.

    * entry point: ``entry`` (the CtiHold's ``Entry``), else ``CTI_ENTRY``, else the config's first;
    * tier: ``CTI_TIER``, else the entry point's or the customer's VIP tier, whichever ranks higher
      (:meth:`RoutingConfig.tier_for`);
    * requirements: ``CTI_REQUIREMENTS`` when it names skills (they replace the entry point's, as
      ``config/ivr/hotline.yaml`` explains); none, so the entry point's in force apply, otherwise;
    * language: the requirements', else ``CTI_LANGUAGE``;
    * preferred agent: the customer's account manager, else the first of the requirements'
      ``preferred_agents``, if a configured agent (``agents``).
    """
    ignored: list[str] = []
    entry_point = _entry_point(config, entry, variables.get("CTI_ENTRY"), ignored)
    tier = _tier(config, entry_point, variables.get("CTI_TIER"), customer, ignored)
    spec = _requirements_json(variables.get("CTI_REQUIREMENTS"), ignored)
    skills = _skills(config, spec.get("skills"), ignored)
    language = _language(config, spec.get("language"), ignored) or _language(
        config, variables.get("CTI_LANGUAGE"), ignored)
    requirements = Requirements(skills=skills, language=language) if skills else None
    preferred = _preferred(customer, spec.get("preferred_agents"), agents, ignored)
    call = WaitingCall(id=call_id, entry_point=entry_point, tier=tier, enqueued_at_ms=now_ms, language=language,
                       requirements=requirements, preferred_agent=preferred)
    return Intake(call, tuple(ignored))


def _entry_point(config: RoutingConfig, entry: str | None, var: str | None, ignored: list[str]) -> str:
    for what, name in (("Entry", entry), ("CTI_ENTRY", var)):
        if name and name in config.entry_points:
            return name
        if name:
            ignored.append(f"{what} {name!r}: no such entry point")
    return next(iter(config.entry_points))


def _tier(config: RoutingConfig, entry_point: str, var: str | None, customer: Mapping[str, Any] | None,
          ignored: list[str]) -> str:
    if var and var in config.tiers:
        return var
    if var:
        ignored.append(f"CTI_TIER {var!r}: no such tier")
    vip = customer.get("vip_tier") if customer else None
    return config.tier_for(entry_point, vip if isinstance(vip, int) and not isinstance(vip, bool) else 0)


def _requirements_json(raw: str | None, ignored: list[str]) -> Mapping[str, Any]:
    if not raw:
        return {}
    try:
        spec = json.loads(raw)
    except ValueError:
        ignored.append("CTI_REQUIREMENTS: not JSON")
        return {}
    if not isinstance(spec, dict):
        ignored.append("CTI_REQUIREMENTS: not a JSON object")
        return {}
    return spec


def _skills(config: RoutingConfig, raw: object, ignored: list[str]) -> dict[str, int]:
    if not isinstance(raw, dict):
        return {}
    out = {}
    for skill, level in raw.items():
        if skill not in config.skills:
            ignored.append(f"skill {skill!r}: not in the routing config")
        elif not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= 5:
            ignored.append(f"skill {skill!r}: level {level!r} is not 1..5")
        else:
            out[skill] = level
    return out


def _language(config: RoutingConfig, raw: object, ignored: list[str]) -> str | None:
    if not raw or not isinstance(raw, str):
        return None
    if raw not in config.languages:
        ignored.append(f"language {raw!r}: not in the routing config")
        return None
    return raw


def _preferred(customer: Mapping[str, Any] | None, listed: object, agents: Collection[str],
               ignored: list[str]) -> str | None:
    candidates: list[object] = [customer.get("account_manager") if customer else None]
    if isinstance(listed, list):
        candidates.extend(listed)
    for agent in candidates:
        if isinstance(agent, str) and agent in agents:
            return agent
        if isinstance(agent, str) and agent:
            ignored.append(f"preferred agent {agent!r}: not a configured agent")
    return None
