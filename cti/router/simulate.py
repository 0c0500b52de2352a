"""``cti simulate``: the PBX simulator in CTI routing mode, K routing servers on one Redis, simulated time.

What it answers: does routing under the shipped ``routing.yaml`` keep its promises at a realistic load
(VIP tiers served first, no agent given two callers, no caller forgotten), with one server or several,
and with one of them killed mid-way? It runs the real parts, not a model of them:

* a private redis-server (:mod:`cti.devservices`, unless a URL is given) that every server shares;
* the simulator's AMI server (:class:`cti.sim.server.AmiServer`) in ``mode: cti``, playing
  ``config/asterisk/extensions_cti.conf``. There is no FastAGI: the simulator writes each caller's
  ``CTI_*`` variables itself, as our IVR would (``cti/sim/cti_mode.py``);
* K servers, each exactly what a CTI server process runs for routing: its own AMI connection
  (:class:`~cti.ami.client.AmiClient`), its own :class:`~cti.model.reducer.CallModel` fed every event first
  (so a ``CtiHold`` finds the call's ``CTI_*`` variables), then its own
  :class:`~cti.router.controller.RoutingController` with its own Redis connection. They share nothing in
  this process but the loop. A killed server (``kill_server_at``) dies in the middle of an offer, after its
  Setvars and before its Redirect: its tasks are cancelled where they stand, its AMI socket reset and its
  Redis connection dropped, which is what SIGKILL leaves behind, and the reservation it made is the
  survivors' to recover (their reservation timeout).

Agents ``agent001 …`` are generated with routing profiles that serve every entry point (one role per entry
point, staffed in proportion to its work, with second skills and both languages mixed in), and callers are
drawn from the seed: a ``vip_share`` of them in the tiers whose names say ``vip``, most of those on the VIP
entry points. The arrival rate puts the agents at ``load`` of their capacity: busy, not hopeless.

Time is simulated and accelerated: one clock (:class:`ScaledClock`), up to ``speed`` times faster than the
wall clock, drives the simulator (its timers, its timestamps) and every controller (``now_ms``, and its
timers through ``clock_rate``). Real latencies are stretched by the same factor, and a server that handles
its events a reservation timeout late takes its own live offers for a dead server's. So the clock stands
still while the whole process stalls, and slows down while a server handles its events late
(:func:`_govern`); ``router_late_s_max`` and ``overloaded`` in the summary say how close a run came.

The summary is ground truth: it is computed from the simulator's own records of every call
(:attr:`cti.sim.pbx.Pbx.records`), never from what the servers believe. Per tier and entry point: offered
(reached the hold), answered (by a routed Dial()), abandoned, service level (answered within the call's tier
``service_level.within_s``, over offered), waits of the answered calls. Invariants: ``double_assignments``
(a call answered by two agents, or an agent rung or talking for two callers at overlapping times) and
``lost_calls`` (neither answered, nor abandoned by the caller, nor handed to the fallback ``Queue()``: a call
that ended without a cause or was still in the PBX when the run stopped).

The servers log every routing step at info: a caller that wants quiet configures logging at warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis
import structlog

from cti.ami.client import AmiClient
from cti.ami.codec import Message
from cti.config import AgentConfig, AmiConfig, RoutingModeConfig, SimConfig
from cti.devservices import redis_server
from cti.model.reducer import CallModel
from cti.router.agent_state import AgentStateError
from cti.router.controller import RoutingController, RoutingCounters
from cti.router.store import RouterStore
from cti.sim.cti_mode import CtiPbx
from cti.sim.server import AmiServer
from routing.config import EntryPoint, RoutingConfig, load_routing_config, parse_routing_config

__all__ = ["DEFAULT_ROUTING", "ScaledClock", "SimulationError", "Workload", "double_assignments", "format_summary",
           "simulate", "summarize"]

log = structlog.get_logger(__name__)

DEFAULT_ROUTING: Final = Path(__file__).resolve().parents[2] / "config" / "routing.yaml"
#: The simulator's default IVR shares (SimConfig.entry_points) for the entry points a config shares with it.
_ENTRY_SHARES: Final = SimConfig().entry_points
_VIP_ON_VIP_ENTRY: Final = 0.6  # a VIP caller picks the VIP line (if the config has one) this often
_FIRST_LANGUAGE: Final = 0.7  # callers speaking the config's first language (zh in the shipped one)
_POLL_S: Final = 0.02  # wall seconds between the run's checks (done? kill? an agent to make ready? too fast?)
_SLOW_AT: Final = 0.1  # a server this late, as a share of the reservation timeout, slows the clock ...
_CALM_AT: Final = 0.05  # ... which speeds up again under this share
_COOLDOWN_S: Final = 0.15  # wall seconds between two slow-downs (the backlog takes a while to drain)
_KILL_WITHIN_S: Final = 60.0  # an armed kill waits this long (simulated) for the server's next offer
_SAME_S: Final = 0.002  # records round to the ms: a ring this close to the end of the last is after it
_END_OUTCOMES: Final = {
    "answered": "answered",
    "abandoned_hold": "abandoned", "abandoned_ringing": "abandoned", "ivr_hangup": "abandoned",
    "fallback": "fallback",
}


class SimulationError(RuntimeError):
    """A server or the simulator failed (a bug, not an outcome): the run has no summary."""


@dataclass(frozen=True, slots=True)
class Caller:
    """One drawn caller: when they ring (simulated seconds after the first), what they chose, how they behave."""

    at_s: float
    number: str
    entry: str
    tier: str
    language: str
    patience_s: float
    talk_s: float


@dataclass(frozen=True, slots=True)
class Workload:
    """The agents and callers a seed draws for a routing config (:meth:`draw`); pure, so tests can read it."""

    agents: tuple[AgentConfig, ...]
    routing: RoutingConfig  # the config with the generated agents' profiles
    callers: tuple[Caller, ...]
    vip_tiers: tuple[str, ...]  # highest priority first
    normal_tier: str
    calls_per_minute: float

    @classmethod
    def draw(cls, config: RoutingConfig, *, calls: int, agents: int, vip_share: float, seed: int,
             mean_talk_s: float, mean_patience_s: float, ring_s: float, load: float,
             calls_per_minute: float | None, local: bool) -> Workload:
        rng = random.Random(seed)
        tiers = sorted(config.tiers, key=lambda t: -config.tiers[t].priority)
        vip_tiers = tuple(t for t in tiers if "vip" in t.lower())
        normal = next((t for t in reversed(tiers) if t not in vip_tiers), tiers[-1])
        vip_entries = [e for e, ep in config.entry_points.items() if _is_vip_entry(e, ep)]
        plain = {e: _ENTRY_SHARES.get(e, 1.0 / len(config.entry_points)) for e in config.entry_points
                 if e not in vip_entries} or {e: 1.0 for e in config.entry_points}
        mix = _entry_mix(plain, vip_entries, vip_share if vip_tiers else 0.0)
        profiles = _profiles(config, mix, agents, rng, handle_s=ring_s + mean_talk_s)
        routing = parse_routing_config(config.model_dump(mode="json") | {"agents": profiles}, "(simulated agents)")
        agent_configs = tuple(
            AgentConfig(id=a, name=a, interface=f"Local/{7000 + i}@sim-agents/n" if local else f"PJSIP/{7000 + i}",
                        extension=str(7000 + i))
            for i, a in enumerate(profiles, start=1))
        # Capacity: an agent takes a call in ring + talk + wrap-up (the entry point's), on average over the mix.
        wrap = sum(share * config.wrapup_s_for(e) for e, share in mix.items())
        rate = calls_per_minute if calls_per_minute is not None else load * agents * 60 / (ring_s + mean_talk_s + wrap)
        languages = list(config.languages)
        lang_weights = [_FIRST_LANGUAGE] + [(1 - _FIRST_LANGUAGE) / (len(languages) - 1)] * (len(languages) - 1) \
            if len(languages) > 1 else [1.0]
        tier_weights = list(range(1, len(vip_tiers) + 1))  # fewer in the higher tiers: 1:2:3 for three
        t = 0.0
        out = []
        for _ in range(calls):
            t += rng.expovariate(rate / 60) if rate > 0 else 0.0
            vip = bool(vip_tiers) and rng.random() < vip_share
            tier = rng.choices(vip_tiers, weights=tier_weights)[0] if vip else normal
            if vip and vip_entries and rng.random() < _VIP_ON_VIP_ENTRY:
                entry = rng.choice(vip_entries)
            else:
                entry = rng.choices(list(plain), weights=list(plain.values()))[0]
            language = rng.choices(languages, weights=lang_weights)[0]
            patience, talk = rng.expovariate(1 / mean_patience_s), rng.expovariate(1 / mean_talk_s)
            if local:  # the Local-channel dialplan's Wait() takes whole seconds, as the engine draws them
                patience, talk = float(max(1, round(patience))), float(max(1, round(talk)))
            out.append(Caller(at_s=round(t, 3), number=f"139{rng.randrange(10**8):08d}", entry=entry, tier=tier,
                              language=language, patience_s=patience, talk_s=talk))
        return cls(agents=agent_configs, routing=routing, callers=tuple(out), vip_tiers=vip_tiers,
                   normal_tier=normal, calls_per_minute=round(rate, 3))


def _is_vip_entry(name: str, ep: EntryPoint) -> bool:
    return "vip" in name.lower() or "vip" in ep.tier.lower()


def _entry_mix(plain: Mapping[str, float], vip_entries: Sequence[str], vip_share: float) -> dict[str, float]:
    """Each entry point's share of all calls."""
    total = sum(plain.values())
    on_vip = vip_share * _VIP_ON_VIP_ENTRY if vip_entries else 0.0
    mix = {e: (1 - on_vip) * s / total for e, s in plain.items()}
    for e in vip_entries:
        mix[e] = mix.get(e, 0.0) + on_vip / len(vip_entries)
    return mix


