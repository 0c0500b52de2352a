"""The routing configuration (``config/routing.yaml``): skills, tiers, entry points, policy.

Validated once into frozen models; names that point elsewhere in the file (an entry point's
skills, tier, groups, language; an agent's profile) are checked too, and every error names the
file, the key path and the reason (:class:`RoutingConfigError`), in the style of ``cti.config``.
All durations are whole seconds and all weights integers: the decision path has no floats.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from routing.model import AgentState, AgentStatus, Requirements

__all__ = [
    "AgentProfile",
    "Aging",
    "EntryPoint",
    "EscalationStep",
    "Policy",
    "PreferredAgent",
    "RequirementsSpec",
    "Reservation",
    "RoutingConfig",
    "RoutingConfigError",
    "Selection",
    "ServiceLevel",
    "Tier",
    "WaitBoost",
    "load_routing_config",
    "parse_routing_config",
]

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Language = Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[a-z0-9]{2,8})?$")]
AgentId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Level = Annotated[int, Field(ge=1, le=5, description="proficiency, 1 (novice) .. 5 (expert)")]
Policy = Literal["strict", "priority_plus_wait", "sla_deficit"]
Selection = Literal["best_proficiency", "longest_idle"]

#: A day: longer timers are typos, and the bound keeps every score below 2**53 (README).
_DAY_S = 86_400


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Cross-references are checked after the fields validate, so a broken name is reported at its
# own key path (``entry_points.billing.requires.skills.biling``), not at the top level.
_Problem = tuple[tuple[str | int, ...], str]


def _raise(title: str, problems: list[_Problem]) -> None:
    if problems:
        raise ValidationError.from_exception_data(title, [
            InitErrorDetails(type=PydanticCustomError("routing_reference", msg), loc=loc, input=None)
            for loc, msg in problems
        ])


def _unknown(kind: str, name: str, known: Mapping[str, object] | list[str]) -> str:
    return f"unknown {kind} {name!r} (known: {', '.join(sorted(known)) or 'none'})"


class ServiceLevel(_Model):
    """"90 % answered within 10 s": the KPI target, and what ``sla_deficit`` ranks against."""

    percent: int = Field(ge=1, le=100)
    within_s: int = Field(ge=1, le=3600)


class Tier(_Model):
    """A priority class. Higher ``priority`` goes first; ``customer_vip_tier`` maps the directory's 1..3."""

    priority: int = Field(ge=0, le=1_000_000)
    service_level: ServiceLevel
    customer_vip_tier: int | None = Field(None, ge=1, le=3)


class RequirementsSpec(_Model):
    """An entry point's requirements as written; see :class:`routing.model.Requirements`."""

    skills: dict[Name, Level] = {}
    any_of: dict[Name, Level] = Field({}, description="alternatives to `skills`: any one of them will do")
    language: Language | None = Field(None, description="None: the language the caller chose")
    groups: list[Name] = Field([], description="when set, only members of one of these groups")
    overflow_groups: list[Name] = Field([], description="members take the call whatever their skills")

    @model_validator(mode="after")
    def _alternatives_need_skills(self) -> RequirementsSpec:
        if self.any_of and not self.skills:
            _raise("RequirementsSpec", [(("any_of",), "lists alternatives to `skills`, which is empty")])
        return self

    def build(self) -> Requirements:
        return Requirements(
            skills=dict(self.skills), any_of=dict(self.any_of), language=self.language,
            groups=frozenset(self.groups), overflow_groups=frozenset(self.overflow_groups),
        )


class EscalationStep(_Model):
    """After ``after_s`` of waiting (counted from the first enqueue), widen who may take the call.

    Steps accumulate: each fired step's changes stay. Every change only widens.
    """

    after_s: int = Field(ge=1, le=_DAY_S)
    min_level: Level | None = Field(None, description="no required level above this from here on")
    any_of: dict[Name, Level] = Field({}, description="alternative skills added")
    overflow_groups: list[Name] = Field([], description="overflow groups added")
    drop_preferred: bool = Field(False, description="stop waiting for (and favouring) the preferred agent")

    @model_validator(mode="after")
    def _changes_something(self) -> EscalationStep:
        if self.min_level is None and not self.any_of and not self.overflow_groups and not self.drop_preferred:
            _raise("EscalationStep", [((), "changes nothing: set min_level, any_of, overflow_groups or "
                                          "drop_preferred")])
        return self


