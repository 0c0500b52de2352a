"""Waiting calls and agent states in Redis, matched and reserved by Lua scripts, one atomic step each.

Several CTI servers share one Redis: a match reads the state, picks the pair exactly as the pure
core (:mod:`routing.decide`, contract in ``routing/README.md``) and reserves both sides inside one
script, so no agent gets two calls and no call goes to two agents. This module only encodes,
calls and decodes; the decision is ``common.lua`` + ``match_agent.lua`` / ``match_call.lua``.

Key layout under ``{key_prefix}router:`` (one Redis, not a cluster: the scripts derive key names)::

    config                hash    version, g (global JSON), ep:<entry point> (JSON)
    call:<id>             hash    d (call JSON), state (waiting|reserved), agent, ix (its index keys)
    waiting               zset    every waiting call, by enqueued_at_ms
    reserved              hash    call id -> agent id, while an offer is out
    w:<tier>:<key>        zset    waiting calls of a tier under an index key, by enqueued_at_ms
    h:<tier>:<key>        string  the first member of w:<tier>:<key>, "<enqueued_at_ms> <id>"
    esc                   zset    call id -> when its next escalation step adds index keys
    agent:<id>            hash    p (skills/languages/groups JSON), status, idle, reason, call
    agents                set     every agent id
    r:any, r:group:<g>,   zset    ready agents, by idle_since_ms, under each of their groups and
    r:skill:<s>:<level>           skills, at their level

A call is indexed under :func:`routing.eligibility.index_keys` (``any``, ``skill:<s>``,
``group:<g>``) of the escalation steps fired so far; ``esc`` re-indexes it inside the next
``match_for_agent`` once a step adds keys (they only grow), so time passing needs no tick. Within
a tier, calls rank by (``enqueued_at_ms``, id) under every policy (an older call never scores
lower), which is the order of ``w:<tier>:<key>``. Costs, with K an agent's keys, T the tiers:

* ``match_for_agent``: one MGET of the K·T heads, then one step per call read. The sets are merged
  in call order and the first call the agent may take wins, so the only calls read are those that
  rank above it under the agent's keys and that this agent may not take.
* ``match_for_call``: the preferred agent directly (alone, when the call is held for them);
  otherwise the ready agents under the call's keys, only at the levels it accepts, in (idle, id)
  order: up to the first eligible one per set under ``longest_idle``; under ``best_proficiency``
  highest level first, stopping once no one left can be more proficient (with one required
  skill: the first eligible agent at the highest level).
* ``apply_config``: O(waiting calls) once; the next ``match_for_agent`` then re-indexes the calls
  whose steps have already fired (about 100 ms for 10,000 calls on a busy 2-core box).

Every integer crosses into Lua as a double: :data:`MAX_MS` keeps times and their differences
exact. The config's own bounds do the rest (``routing/README.md``: units and bounds).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Set
from functools import cache
from importlib import resources
from typing import Any, Literal, cast, get_args

import redis.asyncio as aioredis

from routing.config import RoutingConfig
from routing.model import AgentState, AgentStatus, Requirements, WaitingCall
from routing.trace import Decision, Passed, Reason, Trace

__all__ = ["MAX_MS", "RouterStore"]

#: Times (ms) must be within ±2**51, so every difference Lua takes stays below 2**53.
MAX_MS = 2**51
#: Agent levels the scripts accept: the config's Level; ``match_for_call`` stops at a perfect agent.
_LEVELS = range(1, 6)
_STATUSES: frozenset[str] = frozenset(get_args(AgentStatus))


@cache
def _lua(name: str) -> str:
    return resources.files("cti.router").joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _script(name: str) -> str:
    """Each script is the shared part (the port of routing/) followed by its own body."""
    return f"{_lua('common')}\n{_lua(name)}"


def _ms(value: int, what: str) -> int:
    if not -MAX_MS <= value <= MAX_MS:
        raise ValueError(f"{what} {value} is outside ±2**51 ms")
    return value


def _members(names: Set[str]) -> dict[str, bool]:
    """Sets go to Lua as {name: true}: cjson cannot tell an empty array from an empty object."""
    return dict.fromkeys(sorted(names), True)


def _requirements_json(req: Requirements) -> dict[str, Any]:
    data: dict[str, Any] = {"skills": dict(req.skills), "any_of": dict(req.any_of), "groups": _members(req.groups),
                            "overflow": _members(req.overflow_groups)}
    if req.language is not None:
        data["lang"] = req.language
    return data


def _config_fields(config: RoutingConfig) -> tuple[str, dict[str, str]]:
    """What the scripts read: global settings, and each entry point apart (decoded only when used)."""
    g: dict[str, Any] = {
        "policy": config.policy,
        "selection": config.selection,
        "per_s": config.wait_boost.per_s,
        "cap": config.wait_boost.cap,
        "am": config.preferred_agent.account_manager,
        "window_ms": config.preferred_agent.last_agent_window_s * 1000,
        "rona": config.reservation.rona_not_ready_reason,
        "tiers": {name: {"p": t.priority, "w": t.service_level.within_s} for name, t in config.tiers.items()},
    }
    if config.aging.max_wait_s is not None:
        g["max_wait_ms"] = config.aging.max_wait_s * 1000
    entries = {}
    for name, ep in config.entry_points.items():
        steps = []
        for step in ep.escalation:
            s: dict[str, Any] = {"at_ms": step.after_s * 1000, "any_of": dict(step.any_of),
                                 "overflow": _members(set(step.overflow_groups)), "drop": step.drop_preferred}
            if step.min_level is not None:
                s["min"] = step.min_level
            steps.append(s)
        entries[name] = json.dumps({"req": _requirements_json(ep.requires.build()), "steps": steps,
                                    "wfp": ep.wait_for_preferred}, separators=(",", ":"))
    return json.dumps(g, separators=(",", ":")), entries


def _call_json(call: WaitingCall) -> str:
    if ":" in call.tier:
        raise ValueError(f"call {call.id!r}: tier {call.tier!r} has a ':' (it is part of index key names)")
    data: dict[str, Any] = {"ep": call.entry_point, "tier": call.tier,
                            "at": _ms(call.enqueued_at_ms, "enqueued_at_ms")}
    optional = {"lang": call.language, "pref": call.preferred_agent, "last": call.last_agent,
                "served": None if call.last_served_at_ms is None else _ms(call.last_served_at_ms, "last_served_at_ms")}
    data.update({k: v for k, v in optional.items() if v is not None})
    if call.requirements is not None:
        req = call.requirements
        low = {s: lvl for s, lvl in [*req.skills.items(), *req.any_of.items()] if lvl < 1}
        if low:  # any_of at 0 would admit agents without the skill, whom no index key finds
            raise ValueError(f"call {call.id!r}: required levels must be at least 1, not {low}")
        data["req"] = _requirements_json(req)
    return json.dumps(data, separators=(",", ":"))


def _from_call_json(call_id: str, raw: str | bytes) -> WaitingCall:
    d = json.loads(raw)
    req = d.get("req")
    return WaitingCall(
        id=call_id, entry_point=d["ep"], tier=d["tier"], enqueued_at_ms=d["at"], language=d.get("lang"),
        requirements=None if req is None else _requirements_from(req), preferred_agent=d.get("pref"),
        last_agent=d.get("last"), last_served_at_ms=d.get("served"),
    )


def _requirements_from(d: Mapping[str, Any]) -> Requirements:
    return Requirements(skills=dict(d["skills"]), any_of=dict(d["any_of"]), language=d.get("lang"),
                        groups=frozenset(d["groups"]), overflow_groups=frozenset(d["overflow"]))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decision(reply: str | bytes, *, side: Literal["agent", "call"]) -> Decision:
    """The script's reply. Its trace lists the ids the index led to (at most 32), not every one."""
    d = json.loads(reply)
    flat = d["passed"] or []  # cjson writes an empty list as {}
    passed = [Passed(flat[i], cast(Reason, flat[i + 1])) for i in range(0, len(flat), 2)]
    return Decision(d["call"], d["agent"], Trace(
        step=d["step"], wait_ms=int(d["wait"]), score=int(d["score"]), requirements=_requirements_from(d["req"]),
        preferred_agent=d.get("pref"), waits_for_preferred=d["held"],
        agents_passed=tuple(sorted(passed, key=lambda p: p.id)) if side == "call" else (),
        calls_passed=tuple(passed) if side == "agent" else (),
    ))


