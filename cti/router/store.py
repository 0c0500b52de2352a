"""Waiting calls and agent states in Redis, matched and reserved by Lua scripts, one atomic step each.

Several CTI servers share one Redis: a match reads the state, picks the pair exactly as the pure
core (:mod:`routing.decide`, contract in ``routing/README.md``) and reserves both sides inside one
script, so no agent gets two calls and no call goes to two agents. This module only encodes,
calls and decodes; the decision is ``common.lua`` + ``match_agent.lua`` / ``match_call.lua``.

Key layout under ``{key_prefix}router:`` (one Redis, not a cluster: the scripts derive key names)::

    config                hash    version, g (global JSON), ep:<entry point> (JSON)
    call:<id>             hash    d (call JSON), state (waiting|reserved), agent, ix (its index keys),
                                  ch (the channel to Redirect, when the enqueuer gave one)
    waiting               zset    every waiting call, by enqueued_at_ms
    reserved              hash    call id -> agent id, while an offer is out
    offers                zset    reserved calls whose dial has not begun, by when they were reserved
    w:<tier>:<key>        zset    waiting calls of a tier under an index key, by enqueued_at_ms
    h:<tier>:<key>        string  the first member of w:<tier>:<key>, "<enqueued_at_ms> <id>"
    esc                   zset    call id -> when its next escalation step adds index keys
    agent:<id>            hash    p (skills/languages/groups JSON), status, idle, reason, call (the call
                                  a reserved, on_call or wrap_up status is about, or the reconciler's
                                  mark: ``device:busy``, ``device:unavailable``, cti/router/reconcile.py)
    agents                set     every agent id
    wrap                  zset    agents in wrap-up, by when it ends
    changes               stream  every status written (a agent, s status, r reason, c call, w wrap-up end
                                  ms), the entry id Redis's clock when it was; about 10 000 kept
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

Several servers handle the same AMI events, so every step after a match is conditional and acts
once, whoever asks first: :meth:`RouterStore.settle` (the call leaves: answered, abandoned, gone),
:meth:`RouterStore.requeue` for a named agent (no answer), :meth:`RouterStore.transition` (an agent's
status only from the statuses expected, for the call expected), :meth:`RouterStore.end_wrap_ups` and
:meth:`RouterStore.expire_offers` (the sweep). Each reply says whether this caller made the change.

Every integer crosses into Lua as a double: :data:`MAX_MS` keeps times and their differences
exact. The config's own bounds do the rest (``routing/README.md``: units and bounds).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Set
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal, cast, get_args

import redis.asyncio as aioredis

from routing.config import RoutingConfig
from routing.model import AgentState, AgentStatus, Requirements, WaitingCall
from routing.trace import Decision, Passed, Reason, Trace

__all__ = ["MAX_MS", "AgentCall", "HeldCall", "RouterStore", "Settled", "StatusChange", "Transition"]

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


def _status_changes(reply: Any) -> list[tuple[str, StatusChange]]:
    """An XREAD / XREADGROUP reply on the changes stream as (entry id, change)."""
    out: list[tuple[str, StatusChange]] = []
    if isinstance(reply, dict):  # RESP3 answers a map of stream -> entries
        reply = list(reply.items())
    for _stream, entries in reply or ():
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            f = {_text(k): _text(v) for k, v in fields.items()}
            wrap = f.get("w", "")
            out.append((entry_id, StatusChange(f["a"], _status(f["s"]), int(entry_id.split("-", 1)[0]),
                                               f.get("r") or None, f.get("c") or None,
                                               int(float(wrap)) if wrap else None)))
    return out


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _agent_from(agent_id: str, row: list[Any]) -> AgentState:
    profile, status, idle, reason = row
    p = json.loads(profile)
    return AgentState(
        id=agent_id, skills=p["skills"], languages=frozenset(p["languages"]), groups=frozenset(p["groups"]),
        status=cast(AgentStatus, _text(status)), idle_since_ms=int(idle), not_ready_reason=_text(reason) or None,
    )


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


CallState = Literal["waiting", "offered", "ringing"]


@dataclass(frozen=True, slots=True)
class Settled:
    """What :meth:`RouterStore.settle` found. ``state`` None: the call was not there (another server
    settled it first, or it never was). ``offered``: reserved, its dial not begun; ``ringing``: begun.
    ``agent``: the agent it was still reserved for, now set; ``named``: they were the agent asked about
    (else they were set ready: the offer was void)."""

    state: CallState | None
    agent: str | None = None
    named: bool = False


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One status written to the store: ``at_ms`` is Redis's clock then; ``call`` what it is about."""

    agent: str
    status: AgentStatus
    at_ms: int
    reason: str | None = None
    call: str | None = None
    wrap_until_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """What :meth:`RouterStore.transition` did: ``changed`` by this call, and the status before
    (None for an agent the store does not have)."""

    changed: bool
    before: AgentStatus | None


