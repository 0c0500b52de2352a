"""The simulated PBX: app_queue-like queues in front of agents, callers running a small IVR.

:class:`Pbx` is pure: it is given the time (``now``) and a seeded
``random.Random``, and returns the AMI event messages its state changes
produce, so the same seed and the same tick times give the same events and
tests can drive it without sockets or sleeping. Work is kept on a timer heap
and run in time order, so random draws happen in the same order whatever the
tick rate. :class:`Simulator` is the thin asyncio driver that ticks it in real
time and hands the events to a listener (the AMI server).

Two channel styles (``SimConfig.channel_style``):

* ``local`` reproduces the recorded Asterisk 22 captures (``tests/fixtures/ami-traces``,
  dialplan in its ``asterisk/`` folder) event for event: the caller is a Local
  channel pair ``Local/s@ivr-entry-XXXXXXXX;1`` (the phone, running ``sim-caller``)
  and ``;2`` (the PBX side: Answer, Read a digit, Queue()), agents are queue
  members ``Local/<ext>@sim-agents/n`` with their own ``;1``/``;2`` pair per ring
  attempt (``;2`` runs the agent's extension: Ringing, Wait, Answer, Wait, Hangup).
  Field names, field order, event order and volume (about 95 events carrying the
  call's Linkedid for an answered call) are the captures'.
* ``pjsip`` keeps the compact style: one ``PJSIP/trunk-…`` channel per caller, one
  ``PJSIP/<ext>-…`` channel per ring, no dialplan variables (about 20 events a call).

Both styles share one engine: several queues (leastrecent / linear, autofill,
ringinuse=no, wrap-up, retry), members in several queues with per-queue pause,
queue timeouts with overflow to a second queue, ring-no-answer, abandons, blind
transfers to a queue or straight to an agent's extension, and the engine's own
record of every call it ended (:attr:`Pbx.records`), in the shape ``cti replay``
prints.

That is observe mode. ``SimConfig.mode = "cti"`` makes :class:`Simulator` run
:class:`cti.sim.cti_mode.CtiPbx` instead: the same engine behind the CTI routing dialplan
(``config/asterisk/extensions_cti.conf``: an IVR over FastAGI, a hold a CTI server ends with
Setvar and Redirect, Dial() of the agent it picked, app_queue only as the fallback).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import structlog

from cti.ami.codec import Message
from cti.config import AgentConfig, SimConfig
from cti.sim.channels import Channel, hangup_cause_text

__all__ = ["Call", "CallState", "Caller", "Member", "Pbx", "Phone", "Queue", "Ring", "Segment", "Simulator"]

log = structlog.get_logger(__name__)

VIP_PRIORITY = 10
CALLER_CONTEXT = "sim-caller"  # the caller's phone (the ;1 half) after the Originate answers
INBOUND_CONTEXT = "from-trunk"  # pjsip style callers
AGENT_CONTEXT = "from-internal"  # pjsip style agents' extensions
DEFAULT_AGENT_CONTEXT = "sim-agents"

# Device states as QueueMemberStatus reports them (include/asterisk/devicestate.h).
DEVICE_NOT_INUSE = 1
DEVICE_INUSE = 2
DEVICE_RINGING = 6
_DEVICE_STATE = {DEVICE_NOT_INUSE: "NOT_INUSE", DEVICE_INUSE: "INUSE", DEVICE_RINGING: "RINGING"}

# The recorded dialplan's timing (extensions.conf [sim-caller] and [ivr-entry]), seconds after the
# Originate: Answer() lets the dialplan go on half a second later (Set, Read), the phone waits PRE=1 s,
# sends its digit (DTMF begins 0.1 s and ends 0.2 s into SendDTMF), then waits STAY seconds.
ANSWER_DELAY_S = 0.5
_T_READ, _T_SEND, _T_DTMF_BEGIN, _T_DTMF_END, _T_PHONE_WAIT = 0.5, 1.0, 1.1, 1.2, 1.4
_NO_ANSWER_WAIT = "30"  # sim-agents 1009: Ringing, Wait(30), Hangup: the agent who never answers

# [ivr-entry] priorities: Queue(support,,,,60) at 10; n(overflow): Queue(support,,,,6) at 18, Queue(sales) at 19.
_PRIO_QUEUE, _PRIO_OVERFLOW = 10, 18
_DIGIT_QUEUE, _DIGIT_OVERFLOW = "1", "6"
_QUEUE_VARS = ("ANSWEREDTIME", "ANSWEREDTIME_MS", "DIALEDTIME", "DIALEDTIME_MS", "QUEUEWAIT", "QUEUEWAIT_MS")

_BRIDGE_FIELDS = {
    "BridgeType": "basic",
    "BridgeTechnology": "simple_bridge",
    "BridgeCreator": "<unknown>",
    "BridgeName": "<unknown>",
}
_CID_PRES = {"CID-CallingPres": "0 (Presentation Allowed, Not Screened)"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """Someone who may ring in: the demo passes its customer directory, some of them VIPs."""

    number: str
    name: str = "<unknown>"
    vip: bool = False


class CallState(Enum):
    IVR = "ivr"  # in the entry dialplan, before Queue()
    QUEUED = "queued"  # waiting in a queue (possibly ringing an agent)
    TALKING = "talking"  # bridged to a queue member
    DIRECT = "direct"  # blind-transferred to an agent's extension: ringing or talking there
    PARKED = "parked"  # redirected out of the queue by a client
    HOLD = "hold"  # CTI mode: in cti-hold, music on hold until a client Redirects it to cti-connect
    DIALING = "dialing"  # CTI mode: cti-connect's Dial() rings an agent's phone
    CONNECTED = "connected"  # CTI mode: bridged to the agent by Dial()
    ENDED = "ended"


@dataclass(slots=True, kw_only=True, eq=False)  # identity: phones, members, queues and calls are entities
class Phone:
    """An agent's phone (the member's state interface), shared by every queue the agent is a member of."""

    agent: AgentConfig
    interface: str  # the member interface app_queue dials: Local/1001@sim-agents/n or PJSIP/1001
    state_interface: str  # Local/1001@sim-agents or PJSIP/1001: also the prefix of its channels
    exten: str
    context: str  # the dialplan context of the agent's extension
    local: bool
    login_time: int
    memberships: list[Member] = field(default_factory=list)
    call: Call | None = None  # the call ringing or talking to this phone through a queue
    direct: Call | None = None  # a call blind-transferred straight to this extension
    status: int = DEVICE_NOT_INUSE
    in_call: bool = False
    wrapup_until: float = 0.0
    last_call: int = 0  # shared_lastcall = yes: one last call for every queue
    last_call_exact: float = 0.0  # leastrecent ordering needs sub-second precision

    @property
    def name(self) -> str:
        return self.agent.name

    @property
    def busy(self) -> bool:
        return self.call is not None or self.direct is not None


@dataclass(slots=True, kw_only=True, eq=False)
class Member:
    """One queue membership of a phone: pause, penalty and calls taken are per queue."""

    queue: Queue
    phone: Phone
    penalty: int = 0
    paused: bool = False
    paused_reason: str = ""
    last_pause: int = 0
    calls_taken: int = 0

    @property
    def agent(self) -> AgentConfig:
        return self.phone.agent

    @property
    def interface(self) -> str:
        return self.phone.interface

    @property
    def call(self) -> Call | None:
        return self.phone.call


@dataclass(slots=True, kw_only=True, eq=False)
class Queue:
    name: str
    strategy: str  # leastrecent or linear
    members: list[Member] = field(default_factory=list)
    waiting: list[Call] = field(default_factory=list)  # priority desc, then arrival
    completed: int = 0
    abandoned: int = 0  # app_queue counts timeouts here too (record_abandoned)
    hold_total: float = 0.0
    talk_total: float = 0.0


@dataclass(slots=True, kw_only=True, eq=False)
class Ring:
    """One attempt to reach a member: app_queue's outgoing channel and, for Local members, its ;2."""

    member: Member
    out: Channel  # ;1 (or the PJSIP channel): DestChannel of the Agent* events, bridged on answer
    dev: Channel | None  # ;2, running the agent's extension
    started: float
    answers: bool


@dataclass(slots=True, kw_only=True)
class Segment:
    """One queue visit, or one hand-off straight to an agent's extension (``queue`` None)."""

    queue: str | None
    joined_at: float
    position: int | None = None
    transferred_from: str | None = None
    left_at: float | None = None
    outcome: str | None = None
    reason: str | None = None
    agent: str | None = None
    answered_at: float | None = None
    completed_at: float | None = None

    def record(self) -> dict[str, Any]:
        end = self.answered_at if self.answered_at is not None else self.left_at
        talk = None
        if self.answered_at is not None and self.completed_at is not None:
            talk = round(self.completed_at - self.answered_at, 3)
        return {
            "queue": self.queue,
            "joined_at": self.joined_at,
            "left_at": self.left_at,
            "outcome": self.outcome,
            "reason": self.reason,
            "agent": self.agent,
            "wait_s": round(end - self.joined_at, 3) if end is not None else None,
            "talk_s": talk,
            "position": self.position,
            "transferred_from": self.transferred_from,
        }