def _profiles(config: RoutingConfig, mix: Mapping[str, float], agents: int, rng: random.Random, *,
              handle_s: float) -> dict[str, dict[str, Any]]:
    """``agent001 …``: one role per entry point (its required skills at or above their levels, its required
    group), staffed in proportion to its work (calls times ring, talk and its wrap-up; VIP lines twice: they
    promise a higher service level), each agent with a second role's skills at level 2 (what the escalation
    steps widen to) and a language mix (both, the first only, both, the last only, ...).

    Groups: agents of the VIP roles join the groups the other entry points overflow to (the supervisors who
    take their overflow), the others the groups the VIP entry points overflow to (the front line)."""
    eps = config.entry_points
    weights = {e: share * (handle_s + config.wrapup_s_for(e)) * (2 if _is_vip_entry(e, eps[e]) else 1)
               for e, share in mix.items() if share > 0}
    counts = _apportion(weights, agents)
    overflow_of_vip = {g for e, ep in eps.items() if _is_vip_entry(e, ep) for g in _overflow_groups(ep)}
    overflow_of_plain = {g for e, ep in eps.items() if not _is_vip_entry(e, ep) for g in _overflow_groups(ep)}
    roles = [e for e in counts for _ in range(counts[e])]
    # Interleave roles so agent ids do not cluster by role (it reads better, and longest-idle ties vary).
    roles = [r for _, r in sorted(enumerate(roles), key=lambda ir: (ir[0] - roles.index(ir[1])) / counts[ir[1]])]
    languages = list(config.languages)
    seen: Counter[str] = Counter()
    out: dict[str, dict[str, Any]] = {}
    width = max(3, len(str(agents)))
    role_list = list(counts)
    for i, role in enumerate(roles, start=1):
        ep = eps[role]
        k = seen[role]
        seen[role] += 1
        skills = {s: rng.randint(level, 5) for s, level in ep.requires.skills.items()}
        for s, level in ep.requires.any_of.items():
            skills.setdefault(s, level)
        if len(role_list) > 1:
            other = eps[role_list[(role_list.index(role) + 1 + k) % len(role_list)]]
            for s in other.requires.skills:
                skills.setdefault(s, 2)
        groups = set(ep.requires.groups[:1])
        groups |= overflow_of_plain if _is_vip_entry(role, ep) else overflow_of_vip
        speaks = (languages if k % 4 in (0, 2) else [languages[0]] if k % 4 == 1 else [languages[-1]])
        out[f"agent{i:0{width}d}"] = {"skills": skills, "languages": sorted(set(speaks)), "groups": sorted(groups)}
    return out