class EntryPoint(_Model):
    """What a caller's IVR choice asks for, at which tier by default, and how that widens."""

    tier: Name
    requires: RequirementsSpec = RequirementsSpec()
    escalation: list[EscalationStep] = []
    wait_for_preferred: bool = Field(False, description="hold a call with a preferred agent for that agent "
                                     "alone until a step drops the preference")
    wrapup_s: int | None = Field(None, ge=0, le=3600, description="None: the config's wrapup_s")

    @model_validator(mode="after")
    def _steps_in_order(self) -> EntryPoint:
        problems: list[_Problem] = []
        for i, step in enumerate(self.escalation):
            if i and step.after_s <= self.escalation[i - 1].after_s:
                problems.append((("escalation", i, "after_s"),
                                 f"must be later than the step before ({self.escalation[i - 1].after_s} s)"))
            if step.any_of and not self.requires.skills:
                problems.append((("escalation", i, "any_of"), "lists alternatives to requires.skills, which is empty"))
        if self.wait_for_preferred and not any(s.drop_preferred for s in self.escalation):
            problems.append((("wait_for_preferred",), "needs an escalation step with drop_preferred: true, or a "
                             "call waits forever for an absent preferred agent"))
        _raise("EntryPoint", problems)
        return self


class WaitBoost(_Model):
    """``priority_plus_wait``: priority points added per second waited, and the most waiting adds."""

    per_s: int = Field(1, ge=0, le=1000)
    cap: int = Field(100, ge=0, le=1_000_000)


class Aging(_Model):
    """The starvation bound: a call that has waited ``max_wait_s`` goes ahead of every younger call."""

    max_wait_s: int | None = Field(None, ge=1, le=_DAY_S, description="None: no bound (strict can starve)")


class PreferredAgent(_Model):
    account_manager: bool = Field(True, description="a call's preferred_agent (the account manager) counts")
    last_agent_window_s: int = Field(0, ge=0, le=30 * _DAY_S,
                                     description="the last agent counts if they served the caller this "
                                     "recently before the call was queued; 0 = never")


class Reservation(_Model):
    """An offer rings the agent this long; no answer (RONA) sets them not ready for this reason."""

    offer_timeout_s: int = Field(15, ge=1, le=600)
    rona_not_ready_reason: Name = "no_answer"


class AgentProfile(_Model):
    """An agent's routing profile, keyed by the agent id of ``cti.yaml``."""

    skills: dict[Name, Level] = {}
    languages: list[Language] = []
    groups: list[Name] = []