@dataclass(slots=True, kw_only=True, eq=False)
class Call:
    """One inbound call: the caller's channels and, while offered or answered, an agent's."""

    linkedid: str
    caller: Channel  # the side that waits in the queue: Local ;2, or the PJSIP trunk channel
    phone: Channel | None  # local style: the caller's phone, the ;1 half
    number: str
    name: str
    priority: int
    seq: int
    created: float
    talk: float  # how long agents talk to this caller (the TALK variable of the recorded dialplan)
    stay: float  # how long the caller waits before hanging up (STAY)
    digit: str
    route: list[tuple[str, float, int]]  # queue visits still to come: (queue, timeout, dialplan priority)
    after_route: int = 0  # dialplan priority of the Hangup() after the last Queue()
    state: CallState = CallState.IVR
    queue: Queue | None = None
    joined: float = 0.0
    original_position: int = 0
    ring: Ring | None = None
    talking: Ring | None = None
    connected: float = 0.0
    bridge_id: str = ""
    attempt: int = 0  # invalidates ring and talk timers of earlier attempts
    retry_until: float = 0.0
    blocked: dict[str, float] = field(default_factory=dict)  # pjsip style: interface -> not before
    hangup_at: float | None = None  # the caller gives up waiting at this time
    timeout_at: float | None = None  # the current Queue() times out at this time
    abandoned_var: bool = False  # ABANDONED=TRUE was set: the next Queue() clears it
    blind_var: bool = False  # BLINDTRANSFER was set: the next bridge clears it
    transfers: int = 0
    transferred_from: str | None = None  # for the next segment
    direct: Phone | None = None
    segments: list[Segment] = field(default_factory=list)
    originate_action_id: str | None = None

    @property
    def member(self) -> Member | None:
        leg = self.ring or self.talking
        return leg.member if leg else None

    @property
    def agent_leg(self) -> Channel | None:
        leg = self.ring or self.talking
        return leg.out if leg else None


@dataclass(order=True, slots=True)
class _Timer:
    at: float
    seq: int
    kind: str = field(compare=False)
    call: Call | None = field(compare=False, default=None)
    token: int = field(compare=False, default=0)
    member: Member | None = field(compare=False, default=None)
    phone: Phone | None = field(compare=False, default=None)


def _fmt(seconds: float) -> str:
    """A dialplan number as Asterisk prints it: ``2``, ``0.5``."""
    return f"{seconds:g}"


def _phone_for(agent: AgentConfig, now: float) -> Phone:
    """Where a member interface rings: ``Local/1001@sim-agents/n`` runs extension 1001 in sim-agents."""
    iface = agent.interface
    state = iface.removesuffix("/n")
    if state.lower().startswith("local/"):
        exten, _, context = state[6:].partition("@")
        return Phone(agent=agent, interface=iface, state_interface=state, exten=agent.extension or exten,
                     context=context or "default", local=True, login_time=int(now))
    exten = agent.extension or state.rsplit("/", 1)[-1]
    return Phone(agent=agent, interface=iface, state_interface=state, exten=exten, context=AGENT_CONTEXT,
                 local=False, login_time=int(now))


