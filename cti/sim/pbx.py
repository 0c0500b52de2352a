"""The simulated PBX: one app_queue queue, PJSIP trunk callers and PJSIP agents.

:class:`Pbx` is pure: it is given the time (``now``) and a seeded
``random.Random``, and returns the AMI event messages its state changes
produce, so the same seed and the same tick times give the same events and
tests can drive it without sockets or sleeping. Work is kept on a timer heap
and run in time order, so random draws happen in the same order whatever the
tick rate. :class:`Simulator` is the thin asyncio driver that ticks it in real
time and hands the events to a listener (the AMI server).
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import structlog

from cti.ami.codec import Message
from cti.config import AgentConfig, SimConfig
from cti.sim.channels import Channel, hangup_cause_text

__all__ = ["Call", "CallState", "Caller", "Member", "Pbx", "Simulator"]

log = structlog.get_logger(__name__)

VIP_PRIORITY = 10
INBOUND_CONTEXT = "from-trunk"
AGENT_CONTEXT = "from-internal"
PARKED_CONTEXT = "cti-hold"

# Device states as QueueMemberStatus reports them (include/asterisk/devicestate.h).
DEVICE_NOT_INUSE = 1
DEVICE_INUSE = 2
DEVICE_RINGING = 6

_BRIDGE_FIELDS = {
    "BridgeType": "basic",
    "BridgeTechnology": "simple_bridge",
    "BridgeCreator": "<unknown>",
    "BridgeName": "<unknown>",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """Someone who may ring in: the demo passes its customer directory, some of them VIPs."""

    number: str
    name: str = "<unknown>"
    vip: bool = False


class CallState(Enum):
    QUEUED = "queued"  # waiting in the queue (possibly ringing an agent)
    TALKING = "talking"
    PARKED = "parked"  # redirected out of the queue by a client
    ENDED = "ended"


@dataclass(slots=True, kw_only=True, eq=False)  # identity: members and calls are entities
class Member:
    """A static queue member (one per configured agent)."""

    agent: AgentConfig
    login_time: int
    paused: bool = False
    paused_reason: str = ""
    last_pause: int = 0
    calls_taken: int = 0
    last_call: int = 0
    last_call_exact: float = 0.0  # leastrecent ordering needs sub-second precision
    status: int = DEVICE_NOT_INUSE
    in_call: bool = False
    wrapup_until: float = 0.0
    call: Call | None = None  # the call ringing or talking to this member

    @property
    def interface(self) -> str:
        return self.agent.interface


@dataclass(slots=True, kw_only=True, eq=False)
class Call:
    """One inbound call: the trunk channel and, while offered or answered, an agent leg."""

    linkedid: str
    caller: Channel
    priority: int
    seq: int
    joined: float
    original_position: int = 0
    state: CallState = CallState.QUEUED
    member: Member | None = None
    agent_leg: Channel | None = None
    ring_started: float = 0.0
    attempt: int = 0  # invalidates timers of earlier ring attempts
    connected: float = 0.0
    bridge_id: str = ""
    blocked: dict[str, float] = field(default_factory=dict)  # interface -> not before (retry)
    originate_action_id: str | None = None


@dataclass(order=True, slots=True)
class _Timer:
    at: float
    seq: int
    kind: str = field(compare=False)
    call: Call | None = field(compare=False, default=None)
    attempt: int = field(compare=False, default=0)


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
    ) -> None:
        self.config = config
        self.queue = config.queue
        self.rng = rng
        self.start = now
        self.callers = list(callers)
        self.members = [Member(agent=a, login_time=int(now)) for a in agents]
        self.channels: dict[str, Channel] = {}
        self.calls: dict[str, Call] = {}  # linkedid -> live call
        self.waiting: list[Call] = []  # queue order: priority desc, then arrival
        self.completed = 0
        self.abandoned = 0
        self._events: list[Message] = []
        self._timers: list[_Timer] = []
        self._timer_seq = 0
        self._call_seq = 0
        self._chan_counter = rng.randrange(0x10, 0x100)
        self._uid_counter = rng.randrange(50, 500)
        self._last_ts = 0.0
        self._talk_total = 0.0
        self._hold_total = 0.0
        self._arrivals = False
        if random_arrivals:
            self.start_arrivals(now)

    def start_arrivals(self, now: float) -> None:
        """Start the Poisson arrival process (once; a no-op at calls_per_minute 0)."""
        if not self._arrivals and self.config.calls_per_minute > 0:
            self._arrivals = True
            self._schedule(now + self._next_arrival(), "arrival")

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

    def _schedule(self, at: float, kind: str, call: Call | None = None, attempt: int = 0) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, _Timer(at, self._timer_seq, kind, call, attempt))

    def _next_arrival(self) -> float:
        return self.rng.expovariate(self.config.calls_per_minute / 60.0)

    def _fire(self, timer: _Timer) -> None:
        t, call = timer.at, timer.call
        if timer.kind == "arrival":
            self._random_arrival(t)
            self._schedule(t + self._next_arrival(), "arrival")
        elif timer.kind == "dispatch":
            self._dispatch(t)
        elif call is None or call.state is CallState.ENDED:
            return
        elif timer.kind == "patience":
            if call.state is CallState.QUEUED:
                self._abandon(call, t)
            elif call.state is CallState.PARKED:
                self._hangup_parked(call, t)
        elif timer.kind == "answer" and timer.attempt == call.attempt and call.member and not call.connected:
            self._connect(call, t)
        elif timer.kind == "noanswer" and timer.attempt == call.attempt and call.member and not call.connected:
            self._ring_no_answer(call, t)
        elif timer.kind == "talk_end" and timer.attempt == call.attempt and call.state is CallState.TALKING:
            self._complete(call, t, reason="agent")

    # ---- ids and events ---------------------------------------------------------------------

    def _new_channel(self, prefix: str, *, now: float, linkedid: str | None, **kw: object) -> Channel:
        self._chan_counter += 1
        self._uid_counter += 1
        uid = f"{int(now)}.{self._uid_counter}"
        chan = Channel(
            name=f"{prefix}-{self._chan_counter:08x}",
            uniqueid=uid,
            linkedid=linkedid or uid,
            created=now,
            **kw,  # type: ignore[arg-type]
        )
        self.channels[chan.name] = chan
        return chan

    def _emit(self, event: str, privilege: str, now: float, *blocks: dict[str, str], **extra: str) -> None:
        ts = max(now, self._last_ts + 0.000001)
        self._last_ts = ts
        fields = {"Event": event, "Privilege": privilege, "Timestamp": f"{ts:.6f}"}
        for block in blocks:
            fields.update(block)
        fields.update(extra)
        self._events.append(Message(fields=fields))

    def _chan_event(self, event: str, chan: Channel, now: float, privilege: str = "call,all", **extra: str) -> None:
        self._emit(event, privilege, now, chan.snapshot(), **extra)

    def _newexten(self, chan: Channel, now: float, app: str, data: str = "") -> None:
        chan.application, chan.application_data = app, data
        self._chan_event("Newexten", chan, now, "dialplan,all", Extension=chan.exten, Application=app, AppData=data)

    def _varset(self, chan: Channel, now: float, name: str, value: str) -> None:
        self._chan_event("VarSet", chan, now, "dialplan,all", Variable=name, Value=value)

    def _newstate(self, chan: Channel, state: int, now: float) -> None:
        chan.state = state
        self._chan_event("Newstate", chan, now)

    def _hangup(self, chan: Channel, now: float, cause: int = 16, *, request: bool = False) -> None:
        if request:
            self._chan_event("HangupRequest", chan, now, Cause=str(cause))
        self._chan_event("Hangup", chan, now, **{"Cause": str(cause), "Cause-txt": hangup_cause_text(cause)})
        self.channels.pop(chan.name, None)

    def _member_state(self, m: Member) -> dict[str, str]:
        """The member's state as app_queue reports it in QueueMemberStatus and QueueStatus alike."""
        return {
            "StateInterface": m.interface,
            "Membership": "static",
            "Penalty": "0",
            "CallsTaken": str(m.calls_taken),
            "LastCall": str(m.last_call),
            "LastPause": str(m.last_pause),
            "LoginTime": str(m.login_time),
            "InCall": "1" if m.in_call else "0",
            "Status": str(m.status),
            "Paused": "1" if m.paused else "0",
            "PausedReason": m.paused_reason,
        }

    def _member_fields(self, m: Member) -> dict[str, str]:
        """queue_member_blob_create() in app_queue.c: QueueMemberStatus / QueueMemberPause body."""
        return {
            "Queue": self.queue,
            "MemberName": m.agent.name,
            "Interface": m.interface,
            **self._member_state(m),
            "Ringinuse": "0",
            "Wrapuptime": str(int(self.config.wrapup_s)),
        }

    def _member_status(self, m: Member, now: float, status: int, *, in_call: bool | None = None) -> None:
        m.status = status
        if in_call is not None:
            m.in_call = in_call
        self._emit("QueueMemberStatus", "agent,all", now, self._member_fields(m))

    def _bridge(self, event: str, now: float, bridge_id: str, count: int, chan: Channel | None = None) -> None:
        blocks = [{"BridgeUniqueid": bridge_id, **_BRIDGE_FIELDS, "BridgeNumChannels": str(count)}]
        blocks[0]["BridgeVideoSourceMode"] = "none"
        if chan is not None:
            blocks.append(chan.snapshot())
        self._emit(event, "call,all", now, *blocks)

    def _queue_event(self, event: str, call: Call, now: float, **extra: str) -> None:
        self._emit(event, "agent,all", now, call.caller.snapshot(), Queue=self.queue, **extra)

    def _agent_event(self, event: str, call: Call, now: float, **extra: str) -> None:
        assert call.member is not None and call.agent_leg is not None
        self._emit(
            event,
            "agent,all",
            now,
            call.caller.snapshot(),
            call.agent_leg.snapshot("Dest"),
            Queue=self.queue,
            Interface=call.member.interface,
            MemberName=call.member.agent.name,
            **extra,
        )

    def _dial_event(self, event: str, call: Call, now: float, **extra: str) -> None:
        assert call.agent_leg is not None
        self._emit(event, "call,all", now, call.caller.snapshot(), call.agent_leg.snapshot("Dest"), **extra)

    # ---- callers ----------------------------------------------------------------------------

    def _random_arrival(self, now: float) -> None:
        vips = [c for c in self.callers if c.vip]
        known = [c for c in self.callers if not c.vip]
        roll = self.rng.random()
        if vips and roll < self.config.vip_share:
            caller = self.rng.choice(vips)
        elif known and self.rng.random() < 0.6:
            caller = self.rng.choice(known)
        else:
            caller = Caller(number=f"139{self.rng.randrange(10**8):08d}")
        self.place_call(caller.number, caller.name, now=now, priority=VIP_PRIORITY if caller.vip else 0)

    def place_call(
        self,
        number: str,
        name: str = "<unknown>",
        *,
        now: float,
        priority: int = 0,
        patience: float | None = None,
        originate_action_id: str | None = None,
    ) -> str:
        """A caller rings in on the trunk and joins the queue; returns the call's Linkedid."""
        name = name or "<unknown>"
        chan = self._new_channel(
            "PJSIP/trunk",
            now=now,
            linkedid=None,
            state=4,
            caller_num=number,
            caller_name=name,
            context=INBOUND_CONTEXT,
            exten="s",
        )
        self._chan_event("Newchannel", chan, now)
        self._newexten(chan, now, "Answer")
        self._newstate(chan, 6, now)
        if originate_action_id is not None:
            self._emit(
                "OriginateResponse",
                "call,all",
                now,
                ActionID=originate_action_id,
                Response="Success",
                Channel=chan.name,
                Context=chan.context,
                Exten=chan.exten,
                Reason="4",
                Uniqueid=chan.uniqueid,
                CallerIDNum=number,
                CallerIDName=name,
            )
        chan.priority = 2
        self._newexten(chan, now, "Set", f"QUEUE_PRIO={priority}")
        self._varset(chan, now, "QUEUE_PRIO", str(priority))
        self._call_seq += 1
        call = Call(linkedid=chan.linkedid, caller=chan, priority=priority, seq=self._call_seq, joined=now)
        self.calls[call.linkedid] = call
        if patience is None:
            patience = self.rng.expovariate(1.0 / self.config.mean_patience_s)
        self._schedule(now + patience, "patience", call)
        self._join_queue(call, now)
        return call.linkedid

    def _join_queue(self, call: Call, now: float) -> None:
        chan = call.caller
        chan.priority = 3
        self._newexten(chan, now, "Queue", f"{self.queue},,,,60")
        call.state = CallState.QUEUED
        call.joined = now
        pos = 0
        while pos < len(self.waiting) and self.waiting[pos].priority >= call.priority:
            pos += 1
        self.waiting.insert(pos, call)
        call.original_position = pos + 1
        self._queue_event("QueueCallerJoin", call, now, Position=str(pos + 1), Count=str(len(self.waiting)))
        self._dispatch(now)

    def _leave_queue(self, call: Call, now: float) -> None:
        pos = self.waiting.index(call) + 1
        self.waiting.remove(call)
        self._queue_event("QueueCallerLeave", call, now, Position=str(pos), Count=str(len(self.waiting)))

    # ---- agents -----------------------------------------------------------------------------

    def _free(self, m: Member, now: float) -> bool:
        return not m.paused and m.call is None and m.status == DEVICE_NOT_INUSE and m.wrapup_until <= now

    def _dispatch(self, now: float) -> None:
        """Offer waiting callers, in queue order, to free members (leastrecent, ringinuse=no)."""
        for call in list(self.waiting):
            if call.member is not None:
                continue
            free = [(m.last_call_exact, i) for i, m in enumerate(self.members)
                    if self._free(m, now) and call.blocked.get(m.interface, 0.0) <= now]
            if not free:  # a member that just missed this caller is retried by the timer _ring_no_answer set
                continue
            self._ring(call, self.members[min(free)[1]], now)

    def _ring(self, call: Call, m: Member, now: float) -> None:
        ext = m.interface.rsplit("/", 1)[-1]
        leg = self._new_channel(
            m.interface,
            now=now,
            linkedid=call.linkedid,
            state=0,
            context=AGENT_CONTEXT,
            exten="s",
        )
        self._chan_event("Newchannel", leg, now)
        leg.caller_num, leg.caller_name = call.caller.caller_num, call.caller.caller_name
        self._chan_event("NewCallerid", leg, now, **{"CID-CallingPres": "0 (Presentation Allowed, Not Screened)"})
        call.member, call.agent_leg = m, leg
        call.attempt += 1
        call.ring_started = now
        m.call = call
        self._agent_event("AgentCalled", call, now)
        self._dial_event("DialBegin", call, now, DialString=ext)
        self._newstate(leg, 5, now)
        self._dial_event("DialState", call, now, DialStatus="RINGING")
        self._member_status(m, now, DEVICE_RINGING)
        if self.rng.random() < self.config.no_answer_prob:
            self._schedule(now + self.config.ring_timeout_s, "noanswer", call, call.attempt)
        else:
            self._schedule(now + min(self.config.ring_s, self.config.ring_timeout_s), "answer", call, call.attempt)

    def _release(self, call: Call, now: float, *, wrapup: bool) -> None:
        m = call.member
        call.member = call.agent_leg = None
        if m is None:
            return
        m.call = None
        if wrapup:
            m.calls_taken += 1
            m.last_call, m.last_call_exact = int(now), now
            m.wrapup_until = now + self.config.wrapup_s
            self._schedule(m.wrapup_until, "dispatch")
        self._member_status(m, now, DEVICE_NOT_INUSE, in_call=False)

    def _stop_ringing(self, call: Call, now: float, status: str) -> None:
        leg = call.agent_leg
        assert leg is not None
        self._dial_event("DialEnd", call, now, DialStatus=status)
        self._hangup(leg, now, cause=0, request=True)
        self._release(call, now, wrapup=False)

    def _ring_no_answer(self, call: Call, now: float) -> None:
        assert call.member is not None
        interface = call.member.interface
        ring_ms = round((now - call.ring_started) * 1000)
        self._agent_event("AgentRingNoAnswer", call, now, RingTime=str(ring_ms))
        self._stop_ringing(call, now, "NOANSWER")
        call.blocked[interface] = now + self.config.retry_s
        self._schedule(now + self.config.retry_s, "dispatch")
        self._dispatch(now)

    def _connect(self, call: Call, now: float) -> None:
        m, leg = call.member, call.agent_leg
        assert m is not None and leg is not None
        leg.connected_num, leg.connected_name = call.caller.caller_num, call.caller.caller_name
        call.caller.connected_num, call.caller.connected_name = m.interface.rsplit("/", 1)[-1], m.agent.name
        self._newstate(leg, 6, now)
        self._dial_event("DialEnd", call, now, DialStatus="ANSWER")
        self._leave_queue(call, now)
        hold = int(now - call.joined)
        self._hold_total += now - call.joined
        self._agent_event("AgentConnect", call, now, HoldTime=str(hold), RingTime=str(int(now - call.ring_started)))
        call.state = CallState.TALKING
        call.connected = now
        call.bridge_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        leg.bridge_id = call.caller.bridge_id = call.bridge_id
        self._bridge("BridgeCreate", now, call.bridge_id, 0)
        self._bridge("BridgeEnter", now, call.bridge_id, 1, leg)
        self._bridge("BridgeEnter", now, call.bridge_id, 2, call.caller)
        leg.application, leg.application_data = "AppQueue", "(Outgoing Line)"
        self._member_status(m, now, DEVICE_INUSE, in_call=True)
        talk = self.rng.expovariate(1.0 / self.config.mean_talk_s)
        self._schedule(now + talk, "talk_end", call, call.attempt)

    def _complete(self, call: Call, now: float, *, reason: str) -> None:
        """End a bridged call; ``reason`` is AgentComplete's: agent, caller or transfer."""
        m, leg = call.member, call.agent_leg
        assert m is not None and leg is not None
        first, second = (leg, call.caller) if reason != "caller" else (call.caller, leg)
        self._chan_event("HangupRequest", first, now, Cause="16")
        self._bridge("BridgeLeave", now, call.bridge_id, 1, first)
        if reason != "caller":
            self._hangup(leg, now)
        self._agent_event(
            "AgentComplete",
            call,
            now,
            HoldTime=str(int(call.connected - call.joined)),
            TalkTime=str(int(now - call.connected)),
            Reason=reason,
        )
        self._talk_total += now - call.connected
        self.completed += 1
        self._bridge("BridgeLeave", now, call.bridge_id, 0, second)
        self._bridge("BridgeDestroy", now, call.bridge_id, 0)
        leg.bridge_id = call.caller.bridge_id = ""
        self._release(call, now, wrapup=True)
        if reason == "caller":
            self._hangup(call.caller, now)
            self._hangup(leg, now)
            self._end(call)
        elif reason == "transfer":
            call.state = CallState.PARKED
        else:
            self._hangup(call.caller, now)
            self._end(call)

    def _abandon(self, call: Call, now: float) -> None:
        """The caller gives up while queued: HangupRequest, QueueCallerAbandon, QueueCallerLeave, Hangup."""
        if call.member is not None:
            self._stop_ringing(call, now, "CANCEL")
        chan = call.caller
        self._chan_event("HangupRequest", chan, now, Cause="16")
        self._varset(chan, now, "ABANDONED", "TRUE")
        pos = self.waiting.index(call) + 1
        self._queue_event(
            "QueueCallerAbandon",
            call,
            now,
            Position=str(pos),
            OriginalPosition=str(call.original_position),
            HoldTime=str(int(now - call.joined)),
        )
        self._leave_queue(call, now)
        self.abandoned += 1
        self._hangup(chan, now)
        self._end(call)
        self._dispatch(now)

    def _hangup_parked(self, call: Call, now: float) -> None:
        self._hangup(call.caller, now, request=True)
        self._end(call)

    def _end(self, call: Call) -> None:
        call.state = CallState.ENDED
        self.calls.pop(call.linkedid, None)

    # ---- client controls ---------------------------------------------------------------------

    def member(self, key: str) -> Member | None:
        """A member by agent id, interface or name (case-insensitive)."""
        k = key.lower()
        for m in self.members:
            if k in (m.agent.id.lower(), m.interface.lower(), m.agent.name.lower()):
                return m
        return None

    def pause(self, key: str, paused: bool, *, now: float, reason: str = "") -> bool:
        """QueuePause: QueueMemberPause then QueueMemberStatus; False if no such member."""
        m = self.member(key)
        if m is None:
            return False
        m.paused = paused
        m.paused_reason = reason if paused else ""
        m.last_pause = int(now)
        self._emit("QueueMemberPause", "agent,all", now, self._member_fields(m))
        self._member_status(m, now, m.status)
        if not paused:
            self._dispatch(now)
        return True

    def _call_of(self, channel: str) -> tuple[Call, bool] | None:
        """The live call a channel belongs to and whether it is the caller's channel."""
        chan = self.channels.get(channel)
        if chan is None:
            return None
        call = self.calls.get(chan.linkedid)
        if call is None:
            return None
        return call, chan is call.caller

    def hangup(self, channel: str, *, now: float) -> bool:
        """AMI Hangup: end a channel with the events Asterisk would send; False if unknown."""
        found = self._call_of(channel)
        if found is None:
            chan = self.channels.get(channel)
            if chan is None:
                return False
            self._hangup(chan, now, request=True)
            return True
        call, is_caller = found
        if call.state is CallState.TALKING:
            self._complete(call, now, reason="caller" if is_caller else "agent")
        elif call.state is CallState.QUEUED:
            if is_caller:
                self._abandon(call, now)
            else:  # the agent rejects the ring: like a no-answer, the caller stays queued
                self._ring_no_answer(call, now)
        else:
            self._hangup_parked(call, now)
        return True

    def redirect(self, channel: str, context: str, exten: str, *, now: float, priority: int = 1) -> bool:
        """AMI Redirect: ``exten`` equal to the queue name (re)joins the queue, anything else parks."""
        chan = self.channels.get(channel)
        if chan is None:
            return False
        found = self._call_of(channel)
        if found is not None and found[1]:
            call = found[0]
            if call.state is CallState.TALKING:
                self._complete(call, now, reason="transfer")
            elif call.state is CallState.QUEUED:
                if call.member is not None:
                    self._stop_ringing(call, now, "CANCEL")
                self._leave_queue(call, now)
                call.state = CallState.PARKED
            chan.context, chan.exten, chan.priority = context, exten, priority
            if exten == self.queue:
                self._join_queue(call, now)
                return True
        else:
            chan.context, chan.exten, chan.priority = context, exten, priority
        self._newexten(chan, now, "Wait", "300")
        return True

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
        self._emit("UserEvent", "user,all", now, chan.snapshot(), UserEvent=name, **dict(fields))
        return True

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

    def queue_status(self, now: float, action_id: str | None, queue: str = "", member: str = "") -> list[Message]:
        """QueueParams, QueueMember and QueueEntry items as manager_queues_status() prints them."""
        if queue and queue.lower() != self.queue.lower():
            return []
        aid = {"ActionID": action_id} if action_id else {}
        done = self.completed
        out = [
            Message(
                fields={
                    "Event": "QueueParams",
                    "Queue": self.queue,
                    "Max": "0",
                    "Strategy": "leastrecent",
                    "Calls": str(len(self.waiting)),
                    "Holdtime": str(int(self._hold_total / done)) if done else "0",
                    "TalkTime": str(int(self._talk_total / done)) if done else "0",
                    "Completed": str(done),
                    "Abandoned": str(self.abandoned),
                    "ServiceLevel": "0",
                    "ServicelevelPerf": "0.0",
                    "ServicelevelPerf2": "0.0",
                    "Weight": "0",
                    **aid,
                }
            )
        ]
        for m in self.members:
            if member and member not in (m.interface, m.agent.name):
                continue
            out.append(
                Message(
                    fields={
                        "Event": "QueueMember",
                        "Queue": self.queue,
                        "Name": m.agent.name,
                        "Location": m.interface,
                        **self._member_state(m),
                        "Wrapuptime": str(int(self.config.wrapup_s)),
                        **aid,
                    }
                )
            )
        for pos, call in enumerate(self.waiting, 1):
            c = call.caller
            out.append(
                Message(
                    fields={
                        "Event": "QueueEntry",
                        "Queue": self.queue,
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
                    }
                )
            )
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
        self.pbx = Pbx(
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

    def tick(self) -> None:
        events = self.pbx.advance(self.clock())
        if events and self.listener is not None:
            self.listener(events)

    async def run(self) -> None:
        """Tick until cancelled; owned by whoever starts it (the server's task group)."""
        log.info("sim.started", queue=self.config.queue, agents=len(self.pbx.members))
        while True:
            try:
                self.tick()
            except Exception:  # a bug in one tick must not stop the demo's PBX
                log.exception("sim.tick_failed")
            await asyncio.sleep(self.config.tick_s)

    # scripted API ------------------------------------------------------------------------

    def place_call(
        self, number: str, name: str = "<unknown>", *, priority: int = 0, patience: float | None = None
    ) -> str:
        linkedid = self.pbx.place_call(number, name, now=self.clock(), priority=priority, patience=patience)
        self._flush()
        return linkedid

    def originate(self, number: str, name: str, *, action_id: str | None) -> str:
        linkedid = self.pbx.place_call(number, name, now=self.clock(), originate_action_id=action_id or "")
        self._flush()
        return linkedid

    def start_arrivals(self) -> None:
        self.pbx.start_arrivals(self.clock())

    def pause(self, agent: str, paused: bool = True, *, reason: str = "") -> bool:
        ok = self.pbx.pause(agent, paused, now=self.clock(), reason=reason)
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