class RoutingConfig(_Model):
    skills: dict[Name, str] = Field(description="skill -> what it covers")
    languages: list[Language] = Field(min_length=1)
    groups: dict[Name, str] = Field({}, description="group -> who is in it")
    not_ready_reasons: list[Name] = ["break", "lunch", "training", "meeting", "no_answer"]
    tiers: dict[Name, Tier] = Field(min_length=1)
    entry_points: dict[Name, EntryPoint] = Field(min_length=1)
    policy: Policy = "priority_plus_wait"
    wait_boost: WaitBoost = WaitBoost()
    aging: Aging = Aging()
    selection: Selection = "best_proficiency"
    preferred_agent: PreferredAgent = PreferredAgent()
    reservation: Reservation = Reservation()
    wrapup_s: int = Field(10, ge=0, le=3600, description="after-call work before an agent is ready again")
    agents: dict[AgentId, AgentProfile] = {}

    @model_validator(mode="after")
    def _references_resolve(self) -> RoutingConfig:
        _raise("RoutingConfig", list(self._broken_references()))
        return self

    def _broken_references(self) -> Iterator[_Problem]:
        def names(where: tuple[str | int, ...], kind: str, used: Mapping[str, object] | list[str],
                  known: Mapping[str, object] | list[str]) -> Iterator[_Problem]:
            for i, name in enumerate(used):
                if name not in known:
                    yield ((*where, name if isinstance(used, Mapping) else i), _unknown(kind, name, known))

        for ep_name, ep in self.entry_points.items():
            at = ("entry_points", ep_name)
            if ep.tier not in self.tiers:
                yield (*at, "tier"), _unknown("tier", ep.tier, self.tiers)
            req = ep.requires
            yield from names((*at, "requires", "skills"), "skill", req.skills, self.skills)
            yield from names((*at, "requires", "any_of"), "skill", req.any_of, self.skills)
            yield from names((*at, "requires", "groups"), "group", req.groups, self.groups)
            yield from names((*at, "requires", "overflow_groups"), "group", req.overflow_groups, self.groups)
            if req.language is not None and req.language not in self.languages:
                yield (*at, "requires", "language"), _unknown("language", req.language, self.languages)
            for i, step in enumerate(ep.escalation):
                yield from names((*at, "escalation", i, "any_of"), "skill", step.any_of, self.skills)
                yield from names((*at, "escalation", i, "overflow_groups"), "group", step.overflow_groups,
                                 self.groups)
        for agent_id, profile in self.agents.items():
            at = ("agents", agent_id)
            yield from names((*at, "skills"), "skill", profile.skills, self.skills)
            yield from names((*at, "languages"), "language", profile.languages, self.languages)
            yield from names((*at, "groups"), "group", profile.groups, self.groups)
        owners: dict[int, str] = {}
        for tier_name, tier in self.tiers.items():
            if tier.customer_vip_tier is not None:
                if tier.customer_vip_tier in owners:
                    yield (("tiers", tier_name, "customer_vip_tier"),
                           f"tier {owners[tier.customer_vip_tier]!r} already maps customer VIP tier "
                           f"{tier.customer_vip_tier}")
                owners.setdefault(tier.customer_vip_tier, tier_name)
        if self.reservation.rona_not_ready_reason not in self.not_ready_reasons:
            yield (("reservation", "rona_not_ready_reason"),
                   _unknown("not-ready reason", self.reservation.rona_not_ready_reason, self.not_ready_reasons))

    def tier_for(self, entry_point: str, vip_tier: int = 0) -> str:
        """The tier a call is queued at: the entry point's, or the caller's VIP tier if that ranks higher.

        A directory VIP tier no tier maps counts as the highest one mapped below it.
        """
        tier = self.entry_points[entry_point].tier
        mapped = [(t.customer_vip_tier, name) for name, t in self.tiers.items()
                  if t.customer_vip_tier is not None and t.customer_vip_tier <= vip_tier]
        if mapped:
            vip = max(mapped)[1]
            if self.tiers[vip].priority > self.tiers[tier].priority:
                return vip
        return tier

    def wrapup_s_for(self, entry_point: str) -> int:
        own = self.entry_points[entry_point].wrapup_s
        return self.wrapup_s if own is None else own

    def agent_state(self, agent_id: str, *, status: AgentStatus, idle_since_ms: int = 0,
                    not_ready_reason: str | None = None) -> AgentState:
        """A snapshot of a configured agent; one without a profile has no skills, languages or groups."""
        profile = self.agents.get(agent_id, AgentProfile())
        return AgentState(
            id=agent_id, skills=dict(profile.skills), languages=frozenset(profile.languages),
            groups=frozenset(profile.groups), status=status, idle_since_ms=idle_since_ms,
            not_ready_reason=not_ready_reason,
        )


class RoutingConfigError(Exception):
    """The routing configuration cannot be used; the message says where and why."""


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"  {'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()]
    return "\n".join([f"{source}: {exc.error_count()} invalid setting(s)", *lines])


def parse_routing_config(data: Any, source: str = "(routing config)") -> RoutingConfig:
    """Validate a mapping (from a file, or later from the admin API / Redis)."""
    if not isinstance(data, Mapping):
        raise RoutingConfigError(f"{source}: the top level must be a mapping, not {type(data).__name__}")
    try:
        return RoutingConfig.model_validate(data)
    except ValidationError as exc:
        raise RoutingConfigError(_format_errors(source, exc)) from exc


def load_routing_config(path: Path | str) -> RoutingConfig:
    """Read and validate; raise :class:`RoutingConfigError` naming the file and key path."""
    source = str(path)
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RoutingConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise RoutingConfigError(f"{source}: not valid YAML: {exc}") from exc
    return parse_routing_config({} if loaded is None else loaded, source)