class Pbx:
    """The pure simulation engine; every mutator takes ``now`` and queues events for :meth:`take_events`."""

    def __init__(
        self,
        *,
        config: SimConfig,
        agents: Sequence[AgentConfig],
        rng: random.Random,
        now: float,
        callers: Sequence[Caller] = (),
        random_arrivals: bool = True,
        max_records: int = 100_000,
    ) -> None:
        self.config = config
        self.rng = rng
        self.start = now
        self.callers = list(callers)
        self._vips = [c for c in self.callers if c.vip]
        self._known = [c for c in self.callers if not c.vip]
        style = config.channel_style
        if style == "auto":
            local = bool(agents) and all(a.interface.lower().startswith("local/") for a in agents)
            style = "local" if local else "pjsip"
        self.local = style == "local"
        self.entry_context = config.entry_context  # where callers' Local channels run (Local/s@<context>)
        self.phones = [_phone_for(a, now) for a in agents]
        self.queues: dict[str, Queue] = {}
        self._build_queues(now)
        self.primary = self.queues[config.queue]
        self.members = [m for q in self.queues.values() for m in q.members]
        self.channels: dict[str, Channel] = {}
        self.calls: dict[str, Call] = {}  # linkedid -> live call
        #: What happened to each call the engine ended, oldest first (the shape ``cti replay`` prints).
        self.records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.completed = 0
        self.abandoned = 0
        self._events: list[Message] = []
        self._timers: list[_Timer] = []
        self._timer_seq = 0
        self._call_seq = 0
        self._chan_counter = rng.randrange(0x10, 0x100)
        self._uid_counter = rng.randrange(50, 500)
        self._last_ts = 0.0
        self._last_us = 0
        self._arrivals = False
        self._ivr_steps: dict[str, Callable[[Call, float], None]] = {
            "ivr_read": self._ivr_read, "dtmf_send": self._ivr_dtmf_send, "dtmf_begin": self._ivr_dtmf_begin,
            "menu": self._ivr_menu,
        }
        if random_arrivals:
            self.start_arrivals(now)

    def _build_queues(self, now: float) -> None:
        cfg = self.config
        second = cfg.overflow_queue if cfg.overflow_queue != cfg.queue else None
        self.queues[cfg.queue] = Queue(name=cfg.queue, strategy="leastrecent")
        wanted = bool(cfg.overflow_share or cfg.transfer_share or cfg.second_queue_share)
        if second and (wanted or second in cfg.queue_members):
            self.queues[second] = Queue(name=second, strategy="linear")
        for name in cfg.queue_members:
            self.queues.setdefault(name, Queue(name=name, strategy="linear"))
        lookup: dict[str, Phone] = {}
        for p in self.phones:
            for key in (p.agent.id, p.agent.name, p.interface, p.state_interface):
                lookup.setdefault(key.lower(), p)
        for name, q in self.queues.items():
            if name in cfg.queue_members:
                phones = [lookup[k.lower()] for k in cfg.queue_members[name] if k.lower() in lookup]
            elif name == cfg.queue:
                phones = list(self.phones)
            elif cfg.second_queue_share > 0 and self.phones:
                count = max(1, math.ceil(cfg.second_queue_share * len(self.phones)))
                phones = self.phones[-count:]
            else:
                phones = []
            for p in phones:
                if any(m.phone is p for m in q.members):
                    continue
                m = Member(queue=q, phone=p)
                q.members.append(m)
                p.memberships.append(m)

    def start_arrivals(self, now: float) -> None:
        """Start the Poisson arrival process and the agents' breaks (once; no-ops when their rates are 0)."""
        if self._arrivals:
            return
        self._arrivals = True
        if self.config.calls_per_minute > 0:
            self._schedule(now + self._next_arrival(), "arrival")
        if self.config.pauses_per_hour > 0:
            for p in self.phones:
                if p.memberships:
                    self._schedule(now + self._next_break(), "break", phone=p)

    # ---- time -------------------------------------------------------------------------------

    def advance(self, now: float) -> list[Message]:
        """Run every timer due by ``now`` in time order; return the events produced since the last call."""
        while self._timers and self._timers[0].at <= now:
            timer = heapq.heappop(self._timers)
            self._fire(timer)
        return self.take_events()

    def take_events(self) -> list[Message]:
        out, self._events = self._events, []
        return out

    def next_due(self) -> float | None:
        return self._timers[0].at if self._timers else None

    def _schedule(self, at: float, kind: str, call: Call | None = None, token: int = 0, *,
                  member: Member | None = None, phone: Phone | None = None) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, _Timer(at, self._timer_seq, kind, call, token, member, phone))

    def _next_arrival(self) -> float:
        return self.rng.expovariate(self.config.calls_per_minute / 60.0)

    def _next_break(self) -> float:
        return self.rng.expovariate(self.config.pauses_per_hour / 3600.0)

    def _fire(self, timer: _Timer) -> None:
        t, kind, call = timer.at, timer.kind, timer.call
        if kind == "arrival":
            self._random_arrival(t)
            self._schedule(t + self._next_arrival(), "arrival")
            return
        if kind == "dispatch":
            self._dispatch(t)
            return
        if kind == "break":
            self._break(timer.phone, t)
            return
        if kind == "break_end":
            self._break_end(timer.member, t)
            return
        if call is None or call.state is CallState.ENDED:
            return
        state = call.state
        if kind == "phone_wait":
            self._phone_wait(call, t)
        elif state is CallState.IVR and kind in self._ivr_steps:
            self._ivr_steps[kind](call, t)
        elif kind == "patience":
            if call.hangup_at != t:
                return
            if state is CallState.QUEUED:
                self._abandon(call, t)
            elif state is CallState.DIRECT and timer.token == call.attempt:
                self._direct_abandon(call, t)
            elif state is CallState.PARKED:
                self._hangup_parked(call, t)
        elif kind == "queue_timeout":
            if state is CallState.QUEUED and call.timeout_at == t:
                self._queue_timeout(call, t)
        elif timer.token != call.attempt:
            return
        elif kind in ("answer", "noanswer") and state is CallState.QUEUED and call.ring is not None:
            if kind == "answer":
                self._connect(call, t)
            else:
                self._ring_no_answer(call, t)
        elif state is CallState.TALKING and call.talking is not None:
            if kind == "agent_wait":
                self._agent_wait(call, t)
            elif kind == "talk_end":
                self._agent_hangup(call, t)
            elif kind == "caller_end":
                self._caller_hangup_talking(call, t)
            elif kind == "transfer":
                self._blind_transfer(call, t)
        elif state is CallState.DIRECT:
            if kind == "direct_answer":
                self._direct_answer(call, t)
            elif kind == "direct_end":
                self._direct_end(call, t)

    # ---- ids and events ---------------------------------------------------------------------

    def _uid(self, now: float) -> str:
        self._uid_counter += 1
        return f"{int(now)}.{self._uid_counter}"

    def _channel(self, name: str, *, now: float, linkedid: str | None, **kw: Any) -> Channel:
        uid = self._uid(now)
        chan = Channel(name=name, uniqueid=uid, linkedid=linkedid or uid, created=now, **kw)
        self.channels[chan.name] = chan
        return chan

    def _new_channel(self, prefix: str, *, now: float, linkedid: str | None, **kw: Any) -> Channel:
        self._chan_counter += 1
        return self._channel(f"{prefix}-{self._chan_counter:08x}", now=now, linkedid=linkedid, **kw)

    def _local_pair(self, exten: str, context: str, *, now: float, linkedid: str | None) -> tuple[Channel, Channel]:
        """``Local/<exten>@<context>-XXXXXXXX;1`` and ``;2``: the ;2 runs the extension, ;1 is who dialled it."""
        self._chan_counter += 1
        base = f"Local/{exten}@{context}-{self._chan_counter:08x}"
        one = self._channel(f"{base};1", now=now, linkedid=linkedid, state=0, context=context, exten=exten)
        two = self._channel(f"{base};2", now=now, linkedid=one.linkedid, state=4, context=context, exten=exten)
        return one, two

    def _emit(self, event: str, privilege: str, now: float, *blocks: dict[str, str], **extra: str) -> float:
        """Queue one event; returns its ``Timestamp`` (strictly increasing, as Asterisk's are)."""
        us = round(now * 1_000_000)
        if us <= self._last_us:
            us = self._last_us + 1
        self._last_us = us
        ts = self._last_ts = us / 1_000_000  # the same float the Timestamp string parses to
        fields = {"Event": event, "Privilege": privilege, "Timestamp": f"{us // 1_000_000}.{us % 1_000_000:06d}"}
        for block in blocks:
            fields.update(block)
        fields.update(extra)
        self._events.append(Message(fields=fields))
        return ts

    def _ev(self, event: str, chan: Channel | None, now: float, privilege: str = "call,all", **extra: str) -> float:
        """A channel event; nothing for a half the style does not have (``None``)."""
        if chan is None:
            return self._last_ts
        return self._emit(event, privilege, now, chan.snapshot(), **extra)

    def _newexten(self, chan: Channel | None, now: float, app: str, data: str = "",
                  priority: int | None = None) -> float:
        if chan is None:
            return self._last_ts
        if priority is not None:
            chan.priority = priority
        chan.application, chan.application_data = app, data
        return self._ev("Newexten", chan, now, "dialplan,all", Extension=chan.exten, Application=app, AppData=data)

    def _varset(self, chan: Channel | None, now: float, name: str, value: str) -> None:
        if chan is not None:
            chan.variables[name] = value
        self._ev("VarSet", chan, now, "dialplan,all", Variable=name, Value=value)

    def _newstate(self, chan: Channel | None, state: int, now: float) -> None:
        if chan is not None:
            chan.state = state
            self._ev("Newstate", chan, now)

    def _hangup_request(self, chan: Channel | None, now: float, cause: int = 16, *, soft: bool = False) -> None:
        self._ev("SoftHangupRequest" if soft else "HangupRequest", chan, now, Cause=str(cause))

    def _hangup(self, chan: Channel | None, now: float, cause: int = 16) -> float:
        if chan is None:
            return self._last_ts
        ts = self._ev("Hangup", chan, now, **{"Cause": str(cause), "Cause-txt": hangup_cause_text(cause)})
        self.channels.pop(chan.name, None)
        return ts

    def _device_state(self, device: str, state: str, now: float) -> None:
        self._emit("DeviceStateChange", "call,all", now, Device=device, State=state)

    def _local_bridge(self, one: Channel, two: Channel, now: float, optimization: str = "Yes") -> None:
        self._emit("LocalBridge", "call,all", now, one.snapshot("LocalOne"), two.snapshot("LocalTwo"),
                   Context=two.context, Exten=two.exten, LocalOptimization=optimization)

    def _member_state(self, m: Member) -> dict[str, str]:
        """The member's state as app_queue reports it in QueueMemberStatus and QueueStatus alike."""
        p = m.phone
        return {
            "StateInterface": p.state_interface,
            "Membership": "static",
            "Penalty": str(m.penalty),
            "CallsTaken": str(m.calls_taken),
            "LastCall": str(p.last_call),
            "LastPause": str(m.last_pause),
            "LoginTime": str(p.login_time),
            "InCall": "1" if p.in_call else "0",
            "Status": str(p.status),
            "Paused": "1" if m.paused else "0",
            "PausedReason": m.paused_reason,
        }

    def _member_fields(self, m: Member) -> dict[str, str]:
        """queue_member_blob_create() in app_queue.c: QueueMemberStatus / QueueMemberPause body."""
        return {
            "Queue": m.queue.name,
            "MemberName": m.agent.name,
            "Interface": m.interface,
            **self._member_state(m),
            "Ringinuse": "0",
            "Wrapuptime": str(int(self.config.wrapup_s)),
        }

    def _phone_status(self, p: Phone, now: float, status: int) -> None:
        """The phone's device state changed: one QueueMemberStatus per queue it is a member of."""
        p.status = status
        if p.local:
            self._device_state(p.state_interface, _DEVICE_STATE[DEVICE_INUSE if status != DEVICE_NOT_INUSE
                                                                else DEVICE_NOT_INUSE], now)
        for m in p.memberships:
            self._emit("QueueMemberStatus", "agent,all", now, self._member_fields(m))

    def _bridge(self, event: str, now: float, bridge_id: str, count: int, chan: Channel | None = None) -> float:
        blocks = [{"BridgeUniqueid": bridge_id, **_BRIDGE_FIELDS, "BridgeNumChannels": str(count),
                   "BridgeVideoSourceMode": "none"}]
        if chan is not None:
            blocks.append(chan.snapshot())
        return self._emit(event, "call,all", now, *blocks)

    def _queue_event(self, event: str, call: Call, now: float, **extra: str) -> float:
        assert call.queue is not None
        return self._emit(event, "agent,all", now, call.caller.snapshot(), Queue=call.queue.name, **extra)

    def _agent_event(self, event: str, call: Call, leg: Ring, now: float, **extra: str) -> float:
        m = leg.member
        return self._emit(event, "agent,all", now, call.caller.snapshot(), leg.out.snapshot("Dest"),
                          Queue=m.queue.name, Interface=m.interface, MemberName=m.agent.name, **extra)

    def _dial_event(self, event: str, call: Call, leg: Ring, now: float,
                    dest: dict[str, str] | None = None, **extra: str) -> None:
        self._emit(event, "call,all", now, call.caller.snapshot(), dest or leg.out.snapshot("Dest"), **extra)

    def _local_vars(self, call: Call, now: float, *pairs: tuple[str, str]) -> None:
        """Dialplan variables app_queue and the bridge set on the caller (local style only)."""
        if self.local:
            for name, value in pairs:
                self._varset(call.caller, now, name, value)

    def _queue_end_vars(self, call: Call, now: float, answered: float | None) -> None:
        """DIALEDTIME (since the channel was created) and ANSWEREDTIME as Queue() returns: ANSWEREDTIME
        first after a bridge, DIALEDTIME first (and ANSWEREDTIME 0) otherwise, as in the captures."""
        dialed = now - call.created
        dial = (("DIALEDTIME", str(int(dialed))), ("DIALEDTIME_MS", str(int(dialed * 1000))))
        if answered is None:
            self._local_vars(call, now, *dial, ("ANSWEREDTIME", "0"), ("ANSWEREDTIME_MS", "0"))
            return
        talked = now - answered
        self._local_vars(call, now, ("ANSWEREDTIME", str(int(talked))), ("ANSWEREDTIME_MS", str(int(talked * 1000))),
                         *dial)

    # ---- callers ----------------------------------------------------------------------------

    def _random_arrival(self, now: float) -> None:
        roll = self.rng.random()
        if self._vips and roll < self.config.vip_share:
            caller = self.rng.choice(self._vips)
        elif self._known and self.rng.random() < 0.6:
            caller = self.rng.choice(self._known)
        else:
            caller = Caller(number=f"139{self.rng.randrange(10**8):08d}")
        self.place_call(caller.number, caller.name, now=now, priority=VIP_PRIORITY if caller.vip else 0)

    def _overflow_possible(self) -> bool:
        return self.config.overflow_queue in self.queues and self.config.overflow_queue != self.config.queue

    def place_call(
        self,
        number: str,
        name: str = "<unknown>",
        *,
        now: float,
        priority: int = 0,
        patience: float | None = None,
        originate_action_id: str | None = None,
        overflow: bool | None = None,
    ) -> str:
        """A caller rings in and (after the IVR, in local style) joins the queue; returns the call's Linkedid.

        ``patience`` is how long they wait before hanging up (drawn when None); ``overflow`` sends them
        to ``queue`` for ``overflow_timeout_s`` and then to ``overflow_queue`` (drawn when None).
        """
        cfg = self.config
        name = name or "<unknown>"
        if patience is None:
            patience = self.rng.expovariate(1.0 / cfg.mean_patience_s)
            if self.local:
                patience = float(max(1, round(patience)))
        talk = self.rng.expovariate(1.0 / cfg.mean_talk_s)
        if self.local:
            talk = float(max(1, round(talk)))
        if overflow is None:
            overflow = self._overflow_possible() and self.rng.random() < cfg.overflow_share
        overflow = overflow and self._overflow_possible()
        self._call_seq += 1
        if self.local:
            phone, chan = self._local_pair("s", cfg.entry_context, now=now, linkedid=None)
            first = _PRIO_OVERFLOW if overflow else _PRIO_QUEUE
        else:
            phone = None
            chan = self._new_channel("PJSIP/trunk", now=now, linkedid=None, state=4, context=INBOUND_CONTEXT)
            chan.set_caller(number, name)
            first = 3
        if overflow:
            route = [(cfg.queue, cfg.overflow_timeout_s, first), (cfg.overflow_queue, cfg.queue_timeout_s, first + 1)]
        else:
            route = [(cfg.queue, cfg.queue_timeout_s, first)]
        call = Call(linkedid=chan.linkedid, caller=chan, phone=phone, number=number, name=name, priority=priority,
                    seq=self._call_seq, created=now, talk=talk, stay=patience,
                    digit=_DIGIT_OVERFLOW if overflow else _DIGIT_QUEUE, route=route, after_route=route[-1][2] + 1,
                    originate_action_id=originate_action_id)
        self.calls[call.linkedid] = call
        if self.local:
            self._arrive_local(call, now)
        else:
            self._arrive_trunk(call, now)
        return call.linkedid

    def _originate_response(self, call: Call, chan: Channel, now: float) -> None:
        if call.originate_action_id is None:
            return
        self._emit("OriginateResponse", "call,all", now, ActionID=call.originate_action_id, Response="Success",
                   Channel=chan.name, Context=CALLER_CONTEXT if self.local else chan.context, Exten=chan.exten,
                   Reason="4", Uniqueid=chan.uniqueid, CallerIDNum=call.number, CallerIDName=call.name)

    def _arrive_trunk(self, call: Call, now: float) -> None:
        """pjsip style: the trunk channel answers and goes straight to Queue()."""
        chan = call.caller
        self._ev("Newchannel", chan, now)
        self._newexten(chan, now, "Answer")
        self._newstate(chan, 6, now)
        self._originate_response(call, chan, now)
        self._newexten(chan, now, "Set", f"QUEUE_PRIO={call.priority}", priority=2)
        self._varset(chan, now, "QUEUE_PRIO", str(call.priority))
        call.hangup_at = now + call.stay
        self._schedule(call.hangup_at, "patience", call)
        self._next_queue(call, now)

    def _arrive_local(self, call: Call, now: float) -> None:
        """The Originate of ``Local/s@ivr-entry`` with Context sim-caller, as the captures begin a call."""
        variables = (("__TALK", _fmt(call.talk)), ("STAY", _fmt(call.stay)), ("PRE", "1"), ("DIGITS", call.digit))
        self._originate_local(call, now, variables)
        for offset, kind in ((_T_READ, "ivr_read"), (_T_SEND, "dtmf_send"), (_T_DTMF_BEGIN, "dtmf_begin"),
                             (_T_DTMF_END, "menu"), (_T_PHONE_WAIT, "phone_wait")):
            self._schedule(now + offset, kind, call)
        call.hangup_at = now + _T_PHONE_WAIT + call.stay
        self._schedule(call.hangup_at, "patience", call)

    def _originate_local(self, call: Call, now: float, variables: Sequence[tuple[str, str]]) -> None:
        """The caller's Local pair comes up: ``;2`` answers, ``;1`` (the phone, with the Originate's
        ``variables``) starts ``sim-caller``'s Wait(PRE). Both modes' callers begin so."""
        phone, chan = call.phone, call.caller
        assert phone is not None
        num, name = call.number, call.name
        self._ev("Newchannel", phone, now)
        self._ev("Newchannel", chan, now)
        self._newexten(phone, now, "AppDial2", "(Outgoing Line)")
        for var, value in variables:
            self._varset(phone, now, var, value)
        phone.set_caller(num, name)
        self._ev("NewCallerid", phone, now, **_CID_PRES)
        phone.set_connected(num, name)
        self._ev("NewConnectedLine", phone, now)
        for var, value in reversed(variables):
            self._varset(chan, now, var, value)
        chan.set_caller(num, name)
        chan.set_connected(num, name)
        self._ev("NewCallerid", chan, now, **_CID_PRES)
        self._ev("NewConnectedLine", chan, now)
        self._local_bridge(phone, chan, now)
        self._newexten(chan, now, "Answer")
        self._newstate(chan, 6, now)
        self._emit("DialBegin", "call,all", now, phone.snapshot("Dest"), DialString=f"s@{chan.context}")
        self._device_state(f"Local/s@{chan.context}", "INUSE", now)
        self._newstate(phone, 6, now)
        self._emit("DialEnd", "call,all", now, phone.snapshot("Dest"), DialStatus="ANSWER")
        self._originate_response(call, phone, now)
        phone.context = CALLER_CONTEXT
        self._newexten(phone, now, "Wait", "1")

    def _ivr_read(self, call: Call, now: float) -> None:
        chan = call.caller
        self._newexten(chan, now, "Set", "CDR(userfield)=ivr", priority=2)
        self._newexten(chan, now, "Read", "CHOICE,,1,,1,4", priority=3)
        self._varset(chan, now, "READSTATUS", "ERROR")

    def _ivr_dtmf_send(self, call: Call, now: float) -> None:
        self._newexten(call.phone, now, "ExecIf", f"1?SendDTMF({call.digit},200)", priority=2)

    def _ivr_dtmf_begin(self, call: Call, now: float) -> None:
        self._ev("DTMFBegin", call.caller, now, "dtmf,all", Digit=call.digit, Direction="Received")

    def _ivr_menu(self, call: Call, now: float) -> None:
        """The digit arrives: Read() returns, the IVR's Set/GotoIf steps, then Queue()."""
        chan, digit = call.caller, call.digit
        self._ev("DTMFEnd", chan, now, "dtmf,all", Digit=digit, DurationMs="100", Direction="Received")
        self._varset(chan, now, "CHOICE", digit)
        self._varset(chan, now, "READSTATUS", "OK")
        vip = "1" if call.priority > 0 else "0"
        self._newexten(chan, now, "Set", f"VIP={vip}", priority=4)
        self._varset(chan, now, "VIP", vip)
        self._newexten(chan, now, "Set", f"QUEUE_PRIO={call.priority}", priority=5)
        self._varset(chan, now, "QUEUE_PRIO", str(call.priority))
        for prio, label, digit_for in ((6, "vip", "9"), (7, "short", "8"), (8, "sales", "7"),
                                       (9, "overflow", _DIGIT_OVERFLOW)):
            self._newexten(chan, now, "GotoIf", f"{int(digit == digit_for)}?{label}", priority=prio)
        self._next_queue(call, now)

    def _phone_wait(self, call: Call, now: float) -> None:
        if call.phone is not None and call.phone.name in self.channels:
            self._newexten(call.phone, now, "Wait", _fmt(call.stay), priority=3)

    # ---- queues -----------------------------------------------------------------------------

    def _app_data(self, queue: str, timeout: float) -> str:
        return f"{queue},,,,{int(timeout)}" if timeout else queue

    def _next_queue(self, call: Call, now: float) -> None:
        """The dialplan's next Queue(), or its Hangup() when there is none left."""
        if call.route:
            queue, timeout, prio = call.route.pop(0)
            self._newexten(call.caller, now, "Queue", self._app_data(queue, timeout), priority=prio)
            self._join(call, self.queues[queue], timeout, now)
        else:
            self._newexten(call.caller, now, "Hangup", priority=call.after_route)
            self._caller_side_hangup(call, now)
            self._finish(call, now)

    def _join(self, call: Call, q: Queue, timeout: float, now: float, *, vars_done: bool = False) -> None:
        """Queue() starts: its variables, QueueCallerJoin in priority order, the timeout, a ring."""
        chan = call.caller
        chan.application, chan.application_data = "Queue", self._app_data(q.name, timeout)
        if not vars_done:
            self._local_vars(call, now, *((v, "") for v in _QUEUE_VARS))
        if call.abandoned_var:
            self._local_vars(call, now, ("ABANDONED", ""))
            call.abandoned_var = False
        call.state = CallState.QUEUED
        call.queue = q
        call.ring = call.talking = None
        call.retry_until = 0.0
        call.blocked.clear()
        call.joined = now
        if not q.waiting and self.local:
            self._device_state(f"Queue:{q.name}", "RINGING", now)
        pos = 0
        while pos < len(q.waiting) and q.waiting[pos].priority >= call.priority:
            pos += 1
        q.waiting.insert(pos, call)
        call.original_position = pos + 1
        ts = self._queue_event("QueueCallerJoin", call, now, Position=str(pos + 1), Count=str(len(q.waiting)))
        call.segments.append(Segment(queue=q.name, joined_at=ts, position=pos + 1,
                                     transferred_from=call.transferred_from))
        call.transferred_from = None
        call.timeout_at = now + timeout if timeout else None
        if call.timeout_at is not None:
            self._schedule(call.timeout_at, "queue_timeout", call)
        if call.hangup_at is None:  # a transfer brought them here: they wait afresh
            call.hangup_at = now + self.rng.expovariate(1.0 / self.config.mean_patience_s)
            self._schedule(call.hangup_at, "patience", call)
        self._dispatch(now)

    def _leave_queue(self, call: Call, now: float) -> tuple[int, float]:
        q = call.queue
        assert q is not None
        pos = q.waiting.index(call) + 1
        q.waiting.remove(call)
        if not q.waiting and self.local:
            self._device_state(f"Queue:{q.name}", "NOT_INUSE", now)
        ts = self._queue_event("QueueCallerLeave", call, now, Position=str(pos), Count=str(len(q.waiting)))
        call.timeout_at = None
        return pos, ts

    def _segment(self, call: Call) -> Segment:
        return call.segments[-1]

    # ---- agents -----------------------------------------------------------------------------

    def _free(self, m: Member, now: float) -> bool:
        p = m.phone
        return not m.paused and not p.busy and p.status == DEVICE_NOT_INUSE and p.wrapup_until <= now

    def _dispatch(self, now: float) -> None:
        """Offer waiting callers, in queue order, to free members (autofill, ringinuse=no).

        A member of two queues goes to the queue whose first caller has waited longest, as the
        callers of both queues race for it in app_queue; within a queue, priority then arrival.
        """
        busy = [q for q in self.queues.values() if q.waiting]
        if len(busy) > 1:
            busy.sort(key=lambda q: q.waiting[0].joined)
        for q in busy:
            free: list[Member] | None = None
            for call in q.waiting:
                if call.ring is not None or call.retry_until > now:
                    continue
                if free is None:
                    free = [m for m in q.members if self._free(m, now)]
                if not free:
                    break
                m = self._pick(q, free, call, now)
                if m is not None:
                    free.remove(m)
                    self._ring(call, m, now)

    def _pick(self, q: Queue, free: list[Member], call: Call, now: float) -> Member | None:
        ok = [m for m in free if call.blocked.get(m.interface, 0.0) <= now]
        if not ok:  # pjsip style: the member that just missed this caller is retried by a timer
            return None
        if q.strategy == "linear":
            return min(ok, key=lambda m: m.penalty)
        return min(ok, key=lambda m: (m.penalty, m.phone.last_call_exact))

    def _ring(self, call: Call, m: Member, now: float) -> None:
        p, chan = m.phone, call.caller
        num, name = call.number, call.name
        answers = self.rng.random() >= self.config.no_answer_prob
        call.attempt += 1
        if p.local:
            out, dev = self._local_pair(p.exten, p.context, now=now, linkedid=call.linkedid)
            self._ev("Newchannel", out, now)
            self._ev("Newchannel", dev, now)
            out.set_caller(num, name)
            self._newexten(out, now, "AppQueue", "(Outgoing Line)")
            self._ev("NewCallerid", out, now, **_CID_PRES)
            peer = f"{p.exten}@{p.context}/n"
            if self.local:
                self._varset(out, now, "__TALK", _fmt(call.talk))
            self._varset(out, now, "DIALEDPEERNUMBER", peer)
            self._varset(dev, now, "DIALEDPEERNUMBER", peer)
            if self.local:
                self._varset(dev, now, "__TALK", _fmt(call.talk))
            dev.set_caller(num, name)
            dev.set_connected(num, name)
            self._ev("NewCallerid", dev, now, **_CID_PRES)
            self._ev("NewConnectedLine", dev, now)
            self._local_bridge(out, dev, now)
            dial_dest = out.snapshot("Dest")  # DialBegin shows ;1 before app_queue names it after the caller
            out.exten = chan.exten
            out.set_connected(num, name)
        else:
            out = self._new_channel(p.state_interface, now=now, linkedid=call.linkedid, state=0,
                                    context=AGENT_CONTEXT, exten="s")
            dev = None
            self._ev("Newchannel", out, now)
            out.set_caller(num, name)
            self._ev("NewCallerid", out, now, **_CID_PRES)
            dial_dest = None
        ring = Ring(member=m, out=out, dev=dev, started=now, answers=answers)
        call.ring = ring
        p.call = call
        self._agent_event("AgentCalled", call, ring, now)
        self._dial_event("DialBegin", call, ring, now, dial_dest, DialString=p.interface if p.local else p.exten)
        if dev is not None:
            self._newexten(dev, now, "Ringing")
            self._newstate(out, 5, now)
            self._newexten(out, now, "AppQueue", "(Outgoing Line)")
            self._ev("NewConnectedLine", out, now)
            self._newexten(dev, now, "Wait", _fmt(self.config.ring_s) if answers else _NO_ANSWER_WAIT, priority=2)
        else:
            self._newstate(out, 5, now)
        self._dial_event("DialState", call, ring, now, DialStatus="RINGING")
        self._phone_status(p, now, DEVICE_INUSE if p.local else DEVICE_RINGING)
        if answers and self.config.ring_s < self.config.ring_timeout_s:
            self._schedule(now + self.config.ring_s, "answer", call, call.attempt)
        else:
            self._schedule(now + self.config.ring_timeout_s, "noanswer", call, call.attempt)

    def _release(self, leg: Ring, now: float, *, wrapup: bool) -> None:
        """The member's channels are gone: its phone is free again (after wrap-up when it talked)."""
        m, p = leg.member, leg.member.phone
        p.call = None
        p.in_call = False
        if wrapup:
            m.calls_taken += 1
            p.last_call, p.last_call_exact = int(now), now
            p.wrapup_until = now + self.config.wrapup_s
            self._schedule(p.wrapup_until, "dispatch")
        self._phone_status(p, now, DEVICE_NOT_INUSE)

    def _drop_ring(self, call: Call, now: float, *, no_answer: bool) -> None:
        """A ring stops without an answer: app_queue hangs up the member's channels."""
        leg = call.ring
        assert leg is not None
        out, dev = leg.out, leg.dev
        if no_answer:
            self._agent_event("AgentRingNoAnswer", call, leg, now, RingTime=str(round((now - leg.started) * 1000)))
            self._dial_event("DialEnd", call, leg, now, DialStatus="NOANSWER")
        if dev is not None:
            if no_answer:
                self._dial_event("DialEnd", call, leg, now, DialStatus="CANCEL")
                self._hangup_request(dev, now, 0)
                self._hangup_request(dev, now, 16, soft=True)
                self._hangup(out, now, 0)
                self._hangup(dev, now, 0)
            else:
                self._dial_event("DialEnd", call, leg, now, DialStatus="CANCEL")
                self._hangup_request(dev, now, 16)
                self._hangup(out, now, 16)
                self._hangup_request(dev, now, 16, soft=True)
                self._hangup(dev, now, 16)
        else:
            if not no_answer:
                self._dial_event("DialEnd", call, leg, now, DialStatus="CANCEL")
            self._hangup_request(out, now, 0)
            self._hangup(out, now, 0)
        call.ring = None
        self._release(leg, now, wrapup=False)

    def _ring_no_answer(self, call: Call, now: float) -> None:
        """The member's ring timeout (or the agent rejected it): try again after ``retry_s``."""
        leg = call.ring
        assert leg is not None
        self._drop_ring(call, now, no_answer=True)
        if self.local:  # app_queue waits `retry` seconds before ringing anyone again
            call.retry_until = now + self.config.retry_s
            self._schedule(call.retry_until, "dispatch")
        else:  # the compact style tries the other members at once
            call.blocked[leg.member.interface] = now + self.config.retry_s
            self._schedule(now + self.config.retry_s, "dispatch")
        self._dispatch(now)

    def _connect(self, call: Call, now: float) -> None:
        leg = call.ring
        q = call.queue
        assert leg is not None and q is not None
        out, dev, chan, p = leg.out, leg.dev, call.caller, leg.member.phone
        if dev is not None:
            self._newexten(dev, now, "Answer", priority=3)
            self._newstate(dev, 6, now)
        self._newstate(out, 6, now)
        self._dial_event("DialEnd", call, leg, now, DialStatus="ANSWER")
        pos, _ = self._leave_queue(call, now)
        hold = int(now) - int(call.joined)
        self._local_vars(call, now, ("QUEUEPOSITION", str(pos)), ("QUEUEWAIT", str(hold)),
                         ("QUEUEWAIT_MS", str(hold * 1000)))
        ts = self._agent_event("AgentConnect", call, leg, now, HoldTime=str(hold),
                               RingTime=str(int(now) - int(leg.started)))
        seg = self._segment(call)
        seg.answered_at = seg.left_at = ts
        seg.outcome, seg.agent = "answered", leg.member.agent.name
        q.hold_total += now - call.joined
        call.state = CallState.TALKING
        call.talking, call.ring = leg, None
        call.connected = now
        call.hangup_at = None
        call.bridge_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        out.bridge_id = chan.bridge_id = call.bridge_id
        self._bridge("BridgeCreate", now, call.bridge_id, 0)
        self._bridge("BridgeEnter", now, call.bridge_id, 1, out)
        self._bridge("BridgeEnter", now, call.bridge_id, 2, chan)
        if call.blind_var:
            self._varset(chan, now, "BLINDTRANSFER", "")
            call.blind_var = False
        if self.local:
            self._varset(out, now, "BRIDGEPEER", chan.name)
            self._varset(chan, now, "BRIDGEPEER", out.name)
        p.in_call = True
        if not p.local:
            self._phone_status(p, now, DEVICE_INUSE)
        self._schedule_talk(call, now, dev is not None)

    def _schedule_talk(self, call: Call, now: float, local_agent: bool) -> None:
        """How an answered call goes on: the agent's extension's Wait(TALK), then one of the agent's
        hangup, the caller's, or a blind transfer (by the shares), each after part of the talk time."""
        call.attempt += 1
        lead = ANSWER_DELAY_S if local_agent else 0.0
        if local_agent:
            self._schedule(now + lead, "agent_wait", call, call.attempt)
        cfg, roll = self.config, self.rng.random()
        if roll < cfg.transfer_share and call.transfers == 0:
            self._schedule(now + lead + self.rng.uniform(0.2, 0.8) * call.talk, "transfer", call, call.attempt)
        elif roll < cfg.transfer_share + cfg.caller_hangup_share:
            self._schedule(now + lead + self.rng.uniform(0.2, 0.9) * call.talk, "caller_end", call, call.attempt)
        else:
            self._schedule(now + lead + call.talk, "talk_end", call, call.attempt)

    def _agent_wait(self, call: Call, now: float) -> None:
        assert call.talking is not None
        self._newexten(call.talking.dev, now, "Wait", _fmt(call.talk), priority=4)

    def _complete(self, call: Call, leg: Ring, now: float, reason: str) -> float:
        """AgentComplete, and the queue's figures for the member's part."""
        q = leg.member.queue
        ts = self._agent_event("AgentComplete", call, leg, now, HoldTime=str(int(call.connected) - int(call.joined)),
                               TalkTime=str(int(now) - int(call.connected)), Reason=reason)
        self._segment(call).completed_at = ts
        q.completed += 1
        q.talk_total += now - call.connected
        self.completed += 1
        return ts

    def _agent_hangup(self, call: Call, now: float, *, via_ami: bool = False) -> None:
        """The agent hangs up: the member's part ends, then app_queue hangs up the caller."""
        leg = call.talking
        assert leg is not None
        out, dev, chan = leg.out, leg.dev, call.caller
        if dev is not None:
            if not via_ami:
                self._newexten(dev, now, "Hangup", priority=5)
            self._hangup_request(dev, now, soft=True)
            self._hangup_request(out, now)
            self._hangup(dev, now)
            self._complete(call, leg, now, "agent")
            if self.local:
                self._varset(out, now, "BRIDGEPEER", "")
                self._varset(chan, now, "BRIDGEPEER", "")
            self._bridge("BridgeLeave", now, call.bridge_id, 1, out)
            self._hangup(out, now)
        else:
            self._hangup_request(out, now)
            self._bridge("BridgeLeave", now, call.bridge_id, 1, out)
            self._hangup(out, now)
            self._complete(call, leg, now, "agent")
        self._release(leg, now, wrapup=True)
        self._bridge("BridgeLeave", now, call.bridge_id, 0, chan)
        self._bridge("BridgeDestroy", now, call.bridge_id, 0)
        out.bridge_id = chan.bridge_id = ""
        call.talking = None
        self._queue_end_vars(call, now, call.connected)
        self._caller_side_hangup(call, now)
        self._finish(call, now)

    def _caller_hangup_talking(self, call: Call, now: float, *, via_ami: bool = False) -> None:
        """The caller hangs up while talking: AgentComplete Reason=caller, then the member's channels go."""
        leg = call.talking
        assert leg is not None
        out, dev, chan, phone = leg.out, leg.dev, call.caller, call.phone
        if phone is not None and not via_ami:
            self._newexten(phone, now, "Hangup", priority=4)
        self._hangup_request(phone, now, soft=True)
        self._hangup_request(chan, now)
        self._hangup(phone, now)
        if self.local:
            self._varset(out, now, "BRIDGEPEER", "")
            self._varset(chan, now, "BRIDGEPEER", "")
        self._bridge("BridgeLeave", now, call.bridge_id, 1, chan)
        self._complete(call, leg, now, "caller")
        self._bridge("BridgeLeave", now, call.bridge_id, 0, out)
        self._bridge("BridgeDestroy", now, call.bridge_id, 0)
        out.bridge_id = chan.bridge_id = ""
        call.talking = None
        self._queue_end_vars(call, now, call.connected)
        if self.local:
            self._hangup_request(chan, now, soft=True)
        self._hangup(chan, now)
        self._hangup_request(dev, now)
        self._hangup(out, now)
        self._hangup_request(dev, now, soft=True)
        self._hangup(dev, now)
        self._release(leg, now, wrapup=True)
        self._finish(call, now)

    def _caller_side_hangup(self, call: Call, now: float) -> float:
        """The caller's channels hang up after the dialplan ends (Queue() returned or Hangup())."""
        chan, phone = call.caller, call.phone
        if phone is not None:
            self._hangup_request(chan, now, soft=True)
            self._hangup_request(phone, now)
            ts = self._hangup(chan, now)
            self._hangup_request(phone, now, soft=True)
            self._hangup(phone, now)
            return ts
        return self._hangup(chan, now)

    def _abandon(self, call: Call, now: float, *, via_ami: bool = False) -> None:
        """The caller gives up while queued: QueueCallerAbandon, QueueCallerLeave, then their Hangup."""
        q = call.queue
        assert q is not None
        chan, phone = call.caller, call.phone
        if phone is not None and not via_ami:
            self._newexten(phone, now, "Hangup", priority=4)
        self._hangup_request(phone, now, soft=True)
        self._hangup_request(chan, now)
        if call.ring is not None:
            self._drop_ring(call, now, no_answer=False)
        hold = int(now) - int(call.joined)
        self._local_vars(call, now, ("QUEUEWAIT", str(hold)), ("QUEUEWAIT_MS", str(hold * 1000)))
        self._queue_end_vars(call, now, None)
        self._hangup(phone, now)
        self._varset(chan, now, "ABANDONED", "TRUE")
        pos = q.waiting.index(call) + 1
        self._queue_event("QueueCallerAbandon", call, now, Position=str(pos),
                          OriginalPosition=str(call.original_position), HoldTime=str(hold))
        pos, ts = self._leave_queue(call, now)
        seg = self._segment(call)
        seg.left_at, seg.outcome = ts, "abandoned"
        q.abandoned += 1
        self.abandoned += 1
        if self.local:
            self._varset(chan, now, "QUEUEPOSITION", str(pos))
            self._hangup_request(chan, now, soft=True)
        self._hangup(chan, now)
        self._finish(call, now)
        self._dispatch(now)

    def _queue_timeout(self, call: Call, now: float) -> None:
        """Queue()'s timeout, as app_queue 22 reports it: an abandon record, then QUEUESTATUS=TIMEOUT."""
        q = call.queue
        assert q is not None
        chan = call.caller
        if call.ring is not None:  # the ring in progress is given up as a no-answer
            self._drop_ring(call, now, no_answer=True)
        self._varset(chan, now, "ABANDONED", "TRUE")
        call.abandoned_var = True
        hold = int(now) - int(call.joined)
        pos = q.waiting.index(call) + 1
        self._queue_event("QueueCallerAbandon", call, now, Position=str(pos),
                          OriginalPosition=str(call.original_position), HoldTime=str(hold))
        self._local_vars(call, now, ("QUEUEWAIT", str(hold)), ("QUEUEWAIT_MS", str(hold * 1000)))
        self._queue_end_vars(call, now, None)
        pos, ts = self._leave_queue(call, now)
        self._local_vars(call, now, ("QUEUEPOSITION", str(pos)))
        self._varset(chan, now, "QUEUESTATUS", "TIMEOUT")
        seg = self._segment(call)
        seg.left_at, seg.outcome, seg.reason = ts, "unanswered", "timeout"
        q.abandoned += 1
        call.queue = None
        self._next_queue(call, now)
        self._dispatch(now)

    # ---- transfers ----------------------------------------------------------------------------

    def _transfer_target(self, leg: Ring) -> Phone | None:
        """Another agent whose phone is free, for a transfer straight to their extension."""
        if self.rng.random() >= self.config.transfer_to_agent_share:
            return None
        free = [p for p in self.phones if p is not leg.member.phone and not p.busy]
        return self.rng.choice(free) if free else None

    def _blind_transfer(self, call: Call, now: float) -> None:
        """The agent blind-transfers the caller (AMI BlindTransfer of the agent's leg), as the blindxfer capture."""
        leg = call.talking
        assert leg is not None
        out, dev, chan = leg.out, leg.dev, call.caller
        target = self._transfer_target(leg)
        if target is not None:
            context, exten = target.context, target.exten
            queue = None
        else:
            others = [q for q in self.queues.values() if q is not leg.member.queue]
            queue = others[0] if others else leg.member.queue
            context, exten = self.config.xfer_context, queue.name
        transferer, transferee = out.snapshot("Transferer"), chan.snapshot("Transferee")
        if self.local:
            self._ev("Unhold", out, now)
        self._varset(chan, now, "BLINDTRANSFER", out.name)
        self._varset(out, now, "BLINDTRANSFER", chan.name)
        if self.local and target is not None:
            self._varset(out, now, "BRIDGEPEER", "")
        self._local_vars(call, now, ("BRIDGEPEER", ""))
        chan.context, chan.exten = context, exten
        self._newexten(chan, now, chan.application, chan.application_data, priority=1)
        if self.local and target is None:
            self._varset(out, now, "BRIDGEPEER", "")
            self._bridge("BridgeLeave", now, call.bridge_id, 1, chan)
        ts = self._emit("BlindTransfer", "call,all", now, {"Result": "Success"}, transferer, transferee,
                        {"BridgeUniqueid": call.bridge_id, **_BRIDGE_FIELDS, "BridgeNumChannels": "2",
                         "BridgeVideoSourceMode": "none"}, IsExternal="Yes", Context=context, Extension=exten)
        if not (self.local and target is None):
            self._bridge("BridgeLeave", now, call.bridge_id, 1, chan)
        seg = self._segment(call)
        seg.outcome, seg.reason = "transferred", "blind"
        call.transfers += 1
        call.blind_var = True
        call.transferred_from = leg.member.agent.name
        call.talking = None
        out.bridge_id = chan.bridge_id = ""
        if target is None:
            assert queue is not None
            self._bridge("BridgeLeave", now, call.bridge_id, 0, out)
            self._complete(call, leg, now, "transfer")
            self._hangup_request(dev, now)
            self._bridge("BridgeDestroy", now, call.bridge_id, 0)
            self._queue_end_vars(call, now, None)
            self._local_vars(call, now, *((v, "") for v in _QUEUE_VARS))
            self._hangup_request(dev, now, soft=True)
            self._hangup(dev, now)
            if dev is None:
                self._hangup_request(out, now)
            self._hangup(out, now)
            self._release(leg, now, wrapup=True)
            call.queue = None
            call.route = []
            call.after_route = 2
            self._join(call, queue, self.config.queue_timeout_s, now, vars_done=True)
            return
        self._complete(call, leg, now, "transfer")
        self._queue_end_vars(call, now, None)
        self._newexten(chan, now, "Wait", _fmt(self.config.ring_s), priority=2)
        self._bridge("BridgeLeave", now, call.bridge_id, 0, out)
        self._bridge("BridgeDestroy", now, call.bridge_id, 0)
        self._hangup_request(dev if dev is not None else out, now)
        self._hangup(out, now)
        self._hangup_request(dev, now, soft=True)
        self._hangup(dev, now)
        self._release(leg, now, wrapup=True)
        self._start_direct(call, target, ts, now)

    def _start_direct(self, call: Call, target: Phone, ts: float, now: float) -> None:
        """The transferee runs the agent's extension itself: Ringing, Wait(RING), Answer, Wait(TALK), Hangup."""
        call.queue = None
        call.state = CallState.DIRECT
        call.direct, target.direct = target, call
        call.segments.append(Segment(queue=None, joined_at=ts, transferred_from=call.transferred_from))
        call.transferred_from = None
        call.attempt += 1
        call.hangup_at = now + self.rng.expovariate(1.0 / self.config.mean_patience_s)
        self._schedule(call.hangup_at, "patience", call, call.attempt)
        self._schedule(now + self.config.ring_s, "direct_answer", call, call.attempt)

    def _direct_answer(self, call: Call, now: float) -> None:
        target = call.direct
        assert target is not None
        chan = call.caller
        seg = self._segment(call)
        if seg.answered_at is not None:
            return
        ts = self._newexten(chan, now, "Answer", priority=3)
        self._newexten(chan, now, "Wait", _fmt(call.talk), priority=4)
        seg.answered_at = seg.left_at = ts
        seg.outcome, seg.agent = "answered", target.agent.name
        call.hangup_at = None
        call.connected = now
        self._schedule(now + call.talk, "direct_end", call, call.attempt)

    def _direct_end(self, call: Call, now: float, *, via_ami: bool = False) -> None:
        chan, phone = call.caller, call.phone
        if not via_ami:
            self._newexten(chan, now, "Hangup", priority=5)
        self._hangup_request(chan, now, soft=True)
        self._hangup_request(phone, now)
        self._hangup_request(phone, now, soft=True)
        self._hangup(phone, now)
        ts = self._hangup(chan, now)
        self._segment(call).completed_at = ts
        self._end_direct(call, now)

    def _direct_abandon(self, call: Call, now: float, *, via_ami: bool = False) -> None:
        """The caller hangs up while the transfer target's extension rings."""
        chan, phone = call.caller, call.phone
        if phone is not None and not via_ami:
            self._newexten(phone, now, "Hangup", priority=4)
        self._hangup_request(phone, now, soft=True)
        self._hangup_request(chan, now)
        self._hangup(phone, now)
        self._hangup_request(chan, now, soft=True)
        ts = self._hangup(chan, now)
        seg = self._segment(call)
        seg.left_at, seg.outcome = ts, "abandoned"
        self._end_direct(call, now)

    def _end_direct(self, call: Call, now: float) -> None:
        target = call.direct
        if target is not None:
            target.direct = None
        call.direct = None
        self._finish(call, now)
        self._dispatch(now)

    def _hangup_parked(self, call: Call, now: float) -> None:
        self._hangup_request(call.caller, now)
        self._hangup(call.caller, now)
        self._hangup_request(call.phone, now)
        self._hangup(call.phone, now)
        self._finish(call, now)

    # ---- the end of a call ----------------------------------------------------------------------

    def _finish(self, call: Call, now: float) -> None:
        call.state = CallState.ENDED
        self.calls.pop(call.linkedid, None)
        for chan in (call.caller, call.phone):  # a channel a client left in place still ends with the call
            if chan is not None and self.channels.get(chan.name) is chan:
                self._hangup(chan, now)
        if self.local:
            self._device_state(f"Local/s@{self.entry_context}", "INUSE" if self.calls else "NOT_INUSE", now)
        self.records.append(self._record(call))

    def _record(self, call: Call) -> dict[str, Any]:
        """The engine's own account of a call, in the shape ``cti replay`` prints per call."""
        segments = [s.record() for s in call.segments]
        queued = [s for s in call.segments if s.queue is not None]
        answered = [s for s in call.segments if s.answered_at is not None]
        owner = answered[0] if answered else None
        if answered:
            outcome: str | None = "answered"
        elif call.segments and call.segments[-1].outcome == "abandoned":
            outcome = "abandoned"
        elif queued:
            outcome = "unanswered"
        else:
            outcome = None
        wait = None
        if queued:
            end = owner.answered_at if owner is not None else queued[-1].left_at
            if end is not None:
                wait = round(end - queued[0].joined_at, 3)
        talks = [r["talk_s"] for r in segments if r["talk_s"] is not None]
        return {
            "linkedid": call.linkedid,
            "caller": call.number,
            "queue": queued[0].queue if queued else None,
            "agent": owner.agent if owner is not None else None,
            "outcome": outcome,
            "wait_s": wait,
            "talk_s": round(sum(talks), 3) if talks else None,
            "segments": segments,
        }

    # ---- breaks -------------------------------------------------------------------------------

    def _break(self, phone: Phone | None, now: float) -> None:
        """An agent takes a break in one of their queues (QueuePause with Queue): still rung from the others."""
        if phone is None:
            return
        open_ = [m for m in phone.memberships if not m.paused]
        if not open_:
            self._schedule(now + self._next_break(), "break", phone=phone)
            return
        m = self.rng.choice(open_)
        self._set_pause(m, True, "break", now)
        self._schedule(now + self.rng.expovariate(1.0 / self.config.mean_pause_s), "break_end", member=m)

    def _break_end(self, m: Member | None, now: float) -> None:
        if m is None:
            return
        if m.paused and m.paused_reason == "break":
            self._set_pause(m, False, "", now)
            self._dispatch(now)
        self._schedule(now + self._next_break(), "break", phone=m.phone)

    def _set_pause(self, m: Member, paused: bool, reason: str, now: float) -> None:
        m.paused = paused
        m.paused_reason = reason if paused else ""
        m.last_pause = int(now)
        self._device_state(f"Queue:{m.queue.name}_pause_{m.interface}", "INUSE" if paused else "NOT_INUSE", now)
        self._emit("QueueMemberPause", "agent,all", now, self._member_fields(m))

    # ---- client controls ---------------------------------------------------------------------

    def _memberships(self, key: str) -> list[Member]:
        k = key.lower()
        for p in self.phones:
            if k in (p.agent.id.lower(), p.interface.lower(), p.state_interface.lower(), p.agent.name.lower()):
                return list(p.memberships)
        return []

    def member(self, key: str, queue: str | None = None) -> Member | None:
        """A membership by agent id, interface or name (case-insensitive), in ``queue`` or the first one."""
        for m in self._memberships(key):
            if queue is None or m.queue.name.lower() == queue.lower():
                return m
        return None

    def pause(self, key: str, paused: bool, *, now: float, reason: str = "", queue: str | None = None) -> bool:
        """QueuePause: in ``queue`` only, or in every queue of the member; False if no such member."""
        members = [m for m in self._memberships(key) if queue is None or m.queue.name.lower() == queue.lower()]
        if not members:
            return False
        for m in members:
            self._set_pause(m, paused, reason, now)
        if not paused:
            self._dispatch(now)
        return True

    def _call_of(self, channel: str) -> tuple[Call, Channel] | None:
        chan = self.channels.get(channel)
        if chan is None:
            return None
        call = self.calls.get(chan.linkedid)
        return (call, chan) if call is not None else None

    def hangup(self, channel: str, *, now: float) -> bool:
        """AMI Hangup: end a channel with the events Asterisk would send; False if unknown."""
        chan = self.channels.get(channel)
        if chan is None:
            return False
        found = self._call_of(channel)
        if found is None:
            self._hangup_request(chan, now)
            self._hangup(chan, now)
            return True
        call, _ = found
        state = call.state
        if chan is call.caller or chan is call.phone:
            if state is CallState.QUEUED:
                self._abandon(call, now, via_ami=True)
            elif state is CallState.TALKING:
                self._caller_hangup_talking(call, now, via_ami=True)
            elif state is CallState.DIRECT:
                if self._segment(call).answered_at is None:
                    self._direct_abandon(call, now, via_ami=True)
                else:
                    self._direct_end(call, now, via_ami=True)
            else:
                self._hangup_parked(call, now)
            return True
        if call.ring is not None and chan in (call.ring.out, call.ring.dev):
            self._ring_no_answer(call, now)  # the agent rejects the ring: the caller stays queued
        elif call.talking is not None and chan in (call.talking.out, call.talking.dev):
            self._agent_hangup(call, now, via_ami=True)
        else:
            self._hangup_request(chan, now)
            self._hangup(chan, now)
        return True

    def redirect(self, channel: str, context: str, exten: str, *, now: float, priority: int = 1) -> bool:
        """AMI Redirect: an ``exten`` naming a queue (re)joins it, anything else parks the caller."""
        chan = self.channels.get(channel)
        if chan is None:
            return False
        found = self._call_of(channel)
        if found is None or found[1] is not found[0].caller:
            chan.context, chan.exten, chan.priority = context, exten, priority
            self._newexten(chan, now, "Wait", "300")
            return True
        call = found[0]
        self._leave_for_redirect(call, chan, now)
        call.queue = None
        call.attempt += 1
        chan.context, chan.exten, chan.priority = context, exten, priority
        if exten in self.queues:
            timeout = self.config.queue_timeout_s
            call.route, call.after_route = [], priority + 1
            self._newexten(chan, now, "Queue", self._app_data(exten, timeout))
            if call.hangup_at is None:
                call.hangup_at = now + call.stay
                self._schedule(call.hangup_at, "patience", call)
            self._join(call, self.queues[exten], timeout, now)
            return True
        call.state = CallState.PARKED
        if call.hangup_at is None:
            call.hangup_at = now + call.stay
            self._schedule(call.hangup_at, "patience", call)
        self._newexten(chan, now, "Wait", "300")
        self._dispatch(now)
        return True

    def _leave_for_redirect(self, call: Call, chan: Channel, now: float) -> None:
        """A Redirect takes the caller out of where they are: a bridge (the agent's part ends), a queue, a
        transfer target's extension."""
        if call.state is CallState.TALKING and call.talking is not None:
            leg = call.talking
            self._bridge("BridgeLeave", now, call.bridge_id, 1, chan)
            self._complete(call, leg, now, "transfer")
            seg = self._segment(call)
            seg.outcome, seg.reason = "transferred", "redirect"
            call.transferred_from = leg.member.agent.name
            self._bridge("BridgeLeave", now, call.bridge_id, 0, leg.out)
            self._bridge("BridgeDestroy", now, call.bridge_id, 0)
            leg.out.bridge_id = chan.bridge_id = ""
            self._hangup_request(leg.dev or leg.out, now)
            self._hangup(leg.out, now)
            self._hangup(leg.dev, now)
            call.talking = None
            self._release(leg, now, wrapup=True)
        elif call.state is CallState.QUEUED:
            if call.ring is not None:
                self._drop_ring(call, now, no_answer=False)
            _, ts = self._leave_queue(call, now)
            seg = self._segment(call)
            seg.left_at, seg.outcome = ts, "unanswered"
        elif call.state is CallState.DIRECT:
            target = call.direct
            if target is not None:
                target.direct = None
            call.direct = None
            seg = self._segment(call)
            if seg.answered_at is not None:
                seg.completed_at = now
            else:
                seg.left_at, seg.outcome = now, "unanswered"

    def setvar(self, channel: str, variable: str, value: str, *, now: float) -> bool:
        chan = self.channels.get(channel)
        if chan is None:
            return False
        self._varset(chan, now, variable, value)
        return True

    def user_event(self, channel: str, name: str, fields: Iterable[tuple[str, str]], *, now: float) -> bool:
        """A dialplan UserEvent on a channel (the cti trace's CtiHold pattern)."""
        chan = self.channels.get(channel)
        if chan is None:
            return False
        self._user_event(chan, now, name, fields)
        return True

    def _user_event(self, chan: Channel, now: float, name: str, fields: Iterable[tuple[str, str]]) -> float:
        """``UserEvent(name,Key: value,...)``: the channel's block, ``UserEvent: name``, then the dialplan's own
        fields in their order, after the block's (``Uniqueid`` appears twice, as Asterisk sends it)."""
        ts = self._emit("UserEvent", "user,all", now, chan.snapshot(), UserEvent=name)
        self._events[-1].repeated = list(fields)  # encoded after the fields: the wire order
        return ts

    def take_sessions(self, clock: Callable[[], float], flush: Callable[[], None]) -> list[Coroutine[Any, Any, None]]:
        """Work off the pure path that calls started (CTI mode's FastAGI sessions); observe mode has none."""
        return []

    # ---- status lists -------------------------------------------------------------------------

    def core_show_channels(self, now: float, action_id: str | None) -> list[Message]:
        """CoreShowChannel items (no Privilege/Timestamp: list items are not broadcast events)."""
        out = []
        aid = {"ActionID": action_id} if action_id else {}
        for chan in self.channels.values():
            fields = {"Event": "CoreShowChannel", **aid, **chan.snapshot()}
            fields.update(
                Application=chan.application,
                ApplicationData=chan.application_data,
                Duration=chan.duration(now),
                BridgeId=chan.bridge_id,
            )
            out.append(Message(fields=fields))
        return out

    def device_states(self, action_id: str | None) -> list[Message]:
        """DeviceStateList items (``DeviceStateChange`` with the ActionID, no Privilege), as
        res_manager_devicestate.c prints them: the phones whose changes this engine sends (Local ones;
        a list of PJSIP states that no event ever updates would mislead a client)."""
        aid = {"ActionID": action_id} if action_id else {}
        return [Message(fields={"Event": "DeviceStateChange", **aid, "Device": p.state_interface,
                                "State": _DEVICE_STATE[DEVICE_INUSE if p.status != DEVICE_NOT_INUSE
                                                      else DEVICE_NOT_INUSE]})
                for p in self.phones if p.local]

    def queue_status(self, now: float, action_id: str | None, queue: str = "", member: str = "") -> list[Message]:
        """QueueParams, QueueMember and QueueEntry items as manager_queues_status() prints them."""
        aid = {"ActionID": action_id} if action_id else {}
        out = []
        for q in self.queues.values():
            if queue and queue.lower() != q.name.lower():
                continue
            done = q.completed
            out.append(Message(fields={
                "Event": "QueueParams",
                "Queue": q.name,
                "Max": "0",
                "Strategy": q.strategy,
                "Calls": str(len(q.waiting)),
                "Holdtime": str(int(q.hold_total / done)) if done else "0",
                "TalkTime": str(int(q.talk_total / done)) if done else "0",
                "Completed": str(done),
                "Abandoned": str(q.abandoned),
                "ServiceLevel": "0",
                "ServicelevelPerf": "0.0",
                "ServicelevelPerf2": "0.0",
                "Weight": "0",
                **aid,
            }))
            for m in q.members:
                if member and member not in (m.interface, m.agent.name):
                    continue
                out.append(Message(fields={
                    "Event": "QueueMember",
                    "Queue": q.name,
                    "Name": m.agent.name,
                    "Location": m.interface,
                    **self._member_state(m),
                    "Wrapuptime": str(int(self.config.wrapup_s)),
                    **aid,
                }))
            for pos, call in enumerate(q.waiting, 1):
                c = call.caller
                out.append(Message(fields={
                    "Event": "QueueEntry",
                    "Queue": q.name,
                    "Position": str(pos),
                    "Channel": c.name,
                    "Uniqueid": c.uniqueid,
                    "CallerIDNum": c.caller_num,
                    "CallerIDName": c.caller_name,
                    "ConnectedLineNum": c.connected_num,
                    "ConnectedLineName": c.connected_name,
                    "Wait": str(int(now - call.joined)),
                    "Priority": str(call.priority),
                    **aid,
                }))
        return out