class RouterStore:
    """The routing state of every server sharing ``redis``; the config in force lives there too.

    ``config`` is what :meth:`apply_config` puts in force; until some server has, the scripts
    refuse to run (``ResponseError: ROUTER no routing config``). A reservation ends with
    :meth:`remove_call` (answered or abandoned: then set the agent ``on_call`` or ``ready``) or
    :meth:`requeue` (no answer).
    """

    def __init__(self, redis: aioredis.Redis, config: RoutingConfig, *, key_prefix: str = "cti:") -> None:
        self._redis = redis
        self.config = config
        self._ns = f"{key_prefix}router:"
        self._configure = redis.register_script(_script("config"))
        self._agent = redis.register_script(_script("agent"))
        self._call = redis.register_script(_script("call"))
        self._match_agent = redis.register_script(_script("match_agent"))
        self._match_call = redis.register_script(_script("match_call"))

    async def apply_config(self, config: RoutingConfig | None = None) -> int:
        """Put ``config`` (default: this store's) in force for every server and re-index the waiting
        calls under it, keeping them and their places. Returns the config version in Redis."""
        if config is not None:
            self.config = config
        g, entries = _config_fields(self.config)
        args = [self._ns, g, *(x for name, raw in entries.items() for x in (name, raw))]
        return int(await self._configure(args=args))

    async def put_agent(self, agent: AgentState) -> None:
        """Store the whole snapshot (login, a profile edit, a tool): status and idle time as given."""
        bad = {s: lvl for s, lvl in agent.skills.items() if lvl not in _LEVELS}
        if bad:
            raise ValueError(f"agent {agent.id!r}: levels must be 1..5, not {bad}")
        if agent.status not in _STATUSES:
            raise ValueError(f"agent {agent.id!r}: unknown status {agent.status!r}")
        profile = json.dumps({"skills": dict(agent.skills), "languages": _members(agent.languages),
                              "groups": _members(agent.groups)}, separators=(",", ":"))
        await self._agent(args=[self._ns, "put", agent.id, profile, agent.status,
                                _ms(agent.idle_since_ms, "idle_since_ms"), agent.not_ready_reason or ""])

    async def set_agent_status(self, agent_id: str, status: AgentStatus, *, now_ms: int,
                               reason: str | None = None) -> bool:
        """Becoming ready from anything but ``reserved`` starts their idle time at ``now_ms``; staying
        ready, or a withdrawn offer, keeps it. False for an agent the store does not have."""
        if status not in _STATUSES:
            raise ValueError(f"unknown agent status {status!r}")
        return bool(await self._agent(args=[self._ns, "status", agent_id, status, _ms(now_ms, "now_ms"),
                                            reason or ""]))

    async def enqueue(self, call: WaitingCall) -> bool:
        """Queue a call; False (and nothing changes) if its id is already waiting or reserved."""
        return bool(await self._call(args=[self._ns, "enqueue", call.id, _call_json(call)]))

    async def remove_call(self, call_id: str) -> bool:
        """Answered or abandoned: the call leaves the store. A reserved agent stays reserved (with no
        call) until set ``on_call`` or ``ready``, so no match can take them in between."""
        return bool(await self._call(args=[self._ns, "remove", call_id]))

    async def requeue(self, call_id: str, *, agent_status: Literal["not_ready", "ready"] = "not_ready",
                      reason: str | None = None) -> bool:
        """No answer (RONA): the reserved call waits again with its ``enqueued_at_ms``, so it keeps
        its step and score; its agent, if still reserved for it, becomes ``agent_status`` (not ready
        for ``reason``, by default the config's ``rona_not_ready_reason``). False if not reserved."""
        return bool(await self._call(args=[self._ns, "requeue", call_id, agent_status, reason or ""]))

    async def match_for_agent(self, agent_id: str, now_ms: int) -> Decision | None:
        """A newly free agent takes the best call they may take, as ``best_call_for_agent``; both reserved."""
        reply = await self._match_agent(args=[self._ns, agent_id, _ms(now_ms, "now_ms")])
        return None if reply is None else _decision(reply, side="agent")

    async def match_for_call(self, call_id: str, now_ms: int) -> Decision | None:
        """A newly queued (or escalated) call goes to its best agent, as ``best_agent_for_call``; both reserved."""
        reply = await self._match_call(args=[self._ns, call_id, _ms(now_ms, "now_ms")])
        return None if reply is None else _decision(reply, side="call")

    async def waiting(self) -> list[WaitingCall]:
        """The waiting calls (not the reserved ones), oldest first: for tests and tools."""
        members = cast("list[str | bytes]", await self._redis.zrange(f"{self._ns}waiting", 0, -1))
        ids = [_text(i) for i in members]
        async with self._redis.pipeline(transaction=True) as pipe:
            for call_id in ids:
                pipe.hget(f"{self._ns}call:{call_id}", "d")
            raws = await pipe.execute()
        return [_from_call_json(i, raw) for i, raw in zip(ids, raws, strict=True) if raw is not None]

    async def reservations(self) -> dict[str, str]:
        """Call id -> agent id for every offer out."""
        raw = await self._redis.hgetall(f"{self._ns}reserved")
        return {_text(k): _text(v) for k, v in raw.items()}

    async def agents(self) -> list[AgentState]:
        """Every agent, by id: for tests and tools."""
        ids = sorted(_text(i) for i in await self._redis.smembers(f"{self._ns}agents"))
        async with self._redis.pipeline(transaction=True) as pipe:
            for agent_id in ids:
                pipe.hmget(f"{self._ns}agent:{agent_id}", ["p", "status", "idle", "reason"])
            rows = await pipe.execute()
        out = []
        for agent_id, (profile, status, idle, reason) in zip(ids, rows, strict=True):
            p = json.loads(profile)
            out.append(AgentState(
                id=agent_id, skills=p["skills"], languages=frozenset(p["languages"]), groups=frozenset(p["groups"]),
                status=cast(AgentStatus, _text(status)), idle_since_ms=int(idle),
                not_ready_reason=_text(reason) or None,
            ))
        return out