def _overflow_groups(ep: EntryPoint) -> set[str]:
    return set(ep.requires.overflow_groups).union(*(s.overflow_groups for s in ep.escalation))


def _apportion(weights: Mapping[str, float], n: int) -> dict[str, int]:
    """``n`` seats by weight (largest remainder), at least one each while there are seats."""
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: max(1, int(v)) if n >= len(weights) else int(v) for k, v in exact.items()}
    while sum(counts.values()) > n:
        k = max(counts, key=lambda k: counts[k] - exact[k])
        counts[k] -= 1
    while sum(counts.values()) < n:
        k = max(counts, key=lambda k: exact[k] - counts[k])
        counts[k] += 1
    return {k: v for k, v in counts.items() if v > 0}


# ----- time ------------------------------------------------------------------------------------------


class ScaledClock:
    """Simulated epoch seconds: starts at the wall clock's now and runs up to ``speed`` times faster.

    Every part reads this one clock, and it counts at most ``max_step_s`` of wall time between two reads:
    when the whole process stalls (another process has the CPU, a long collection), simulated time stands
    still with it rather than jumping ``speed`` times the stall ahead of every server at once. The run also
    slows it (:meth:`set_rate`) while a server falls behind the simulator (:func:`_govern`). The controllers
    were told ``speed``; at a lower rate their timers wake early, look, and wait again."""

    def __init__(self, speed: float, *, max_step_s: float = 0.05) -> None:
        self.speed = speed
        self.rate = speed
        self.start = time.time()
        self.frozen_s = 0.0  # wall seconds not counted (stalls)
        self._max_step = max_step_s
        self._sim = self.start
        self._real = time.perf_counter()

    def __call__(self) -> float:
        real = time.perf_counter()
        step = real - self._real
        if step > self._max_step:
            self.frozen_s += step - self._max_step
            step = self._max_step
        self._sim += step * self.rate
        self._real = real
        return self._sim

    def ms(self) -> int:
        return int(self() * 1000)

    def elapsed(self) -> float:
        return self() - self.start

    def set_rate(self, rate: float) -> None:
        """From now on, ``rate`` simulated seconds per wall second (at most ``speed``; no jump either way)."""
        self()
        self.rate = min(rate, self.speed)


# ----- the servers -----------------------------------------------------------------------------------