class Simulator:
    """Ticks a :class:`Pbx` in real time and hands its events to ``listener``.

    The scripted API (``place_call``, ``pause`` ...) stamps the engine with the
    clock and delivers the resulting events at once, so tests see them in order.
    """

    def __init__(
        self,
        *,
        config: SimConfig,
        agents: Sequence[AgentConfig],
        callers: Sequence[Caller] = (),
        listener: Callable[[list[Message]], None] | None = None,
        clock: Callable[[], float] = time.time,
        random_arrivals: bool = True,
    ) -> None:
        self.config = config
        self.clock = clock
        self.listener = listener
        engine: type[Pbx] = Pbx
        if config.mode == "cti":
            from cti.sim.cti_mode import CtiPbx  # it builds on this module

            engine = CtiPbx
        self._sessions: set[asyncio.Task[None]] = set()
        self.pbx = engine(
            config=config,
            agents=agents,
            callers=callers,
            rng=random.Random(config.seed),
            now=clock(),
            random_arrivals=random_arrivals,
        )

    def _flush(self) -> None:
        events = self.pbx.take_events()
        if events and self.listener is not None:
            self.listener(events)
        self._start_sessions()

    def tick(self) -> None:
        events = self.pbx.advance(self.clock())
        if events and self.listener is not None:
            self.listener(events)
        self._start_sessions()

    def _start_sessions(self) -> None:
        """Start what the engine asked for off its pure path (CTI mode: a caller's FastAGI session); without a
        running loop (a test driving the engine by hand) it waits for the next tick in one."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for work in self.pbx.take_sessions(self.clock, self._flush):
            task = loop.create_task(work, name="sim-agi")
            self._sessions.add(task)
            task.add_done_callback(self._sessions.discard)

    async def run(self) -> None:
        """Tick until cancelled; owned by whoever starts it (the server's task group), and so are the FastAGI
        sessions it started: cancelled and awaited when it is."""
        log.info("sim.started", queues=list(self.pbx.queues), agents=len(self.pbx.phones),
                 style="local" if self.pbx.local else "pjsip", mode=self.config.mode)
        try:
            while True:
                try:
                    self.tick()
                except Exception:  # a bug in one tick must not stop the demo's PBX
                    log.exception("sim.tick_failed")
                await asyncio.sleep(self.config.tick_s)
        finally:
            sessions = list(self._sessions)
            for task in sessions:
                task.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)

    # scripted API ------------------------------------------------------------------------

    def place_call(
        self, number: str, name: str = "<unknown>", *, priority: int = 0, patience: float | None = None,
        overflow: bool | None = None,
    ) -> str:
        linkedid = self.pbx.place_call(number, name, now=self.clock(), priority=priority, patience=patience,
                                       overflow=overflow)
        self._flush()
        return linkedid

    def originate(self, number: str, name: str, *, action_id: str | None) -> str:
        linkedid = self.pbx.place_call(number, name, now=self.clock(), originate_action_id=action_id or "")
        self._flush()
        return linkedid

    def start_arrivals(self) -> None:
        self.pbx.start_arrivals(self.clock())

    def pause(self, agent: str, paused: bool = True, *, reason: str = "", queue: str | None = None) -> bool:
        ok = self.pbx.pause(agent, paused, now=self.clock(), reason=reason, queue=queue)
        self._flush()
        return ok

    def hangup(self, channel: str) -> bool:
        ok = self.pbx.hangup(channel, now=self.clock())
        self._flush()
        return ok

    def redirect(self, channel: str, context: str, exten: str, priority: int = 1) -> bool:
        ok = self.pbx.redirect(channel, context, exten, now=self.clock(), priority=priority)
        self._flush()
        return ok

    def setvar(self, channel: str, variable: str, value: str) -> bool:
        ok = self.pbx.setvar(channel, variable, value, now=self.clock())
        self._flush()
        return ok