@dataclass(frozen=True, slots=True)
class HeldCall:
    """A call the store holds (:meth:`RouterStore.held_calls`): waiting, or reserved for ``agent`` with its
    dial not begun (``offered``) or begun (``ringing``); ``channel`` is the one it was enqueued with."""

    call: WaitingCall
    state: CallState
    agent: str | None
    channel: str | None


@dataclass(frozen=True, slots=True)
class AgentCall:
    """An agent's status and the call it is about (:meth:`RouterStore.agent_calls`)."""

    status: AgentStatus
    call: str | None
    reason: str | None


def _agent_profile(agent: AgentState) -> str:
    bad = {s: lvl for s, lvl in agent.skills.items() if lvl not in _LEVELS}
    if bad:
        raise ValueError(f"agent {agent.id!r}: levels must be 1..5, not {bad}")
    if agent.status not in _STATUSES:
        raise ValueError(f"agent {agent.id!r}: unknown status {agent.status!r}")
    return json.dumps({"skills": dict(agent.skills), "languages": _members(agent.languages),
                       "groups": _members(agent.groups)}, separators=(",", ":"))


def _status(value: str) -> AgentStatus:
    if value not in _STATUSES:
        raise ValueError(f"unknown agent status {value!r}")
    return cast(AgentStatus, value)