class _Controller(RoutingController):
    """The controller as it is, watched: how late (simulated seconds after the event's Timestamp) it
    handles each event. Its sweep allows for that lag (``cti/router/lag.py``); the governor keeps it small."""

    def __init__(self, *args: Any, clock: ScaledClock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock
        self._late_s = 0.0  # the latest since the last look (:meth:`take_late`)
        self.late_max_s = 0.0

    async def handle(self, msg: Message) -> None:
        stamp = msg.get("Timestamp")
        if stamp:
            late = max(0.0, self._clock() - float(stamp))
            self._late_s = max(self._late_s, late)
            self.late_max_s = max(self.late_max_s, late)
        await super().handle(msg)

    def take_late(self) -> float:
        """The most an event was late since the last call (0 when none was handled: nothing to catch up)."""
        late, self._late_s = self._late_s, 0.0
        return late


class _Actions:
    """A server's AMI actions (:class:`~cti.router.controller.Actions`). Armed (:meth:`_Server.arm_kill`),
    the server dies at its next offer, after the Setvars and before the Redirect: the reservation it made
    is left in Redis with no ring to follow, which only another server's reservation timeout recovers."""

    def __init__(self, ami: AmiClient) -> None:
        self.ami = ami
        self.die: Callable[[str], None] | None = None

    async def action(self, name: str, fields: Mapping[str, str]) -> Message:
        if self.die is not None and name == "Redirect":
            self.die(fields.get("Channel", ""))
            await asyncio.Event().wait()  # the kill cancels this task here
        return await self.ami.action(name, fields)


@dataclass(eq=False)
class _Server:
    """One routing server: what a ``cti serve`` process in CTI routing mode runs for routing."""

    name: str
    redis: aioredis.Redis
    model: CallModel
    controller: _Controller
    ami: AmiClient
    actions: _Actions
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    killed_at_s: float | None = None
    killed_after_calls: int | None = None
    killed_offering: str | None = None  # the channel whose offer it died in the middle of
    orphan: str | None = None  # that call's Linkedid: its reservation is left in Redis
    _dying: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.killed_at_s is None

    def failure(self) -> BaseException | None:
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return task.exception()
        return None

    def arm_kill(self, at_s: Callable[[], float], after_calls: int, linkedid_of: Callable[[str], str | None]) -> None:
        def die(channel: str) -> None:
            self.actions.die = None
            self.killed_offering, self.orphan = channel, linkedid_of(channel)
            self.kill_now(at_s(), after_calls)

        self.actions.die = die

    def kill_now(self, at_s: float, after_calls: int) -> None:
        """As SIGKILL leaves it (:meth:`_kill`), from a plain function: the server is dead from here on."""
        if self.alive:
            self.actions.die = None
            self.killed_at_s, self.killed_after_calls = round(at_s, 1), after_calls
            self._dying = asyncio.get_running_loop().create_task(self._kill(), name=f"{self.name}.kill")
            log.warning("simulate.server_killed", server=self.name, after_calls=after_calls,
                        mid_offer=self.killed_offering)

    async def _kill(self) -> None:
        """The controller stops where it stands (no offer given back, no requeue), the AMI socket is reset
        and the Redis connection dropped: the store keeps whatever this server left in it."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.ami.close()  # resets the socket if the task left it open; no reconnect either way
        await self.redis.aclose()

    async def stop(self) -> None:
        await (self._dying if self._dying is not None else self._kill())


async def _start_server(name: str, *, port: int, redis_url: str, key_prefix: str, workload: Workload,
                        mode: RoutingModeConfig, clock: ScaledClock) -> _Server:
    redis = aioredis.from_url(redis_url, socket_timeout=10)
    store = RouterStore(redis, workload.routing, key_prefix=key_prefix)
    model = CallModel(agents=workload.agents)
    controller: _Controller | None = None

    def on_event(msg: Message) -> None:
        model.apply(msg)  # first: a CtiHold must find the CTI_* variables set before it
        if controller is not None:
            controller.on_event(msg)

    async def on_connect(client: AmiClient) -> None:
        """As the server's pipeline does at each login: the model from CoreShowChannels and QueueStatus, then
        the router's check of its store against those channels and the phones' device states."""
        _, channels = await client.action_list("CoreShowChannels")
        _, queues = await client.action_list("QueueStatus")
        model.resync(channels, queues, clock())
        if controller is not None:
            await controller.on_connect(client, channels)

    ami = AmiClient(config=AmiConfig(port=port), on_event=on_event, on_connect=on_connect)
    actions = _Actions(ami)

    def call_vars(linkedid: str) -> Mapping[str, str] | None:
        call = model.calls.get(linkedid)
        return call.vars if call is not None else None

    controller = _Controller(store, actions, workload.agents, mode, call_vars=call_vars,
                             customer_of=lambda _linkedid: None, now_ms=clock.ms, clock_rate=clock.speed, clock=clock)
    server = _Server(name, redis, model, controller, ami, actions)
    server.tasks.append(asyncio.create_task(ami.run(), name=f"{name}.ami"))
    try:
        async with asyncio.timeout(10):
            await ami.wait_connected()
    except BaseException:
        await server.stop()
        raise
    server.tasks.append(asyncio.create_task(controller.run(), name=f"{name}.router"))
    return server


# ----- the run ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _redis(url: str | None) -> AsyncIterator[str]:
    if url is not None:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="cti-simulate-") as workdir, redis_server(Path(workdir)) as own:
        yield own


async def simulate(*, calls: int = 2000, agents: int = 40, vip_share: float = 0.1, seed: int = 1, servers: int = 1,
                   routing_config_path: Path | str = DEFAULT_ROUTING, speed: float = 60.0,
                   mean_talk_s: float = 30.0, mean_patience_s: float = 120.0, load: float = 0.9,
                   calls_per_minute: float | None = None, no_answer_prob: float = 0.03, ring_s: float = 3.0,
                   back_after_rona_s: float = 30.0, hold_max_s: int = 300, channel_style: str = "local",
                   reservation_timeout_s: float = 30.0, sweep_s: float = 2.0, kill_server_at: int | None = None,
                   max_wall_s: float = 600.0, redis_url: str | None = None) -> dict[str, Any]:
    """Run ``calls`` callers through ``servers`` routing servers and return the summary (module docstring).

    ``speed``: simulated seconds per wall second. ``load``: the offered load as a share of the agents'
    capacity (ring + talk + wrap-up), which sets the arrival rate unless ``calls_per_minute`` does.
    ``no_answer_prob``: a ring the agent lets time out (RONA: not ready, the call requeued in its place);
    such an agent makes themselves ready again ``back_after_rona_s`` later (through a live server, as their
    desktop would). ``hold_max_s``: the dialplan's hold limit before the fallback ``Queue()``.
    ``channel_style``: ``local`` (the captures' Local channels, ~100 events a call) or ``pjsip`` (compact).
    ``reservation_timeout_s``: ``routing.reservation_timeout_s``, how long another server waits before it takes
    a reservation no ring followed for a dead server's. 30 s, not the 10 s default: at 60× a live server's
    offer (four AMI actions and a few Redis calls, one after the other in a loop it shares with the
    simulator and the other servers) spans one or two simulated seconds, and a burst of them several.
    ``sweep_s``: ``routing.sweep_s``; 2 s, not 1 s: every sweep (stale offers, escalations, every agent against
    their phone) runs ``speed`` times a wall second per server, the largest cost of an accelerated run, and
    a step that widens a waiting call's requirements then takes effect up to 2 s after it fires, not 1 s.
    ``kill_server_at``: after this many callers have rung, the first server dies at its next offer, between
    its Setvars and its Redirect (or where it stands, if it makes none within a simulated minute): the
    reservation it leaves is another server's to recover (needs ``servers`` ≥ 2).
    ``max_wall_s``: the run stops here whatever is left (counted lost). ``redis_url``: a Redis to share
    (keys under a fresh prefix, removed after), else a private redis-server for the run.
    """
    if calls < 0 or agents < 1 or servers < 1 or not 0 <= vip_share <= 1 or speed <= 0:
        raise ValueError("needs calls >= 0, agents >= 1, servers >= 1, 0 <= vip_share <= 1, speed > 0")
    if kill_server_at is not None and servers < 2:
        raise ValueError("kill_server_at needs at least two servers (one must carry on)")
    if channel_style not in ("local", "pjsip"):
        raise ValueError("channel_style is local or pjsip")
    wall0 = time.perf_counter()
    workload = Workload.draw(load_routing_config(routing_config_path), calls=calls, agents=agents,
                             vip_share=vip_share, seed=seed, mean_talk_s=mean_talk_s, mean_patience_s=mean_patience_s,
                             ring_s=ring_s, load=load, calls_per_minute=calls_per_minute,
                             local=channel_style == "local")
    sim_config = SimConfig.model_validate({
        "mode": "cti", "channel_style": channel_style, "seed": seed, "calls_per_minute": 0, "ring_s": ring_s,
        "no_answer_prob": no_answer_prob, "tick_s": 0.01, "hold_max_s": hold_max_s,
        "mean_talk_s": mean_talk_s, "mean_patience_s": mean_patience_s,
        "vip_tiers": list(workload.vip_tiers) or ["vip"],
        "entry_points": {e: 1.0 for e in workload.routing.entry_points},
        "languages": {lang: 1.0 for lang in workload.routing.languages},
    })
    mode = RoutingModeConfig(mode="cti", reservation_timeout_s=reservation_timeout_s, sweep_s=sweep_s)
    clock = ScaledClock(speed)
    prefix = f"sim:{seed}:{time.time_ns()}:"
    fleet: list[_Server] = []
    async with _redis(redis_url) as url, AmiServer(config=sim_config, agents=workload.agents, port=0,
                                                   host="127.0.0.1", random_arrivals=False, clock=clock,
                                                   batch_writes=True) as ami:
        pbx = ami.sim.pbx
        assert isinstance(pbx, CtiPbx)
        try:
            for i in range(servers):
                fleet.append(await _start_server(f"s{i + 1}", port=ami.port, redis_url=url, key_prefix=prefix,
                                                 workload=workload, mode=mode, clock=clock))
            sim_start, run_wall0 = clock.elapsed(), time.perf_counter()
            run = await _run(ami, pbx, fleet, workload, clock, kill_server_at=kill_server_at,
                             back_after_rona_s=back_after_rona_s, deadline=wall0 + max_wall_s,
                             limit_s=reservation_timeout_s)
            sim_s = clock.elapsed() - sim_start
            await _settle(fleet)
            summary_records = list(pbx.records)
            live = [f"{c.linkedid}: {c.state.name.lower()} when the run stopped" for c in pbx.calls.values()]
            summary = summarize(summary_records, workload, still_live=live, placed=run.placed)
        finally:
            for server in fleet:
                await server.stop()
            if redis_url is not None:
                await _remove_keys(url, prefix)
    summary.update({
        "servers": [{"name": s.name, "killed_at_s": s.killed_at_s, "killed_after_calls": s.killed_after_calls,
                     "killed_offering": s.killed_offering, "orphan": s.orphan,
                     "orphan_outcome": _outcome_of(summary_records, s.orphan),
                     **dataclasses.asdict(s.controller.counters)}
                    for s in fleet],
        "routing_counters": _sum_counters(s.controller.counters for s in fleet),
        "settings": {"calls": calls, "agents": agents, "vip_share": vip_share, "seed": seed, "servers": servers,
                     "speed": speed, "calls_per_minute": workload.calls_per_minute, "mean_talk_s": mean_talk_s,
                     "mean_patience_s": mean_patience_s, "load": load if calls_per_minute is None else None,
                     "no_answer_prob": no_answer_prob, "hold_max_s": hold_max_s,
                     "reservation_timeout_s": reservation_timeout_s, "sweep_s": sweep_s, "channel_style": channel_style,
                     "routing": str(routing_config_path)},
        "agents_back_after_rona": run.agents_back,
        "loop_lag_ms": {"max": round(run.lag_max_s * 1000, 1),
                        "mean": round(run.lag_sum_s * 1000 / max(1, run.wakes), 2)},
        "router_backlog_max": run.backlog_max,
        "router_late_s_max": round(max(s.controller.late_max_s for s in fleet), 2),
        # a server this late recovers a dead server's offers that much later: the run is not evidence
        "overloaded": max(s.controller.late_max_s for s in fleet) > reservation_timeout_s / 2,
        "clock": {"speed": speed, "slowed": run.slowed, "slowest": round(min(run.rate_min, speed), 2),
                  "stalled_wall_s": round(clock.frozen_s, 2),
                  "effective": round(sim_s / max(1e-9, time.perf_counter() - run_wall0), 1)},
        "simulated_s": round(sim_s, 1),
        "wall_s": round(time.perf_counter() - wall0, 2),
    })
    return summary


@dataclass(slots=True)
class _Progress:
    placed: int = 0
    agents_back: int = 0  # RONA'd agents made ready again
    lag_max_s: float = 0.0  # the loop's worst lateness waking this task (wall): how far speed may go
    lag_sum_s: float = 0.0
    wakes: int = 0
    backlog_max: int = 0  # the most AMI events a controller had received and not yet handled
    slowed: int = 0  # times the clock was slowed for a lagging server (:func:`_govern`)
    rate_min: float = math.inf
    slow_again_at: float = 0.0


async def _run(ami: AmiServer, pbx: CtiPbx, fleet: list[_Server], workload: Workload, clock: ScaledClock, *,
               kill_server_at: int | None, back_after_rona_s: float, deadline: float, limit_s: float) -> _Progress:
    """Place the callers on time, kill a server when due, bring RONA'd agents back; until every call is over."""
    sim = ami.sim
    first = clock()
    pending = list(workload.callers)
    progress = _Progress()
    not_ready_since: dict[str, float] = {}
    next_agents_check = 0.0
    kill_by: float | None = None  # armed, the first server dies at its next offer, or by then
    while time.perf_counter() < deadline:
        for server in fleet:
            failed = server.failure()
            if failed is not None:
                raise SimulationError(f"server {server.name} failed: {failed!r}") from failed
            if server.alive:
                progress.backlog_max = max(progress.backlog_max, server.controller.pending)
        now = clock()
        due = 0
        while due < len(pending) and first + pending[due].at_s <= now:
            due += 1
        if due:
            sim.tick()  # the timers due before these callers ring go first
            for caller in pending[:due]:
                pbx.place_call(caller.number, now=clock(), entry=caller.entry, tier=caller.tier,
                               language=caller.language, patience=caller.patience_s, talk=caller.talk_s)
                progress.placed += 1
                if progress.placed == kill_server_at:
                    fleet[0].arm_kill(lambda: clock() - first, progress.placed, partial(_linkedid, pbx))
                    kill_by = clock() + _KILL_WITHIN_S
            sim.tick()
            del pending[:due]
        if kill_by is not None and now >= kill_by:
            fleet[0].kill_now(now - first, progress.placed)  # no offer of its own came: killed where it stood
            kill_by = None
        if now >= next_agents_check:
            next_agents_check = now + 2.0
            progress.agents_back += await _agents_back(fleet, not_ready_since, now, back_after_rona_s)
        if not pending and not pbx.calls:
            return progress
        wake = first + pending[0].at_s if pending else now + _POLL_S * clock.rate
        delay = max(0.0, min(_POLL_S, (wake - clock()) / clock.rate))
        slept = time.perf_counter()
        await asyncio.sleep(delay)
        late = time.perf_counter() - slept - delay
        progress.lag_max_s = max(progress.lag_max_s, late)
        progress.lag_sum_s += late
        progress.wakes += 1
        _govern(clock, fleet, late, progress, limit_s)
    log.warning("simulate.wall_clock_cap", placed=progress.placed, live_calls=len(pbx.calls))
    return progress


def _govern(clock: ScaledClock, fleet: Sequence[_Server], late_s: float, progress: _Progress,
            limit_s: float) -> None:
    """Keep the servers' lateness (simulated seconds from an event's Timestamp to its handling, or the
    loop's own lateness times the rate) well inside ``limit_s``, the reservation timeout: past
    ``_SLOW_AT`` of it the clock's rate drops by 30 % (then waits ``_COOLDOWN_S`` for that to show); under
    ``_CALM_AT`` it climbs back by 3 % a look, up to ``speed``."""
    behind = max([s.controller.take_late() for s in fleet if s.alive] + [late_s * clock.rate])
    now = time.perf_counter()
    if behind > _SLOW_AT * limit_s:
        if now >= progress.slow_again_at and clock.rate > clock.speed / 32:
            clock.set_rate(clock.rate * 0.7)
            progress.slowed += 1
            progress.slow_again_at = now + _COOLDOWN_S
    elif behind < _CALM_AT * limit_s and clock.rate < clock.speed:
        clock.set_rate(clock.rate * 1.03)
    progress.rate_min = min(progress.rate_min, clock.rate)


def _linkedid(pbx: CtiPbx, channel: str) -> str | None:
    chan = pbx.channels.get(channel)
    return chan.linkedid if chan is not None else None


def _outcome_of(records: Sequence[Mapping[str, Any]], linkedid: str | None) -> str | None:
    """How a call ended, as the summary counts it (answered, abandoned, fallback, lost); None: not ended."""
    record = next((r for r in records if r["linkedid"] == linkedid), None) if linkedid else None
    return _category(record["cti"]) if record is not None and "cti" in record else None


async def _agents_back(fleet: Sequence[_Server], since: dict[str, float], now: float, after_s: float) -> int:
    """An agent set not ready by a RONA presses Ready ``after_s`` later, through a live server (not one about
    to be killed: the kill would leave this request, and the run with it, waiting in its offer)."""
    live = next((s for s in fleet if s.alive and s.actions.die is None), None)
    if live is None:
        return 0
    back = 0
    reason = live.controller.config.reservation.rona_not_ready_reason
    for agent in await live.controller.store.agents():
        if agent.status != "not_ready" or agent.not_ready_reason != reason:
            since.pop(agent.id, None)
            continue
        first_seen = since.setdefault(agent.id, now)
        if now - first_seen >= after_s:
            since.pop(agent.id, None)
            with contextlib.suppress(AgentStateError):
                await live.controller.set_ready(agent.id)
                back += 1
    return back


async def _settle(fleet: Sequence[_Server], polls: int = 200) -> None:
    """Let the live servers handle the last events (up to ``polls`` times 10 ms), so their counters are complete."""
    for _ in range(polls):
        if not any(s.alive and s.controller.pending for s in fleet):
            return
        await asyncio.sleep(0.01)


async def _remove_keys(url: str, prefix: str) -> None:
    client = aioredis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys), 1000):
            await client.unlink(*keys[i:i + 1000])
    finally:
        await client.aclose()