class RouterStore:
    """The routing state of every server sharing ``redis``; the config in force lives there too.

    ``config`` is what :meth:`apply_config` puts in force; until some server has, the scripts
    refuse to run (``ResponseError: ROUTER no routing config``). A reservation ends with
    :meth:`settle` (answered, abandoned, gone: the call leaves and its agent is set in the same
    step), :meth:`requeue` (no answer) or :meth:`expire_offers` (no dial followed); the lower-level
    :meth:`remove_call` leaves the agent reserved for the caller to set.
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
        await self._agent(args=[self._ns, "put", agent.id, _agent_profile(agent), agent.status,
                                _ms(agent.idle_since_ms, "idle_since_ms"), agent.not_ready_reason or ""])

    async def init_agent(self, agent: AgentState, *, now_ms: int) -> bool:
        """A server starting: an agent the store lacks is stored with ``agent.status``, idle from
        ``now_ms`` (True); one it has (another server runs, or this one restarted) keeps status, idle time
        and call and only takes the profile (False)."""
        return bool(await self._agent(args=[self._ns, "init", agent.id, _agent_profile(agent), agent.status,
                                            _ms(now_ms, "now_ms"), agent.not_ready_reason or ""]))

    async def transition(self, agent_id: str, status: AgentStatus, *, expect: Collection[AgentStatus],
                         now_ms: int, expect_call: str | None = None, reason: str | None = None,
                         call: str | None = None, wrap_until_ms: int | None = None) -> Transition:
        """Set the agent's status only if it is one of ``expect`` (and, given ``expect_call``, is about
        that call): of several servers asking for the same step, one moves the agent. ``call`` is the call
        the new status is about; ``wrap_until_ms`` ends a wrap-up then (:meth:`end_wrap_ups`). Becoming
        ready starts the idle time at ``now_ms`` unless from ``reserved``, as :meth:`set_agent_status`."""
        _status(status)
        if not expect:
            raise ValueError("expect at least one status")
        for s in expect:
            _status(s)
        until = "" if wrap_until_ms is None else _ms(wrap_until_ms, "wrap_until_ms")
        moved, before = await self._agent(args=[self._ns, "cas", agent_id, ",".join(sorted(expect)),
                                                expect_call or "", status, _ms(now_ms, "now_ms"), reason or "",
                                                call or "", until])
        return Transition(bool(moved), _status(_text(before)) if _text(before) else None)

    async def extend_wrap_up(self, agent_id: str, seconds: int, *,
                             now_ms: int) -> tuple[int | None, AgentStatus | None]:
        """A wrap-up going on ends ``seconds`` later (from its end, or from now once that has passed):
        (the new end ms, the status); (None, the status) when the agent is not in wrap-up, (None, None)
        for an agent the store lacks."""
        until, status = await self._agent(args=[self._ns, "extend", agent_id, _ms(now_ms, "now_ms"),
                                                _ms(seconds * 1000, "seconds")])
        current = _status(_text(status)) if _text(status) else None
        return (int(until) if int(until) else None), current

    async def open_changes(self, group: str) -> None:
        """The consumer group the servers share, so each status change is pushed by one of them. Made
        from the stream's start the first time: the agents a starting router adds are written before
        this server's pusher gets here, and a group made at the end missed their first state (an agent
        showed no state until their first call). Once made, it resumes where the servers left off."""
        try:
            await self._redis.xgroup_create(f"{self._ns}changes", group, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def changes(self, group: str, consumer: str, *, count: int = 256,
                      block_ms: int = 1000) -> list[StatusChange]:
        """The next status changes for this server (none after ``block_ms``), each delivered to one
        consumer of ``group``; not acknowledged (NOACK): a server that dies with some in hand loses
        only their pushes, the statuses are in the store."""
        reply: Any = await self._redis.xreadgroup(group, consumer, {f"{self._ns}changes": ">"}, count=count,
                                                  block=block_ms, noack=True)
        return [change for _, change in _status_changes(reply)]

    async def changes_end(self) -> str:
        """The id of the newest status change ("0-0" for none): where :meth:`changes_after` starts
        reading what comes from now on."""
        newest: Any = await self._redis.xrevrange(f"{self._ns}changes", count=1)
        return _text(newest[0][0]) if newest else "0-0"

    async def changes_after(self, entry_id: str, *, count: int = 256,
                            block_ms: int = 1000) -> tuple[str, list[StatusChange]]:
        """Every status change after ``entry_id`` (none after ``block_ms``), for a reader of its own, outside
        the consumer group: each server's KPIs see every agent's wrap-ups. Returns the id to read after next."""
        reply: Any = await self._redis.xread({f"{self._ns}changes": entry_id}, count=count, block=block_ms)
        read = _status_changes(reply)
        return (read[-1][0] if read else entry_id), [change for _, change in read]

    async def end_wrap_ups(self, now_ms: int) -> list[str]:
        """Every wrap-up due by ``now_ms`` ends (the agent is ready, idle from now); returns who, so the
        server that ended it offers them a call. Each agent is returned to one caller only."""
        done = await self._agent(args=[self._ns, "wrapped", _ms(now_ms, "now_ms")])
        return [_text(a) for a in done]

    async def set_agent_status(self, agent_id: str, status: AgentStatus, *, now_ms: int,
                               reason: str | None = None) -> bool:
        """Becoming ready from anything but ``reserved`` starts their idle time at ``now_ms``; staying
        ready, or a withdrawn offer, keeps it. False for an agent the store does not have."""
        if status not in _STATUSES:
            raise ValueError(f"unknown agent status {status!r}")
        return bool(await self._agent(args=[self._ns, "status", agent_id, status, _ms(now_ms, "now_ms"),
                                            reason or ""]))

    async def enqueue(self, call: WaitingCall, *, channel: str | None = None) -> bool:
        """Queue a call; False (and nothing changes) if its id is already waiting or reserved. ``channel``
        (the one to Redirect) is kept with it for any server that offers it (:meth:`call_channel`)."""
        return bool(await self._call(args=[self._ns, "enqueue", call.id, _call_json(call), channel or ""]))

    async def call_channel(self, call_id: str) -> str | None:
        """The channel the call was enqueued with, while the store has the call."""
        raw = await self._redis.hget(f"{self._ns}call:{call_id}", "ch")
        return None if raw is None else _text(raw)

    async def held_call(self, call_id: str) -> tuple[WaitingCall, str | None] | None:
        """The call (waiting or reserved) and the channel it was enqueued with; None if not here."""
        raw, channel = await self._redis.hmget(f"{self._ns}call:{call_id}", ["d", "ch"])
        return None if raw is None else (_from_call_json(call_id, raw), None if channel is None else _text(channel))

    async def mark_dialed(self, call_id: str, agent_id: str) -> bool:
        """The offer to ``agent_id`` began to ring: no longer a stale reservation for
        :meth:`expire_offers`. True the first time, False after or if not reserved for them."""
        return bool(await self._call(args=[self._ns, "dialed", call_id, agent_id]))

    async def settle(self, call_id: str, *, agent_status: AgentStatus, now_ms: int, agent: str | None = None,
                     reason: str | None = None, keep_call: bool = False) -> Settled:
        """The call leaves the router: answered (``agent_status="on_call"``, ``keep_call``: the agent's
        status stays about this call), abandoned, gone or fallen back (``"ready"``). Its agent, if still
        reserved for it, takes ``agent_status`` when they are ``agent`` (or ``agent`` is None), else becomes
        ready (their offer is void). One of several servers asking finds the call; the rest get None."""
        _status(agent_status)
        state, held, named = await self._call(args=[self._ns, "settle", call_id, agent or "", agent_status,
                                                    reason or "", _ms(now_ms, "now_ms"), "1" if keep_call else ""])
        found = _text(state)
        return Settled(cast(CallState, found) if found else None, _text(held) or None, bool(named))

    async def expire_offers(self, older_than_ms: int) -> list[tuple[str, str | None]]:
        """Reservations made at or before ``older_than_ms`` whose dial never began go back to waiting, in
        their place, and their agents become ready (idle time kept): (call id, agent id) for each, to
        one caller only."""
        flat = [_text(x) for x in await self._call(args=[self._ns, "expire", _ms(older_than_ms, "older_than_ms")])]
        return [(flat[i], flat[i + 1] or None) for i in range(0, len(flat), 2)]

    async def ready_count(self) -> int:
        """How many agents are ready (all of them are in ``r:any``)."""
        return int(await self._redis.zcard(f"{self._ns}r:any"))

    async def remove_call(self, call_id: str) -> bool:
        """Answered or abandoned: the call leaves the store. A reserved agent stays reserved (with no
        call) until set ``on_call`` or ``ready``, so no match can take them in between."""
        return bool(await self._call(args=[self._ns, "remove", call_id]))

    async def requeue(self, call_id: str, *, agent_status: Literal["not_ready", "ready"] = "not_ready",
                      reason: str | None = None, agent: str | None = None) -> bool:
        """No answer (RONA): the reserved call waits again with its ``enqueued_at_ms``, so it keeps
        its step and score; its agent, if still reserved for it, becomes ``agent_status`` (not ready
        for ``reason``, by default the config's ``rona_not_ready_reason``). False if not reserved (for
        ``agent``, when given: a late report of an earlier offer leaves a newer one alone)."""
        return bool(await self._call(args=[self._ns, "requeue", call_id, agent_status, reason or "", agent or ""]))

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
        return [_agent_from(agent_id, row) for agent_id, row in zip(ids, rows, strict=True)]

    async def held_calls(self) -> list[HeldCall]:
        """Every call the store holds, waiting ones oldest first, then the reserved: what a resync checks
        against Asterisk's channels. Each call's state, agent and offer are read in one transaction, so a
        reservation made meanwhile is never taken for one whose dial began."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrange(f"{self._ns}waiting", 0, -1)
            pipe.hkeys(f"{self._ns}reserved")
            waiting_raw, reserved_raw = await pipe.execute()
        ids = [_text(i) for i in waiting_raw] + sorted(_text(i) for i in reserved_raw)
        async with self._redis.pipeline(transaction=True) as pipe:
            for call_id in ids:
                pipe.hmget(f"{self._ns}call:{call_id}", ["d", "ch", "state", "agent"])
                pipe.zscore(f"{self._ns}offers", call_id)
            replies = await pipe.execute()
        out = []
        for call_id, (raw, channel, state, agent), offer in zip(ids, replies[::2], replies[1::2], strict=True):
            if raw is None:
                continue
            waits = state is None or _text(state) == "waiting"
            out.append(HeldCall(_from_call_json(call_id, raw), "waiting" if waits else (
                "offered" if offer is not None else "ringing"), None if waits or agent is None else _text(agent),
                None if channel is None else _text(channel)))
        return out

    async def agent_calls(self, agent_ids: Collection[str] | None = None) -> dict[str, AgentCall]:
        """Status, the call it is about and the not-ready reason of the agents given (default: every
        agent the store has); agents it lacks are left out."""
        ids = sorted(agent_ids) if agent_ids is not None else sorted(
            _text(i) for i in await self._redis.smembers(f"{self._ns}agents"))
        async with self._redis.pipeline(transaction=True) as pipe:
            for agent_id in ids:
                pipe.hmget(f"{self._ns}agent:{agent_id}", ["status", "call", "reason"])
            rows = await pipe.execute()
        return {agent_id: AgentCall(_status(_text(status)), _text(call) if call else None,
                                    _text(reason) if reason else None)
                for agent_id, (status, call, reason) in zip(ids, rows, strict=True) if status is not None}

    async def agent(self, agent_id: str) -> AgentState | None:
        """One agent as stored, None if the store does not have them."""
        row = await self._redis.hmget(f"{self._ns}agent:{agent_id}", ["p", "status", "idle", "reason"])
        return None if row[0] is None else _agent_from(agent_id, row)