def _sum_counters(counters: Iterable[RoutingCounters]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for c in counters:
        total.update(dataclasses.asdict(c))
    return {k: total[k] for k in dataclasses.asdict(RoutingCounters())}


# ----- the summary, from the simulator's records -----------------------------------------------------


@dataclass(slots=True)
class _Tally:
    """One row of the summary: a tier or an entry point."""

    offered: int = 0
    answered: int = 0
    abandoned: int = 0
    fallback: int = 0
    lost: int = 0
    within: int = 0  # answered within the call's tier target
    waits: list[float] = field(default_factory=list)  # of the answered calls

    def add(self, category: str, wait: float | None, within_s: int | None) -> None:
        self.offered += 1
        if category == "answered":
            self.answered += 1
            if wait is not None:
                self.waits.append(wait)
                if within_s is not None and wait <= within_s:
                    self.within += 1
        elif category == "abandoned":
            self.abandoned += 1
        elif category == "fallback":
            self.fallback += 1
        else:
            self.lost += 1

    def row(self, target: Mapping[str, int] | None = None) -> dict[str, Any]:
        waits = sorted(self.waits)
        out: dict[str, Any] = {
            "offered": self.offered, "answered": self.answered, "abandoned": self.abandoned,
            "fallback": self.fallback, "lost": self.lost,
            "service_level": round(self.within / self.offered, 4) if self.offered else None,
            "mean_wait_s": round(sum(waits) / len(waits), 2) if waits else None,
            "p90_wait_s": round(waits[math.ceil(0.9 * len(waits)) - 1], 2) if waits else None,
            "max_wait_s": round(waits[-1], 2) if waits else None,
        }
        if target is not None:
            out["target"] = dict(target)
        return out


def _category(cti: Mapping[str, Any]) -> str:
    """answered, abandoned, fallback, or lost (ended without a cause routing accounts for)."""
    return _END_OUTCOMES.get(cti.get("outcome") or "", "lost")


def _intervals(record: Mapping[str, Any]) -> Iterable[tuple[str, float, float, str]]:
    """(agent, from, to, what) for each routed Dial() of the call: ringing, or ringing then talking."""
    cti = record["cti"]
    dial_segments = {s["joined_at"]: s for s in record["segments"] if s["queue"] is None}
    for ring in cti["rings"]:
        agent = ring["agent"]
        if agent is None:
            continue
        start = float(ring["at"])
        end = start + float(ring["ring_s"] or 0.0)
        if ring["outcome"] == "answer":
            seg = dial_segments.get(ring["at"])
            if seg is not None and seg["left_at"] is not None:
                end = max(end, float(seg["left_at"]) + float(seg["talk_s"] or 0.0))
        yield agent, start, end, f"{record['linkedid']}:{ring['outcome']}"


def double_assignments(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Calls answered by two agents, and an agent's routed rings or talks that overlap in time (a second
    caller offered to an agent already ringing or talking for one: the store's promise broken)."""
    twice = 0
    by_agent: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for r in records:
        cti = r.get("cti")
        if cti is None:
            continue
        if sum(1 for ring in cti["rings"] if ring["outcome"] == "answer") > 1:
            twice += 1
        for agent, start, end, what in _intervals(r):
            by_agent[agent].append((start, end, what))
    overlaps = 0
    examples: list[str] = []
    for agent, spans in by_agent.items():
        spans.sort()
        busy_until, busy_with = -math.inf, ""
        for start, end, what in spans:
            if start < busy_until - _SAME_S:
                overlaps += 1
                if len(examples) < 5:
                    examples.append(f"{agent}: {what} at {start:.3f} while {busy_with} (until {busy_until:.3f})")
            if end > busy_until:
                busy_until, busy_with = end, what
    return {"calls_answered_twice": twice, "agent_overlaps": overlaps, "examples": examples}


def summarize(records: Sequence[Mapping[str, Any]], workload: Workload, *, still_live: Sequence[str] = (),
              placed: int | None = None) -> dict[str, Any]:
    """The summary of the ended calls' records; ``still_live`` describes the calls the PBX still had when
    the run stopped (lost: the run gave up on them)."""
    config = workload.routing
    tiers: dict[str, _Tally] = {t: _Tally() for t in config.tiers}
    entries: dict[str, _Tally] = {e: _Tally() for e in config.entry_points}
    outcomes: Counter[str] = Counter()
    ring_outcomes: Counter[str] = Counter()
    lost_examples: list[str] = list(still_live[:5])
    for r in records:
        cti = r.get("cti")
        if cti is None:
            continue
        category = _category(cti)
        outcomes[category] += 1
        if category == "lost" and len(lost_examples) < 5:
            lost_examples.append(f"{r['linkedid']}: outcome {cti.get('outcome')!r}")
        ring_outcomes.update(ring["outcome"] for ring in cti["rings"])
        if cti["enqueued_at"] is None:
            continue  # never held (hung up in the IVR): not offered to routing
        tier = config.tiers.get(cti["tier"])
        within_s = tier.service_level.within_s if tier is not None else None
        wait = cti["hold_s"]
        tiers.setdefault(cti["tier"], _Tally()).add(category, wait, within_s)
        entries.setdefault(cti["entry"], _Tally()).add(category, wait, within_s)
    doubles = double_assignments(records)
    vip = _Tally()
    for name in workload.vip_tiers:
        t = tiers[name]
        vip.offered += t.offered
        vip.within += t.within
    normal = tiers.get(workload.normal_tier, _Tally())
    return {
        "tiers": {name: t.row(config.tiers[name].service_level.model_dump() if name in config.tiers else None)
                  for name, t in tiers.items()},
        "entry_points": {name: t.row() for name, t in entries.items()},
        "double_assignments": doubles["calls_answered_twice"] + doubles["agent_overlaps"],
        "lost_calls": outcomes["lost"] + len(still_live),
        "rona": ring_outcomes["noanswer"],
        "calls": placed if placed is not None else len(records) + len(still_live),
        "answered": outcomes["answered"],
        "abandoned": outcomes["abandoned"],
        "fallback": outcomes["fallback"],
        "still_in_pbx": len(still_live),
        "vip_service_level": round(vip.within / vip.offered, 4) if vip.offered else None,
        "normal_service_level": round(normal.within / normal.offered, 4) if normal.offered else None,
        "vip_tiers": list(workload.vip_tiers),
        "rings": dict(sorted(ring_outcomes.items())),  # answer, noanswer, busy (offered to a phone in a call), cancel
        "double_assignment_detail": doubles,
        "lost_examples": lost_examples,
    }


_SERVER_FACTS: Final = frozenset({"name", "killed_at_s", "killed_after_calls", "killed_offering", "orphan",
                                   "orphan_outcome"})


def _cell(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    if pct:
        return f"{100 * value:.1f}%"
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as a table for people: tiers and entry points, then the invariants and counters."""
    head = f"{'':16} {'offered':>8} {'answered':>8} {'abandon':>8} {'fallback':>8} {'SL':>7} {'target':>9} " \
           f"{'mean s':>7} {'p90 s':>7} {'max s':>7}"
    lines = []
    for title, rows in (("tier", summary["tiers"]), ("entry point", summary["entry_points"])):
        lines += ["", head.replace(" " * 16, f"{title:16}", 1)]
        for name, row in rows.items():
            target = row.get("target")
            goal = f"{target['percent']}%/{target['within_s']}s" if target else ""
            lines.append(f"{name:16} {row['offered']:>8} {row['answered']:>8} {row['abandoned']:>8} "
                         f"{row['fallback']:>8} {_cell(row['service_level'], pct=True):>7} {goal:>9} "
                         f"{_cell(row['mean_wait_s']):>7} {_cell(row['p90_wait_s']):>7} {_cell(row['max_wait_s']):>7}")
    settings = summary.get("settings", {})
    lines += [
        "",
        f"calls {summary['calls']}: answered {summary['answered']}, abandoned {summary['abandoned']}, "
        f"fallback {summary['fallback']}; VIP service level {_cell(summary['vip_service_level'], pct=True)}, "
        f"normal {_cell(summary['normal_service_level'], pct=True)}",
        f"double assignments {summary['double_assignments']}, lost calls {summary['lost_calls']}, "
        f"RONA {summary['rona']}, rings {summary['rings']}",
    ]
    for server in summary.get("servers", []):
        killed = ""
        if server.get("killed_after_calls"):
            mid = f", mid-offer of {server['orphan']}: {server['orphan_outcome']}" if server.get("orphan") else ""
            killed = f" (killed after {server['killed_after_calls']} calls, at {server['killed_at_s']} s{mid})"
        counts = ", ".join(f"{k} {v}" for k, v in server.items() if k not in _SERVER_FACTS and v)
        lines.append(f"server {server['name']}{killed}: {counts}")
    if "wall_s" in summary:
        lines.append(f"{settings.get('agents', '?')} agents, {settings.get('servers', '?')} server(s), "
                     f"{settings.get('calls_per_minute', '?')} calls/min; simulated {summary['simulated_s']} s "
                     f"in {summary['wall_s']} s wall (x{settings.get('speed', '?')})")
    for example in [*summary["double_assignment_detail"]["examples"], *summary["lost_examples"]]:
        lines.append(f"  ! {example}")
    return "\n".join(lines).lstrip("\n")
