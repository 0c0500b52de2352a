"""The call model as a pure reducer: AMI messages in, domain events out.

No I/O and no clock of its own: time comes from each event's ``Timestamp``
(sent when the manager account has ``timestampevents``) or from the ``now`` the
caller passes. So the same code runs live, replays a capture, and is tested
with hypothesis.

Calls are keyed by ``Linkedid``: with Local channels, app_queue and transfers a
caller's call is many channels, and Asterisk gives all of them the Linkedid of
the channel that started it. A call ends when its last leg hangs up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from cti.ami.codec import Message
from cti.config import AgentConfig
from cti.model import events as ev
from cti.model.events import DomainEvent
from cti.model.state import Call, Leg, Member, Offer, Queue

__all__ = ["CallModel"]

log = structlog.get_logger(__name__)

_UNKNOWN = frozenset({"", "<unknown>", "unknown"})
_ENDED_KEEP = 2000  # ended calls remembered for late events (AgentComplete after Hangup)

Handler = Callable[["CallModel", Message, "float | None", list[DomainEvent]], None]


def _num(value: str | None) -> str | None:
    return None if value is None or value in _UNKNOWN else value


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


class CallModel:
    """Every live call, queue member and queue, as the AMI stream tells it."""

    def __init__(self, *, agents: Sequence[AgentConfig] = ()) -> None:
        self.calls: dict[str, Call] = {}
        self.ended: dict[str, Call] = {}
        self.members: dict[str, Member] = {}
        self.queues: dict[str, Queue] = {}
        self._leg_call: dict[str, str] = {}  # Uniqueid -> Linkedid
        self._suspects: set[str] = set()  # calls a live-link resync found without channels
        self._agents = list(agents)
        self._by_interface = {a.interface.lower(): a for a in agents}
        self._by_name = {a.name.lower(): a for a in agents} | {a.id.lower(): a for a in agents}
        self._by_extension = {a.extension: a for a in agents if a.extension}
        self.unknown_events = 0
        self.malformed = 0

    # --- entry points -------------------------------------------------------------------------

    def apply(self, msg: Message, now: float | None = None) -> list[DomainEvent]:
        """Fold one AMI message into the model; return what changed, in order."""
        name = msg.fields.get("Event")
        if name is None:
            return []
        handler = _HANDLERS.get(name)
        if handler is None:
            return []
        ts = msg.timestamp()
        if ts is None:
            ts = now
        out: list[DomainEvent] = []
        try:
            handler(self, msg, ts, out)
        except (KeyError, ValueError) as exc:
            self.malformed += 1
            log.warning("ami.event.malformed", ami_event=name, error=repr(exc))
        return out

    def resync(
        self, channels: Iterable[Message], queue_status: Iterable[Message], now: float, *, live_link: bool = False
    ) -> list[DomainEvent]:
        """Make the model agree with a fresh ``CoreShowChannels`` + ``QueueStatus``.

        After a (re)login, before the events that follow it: calls whose channels
        are all gone ended while we could not see; channels we never saw become
        calls; queue members and waiting callers are read again.

        ``live_link``: a periodic check on a connection that never dropped. Events
        queued behind the snapshot are not applied yet, so it only ends a call that
        two checks in a row found gone (a Hangup lost for good) and refreshes members.
        """
        out: list[DomainEvent] = []
        live: dict[str, Message] = {}
        for msg in channels:
            uid = msg.fields.get("Uniqueid")
            if uid:
                live[uid] = msg
        if live_link:
            gone = {c.linkedid for c in self.calls.values() if not any(u in live for u in c.legs)}
            for linkedid in gone & self._suspects:
                call = self.calls[linkedid]
                call.legs.clear()
                call.seen_gap = True
                self._end(call, now, out, reason="gone_at_resync")
            self._suspects = gone - self._suspects
            for msg in queue_status:
                if msg.fields.get("Event") == "QueueMember":
                    self._member_status(msg, now, out)
            return out
        self._suspects = set()
        for call in list(self.calls.values()):
            for uid in [u for u in call.legs if u not in live]:
                del call.legs[uid]
                self._leg_call.pop(uid, None)
            if not call.legs:
                call.seen_gap = True
                self._end(call, now, out, reason="gone_at_resync")
        for uid, msg in live.items():
            if uid in self._leg_call:
                continue
            linkedid = msg.fields.get("Linkedid") or uid
            adopted = self.calls.get(linkedid)
            if adopted is None:
                duration = _duration(msg.fields.get("Duration"))
                adopted = self._new_call(linkedid, now - duration if duration is not None else now)
                adopted.seen_gap = True
            self._add_leg(adopted, msg)
        waiting: dict[str, set[str]] = {}
        for msg in queue_status:
            kind = msg.fields.get("Event")
            if kind == "QueueMember":
                self._member_status(msg, now, out)
            elif kind == "QueueEntry":
                self._queue_entry(msg, now, out)
                waiting.setdefault(msg.fields.get("Queue", ""), set()).add(
                    self._call_id(msg) or ""
                )
            elif kind == "QueueParams":
                self._queue(msg.fields.get("Queue", ""))
        for queue in self.queues.values():
            still = waiting.get(queue.name, set())
            for linkedid in [c for c in queue.waiting if c not in still]:
                del queue.waiting[linkedid]
                left = self.calls.get(linkedid)
                if left is not None and left.current_queue == queue.name:
                    left.current_queue = None
                    left.left_queue_at = now
                    left.seen_gap = True
                    self._answered_while_away(left, live, now, out)
        return out

    def _answered_while_away(self, call: Call, live: dict[str, Message], now: float,
                             out: list[DomainEvent]) -> None:
        """A caller who left the queue during the outage and is now bridged was answered.

        The agent is the one whose interface names a bridged leg's channel
        (``PJSIP/1001`` -> ``PJSIP/1001-0000002b``); the answer time is unknown, so now.
        """
        bridged = [live[uid] for uid in call.legs if uid in live and live[uid].fields.get("BridgeId")]
        if not bridged:
            return
        call.answered_at = now
        for msg in bridged:
            channel = msg.fields.get("Channel", "")
            for agent in self._agents:
                iface = agent.interface.removesuffix("/n")
                if channel.startswith(iface + "-"):
                    call.agent, call.agent_id, call.agent_interface = agent.name, agent.id, agent.interface
                    self._member(agent.interface, agent.name).call = call.linkedid
                    break
        log.info("call.answered", linkedid=call.linkedid, caller=call.caller_num, agent=call.agent,
                 while_disconnected=True)
        self._emit_call(out, ev.CALL_ANSWERED, call, now, call.agent_id, while_disconnected=True)

    # --- lookups ------------------------------------------------------------------------------

    def agent_for(self, interface: str, member_name: str | None) -> AgentConfig | None:
        """The configured agent behind a queue member, by interface, state interface or name."""
        key = interface.lower()
        agent = self._by_interface.get(key)
        if agent is None:
            member = self.members.get(key)
            if member is not None and member.state_interface:
                agent = self._by_interface.get(member.state_interface.lower())
        if agent is None and key.endswith("/n"):
            agent = self._by_interface.get(key[:-2])
        if agent is None and key.startswith("local/") and "@" in key:
            # FreePBX-style members: Local/1001@from-queue/n rings extension 1001.
            agent = self._by_extension.get(key[6 : key.index("@")])
        if agent is None and member_name:
            agent = self._by_name.get(member_name.lower())
        return agent

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": [c.snapshot() for c in self.calls.values()],
            "members": [m.snapshot() for m in self.members.values()],
            "queues": [q.snapshot() for q in self.queues.values()],
        }

    # --- helpers ------------------------------------------------------------------------------

    def _call_id(self, msg: Message) -> str | None:
        f = msg.fields
        return f.get("Linkedid") or self._leg_call.get(f.get("Uniqueid", ""))

    def _new_call(self, linkedid: str, ts: float | None) -> Call:
        call = Call(linkedid=linkedid, arrived_at=ts)
        self.calls[linkedid] = call
        return call

    def _call_for(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> Call | None:
        """The live call an event belongs to, created if we first meet it mid-life."""
        linkedid = self._call_id(msg)
        if not linkedid:
            return None
        call = self.calls.get(linkedid)
        if call is None:
            if linkedid in self.ended:
                return None
            call = self._new_call(linkedid, ts)
            call.seen_gap = True
            out.append(DomainEvent(ev.CALL_ARRIVED, linkedid, ts, call.snapshot()))
        uid = msg.fields.get("Uniqueid")
        if uid and uid not in call.legs and "Channel" in msg.fields:
            self._add_leg(call, msg)
        return call

    def _add_leg(self, call: Call, msg: Message) -> Leg:
        f = msg.fields
        leg = Leg(
            uniqueid=f["Uniqueid"],
            channel=f.get("Channel", ""),
            caller_num=_num(f.get("CallerIDNum")),
            caller_name=_num(f.get("CallerIDName")),
        )
        call.legs[leg.uniqueid] = leg
        self._leg_call[leg.uniqueid] = call.linkedid
        if leg.uniqueid == call.linkedid and leg.caller_num and call.caller_num is None:
            call.caller_num, call.caller_name = leg.caller_num, leg.caller_name
        return leg

    def _queue(self, name: str) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = Queue(name)
        return queue

    def _member(self, interface: str, name: str | None) -> Member:
        key = interface.lower()
        member = self.members.get(key)
        if member is None:
            agent = self.agent_for(interface, name)
            member = Member(interface=interface, name=name or interface, agent_id=agent.id if agent else None)
            self.members[key] = member
        elif name and member.name != name:
            member.name = name
        return member

    def _emit_call(
        self, out: list[DomainEvent], kind: str, call: Call, ts: float | None,
        agent: str | None = None, **extra: Any,
    ) -> None:
        data = call.snapshot()
        if extra:
            data.update(extra)
        out.append(DomainEvent(kind, call.linkedid, ts, data, agent))

    def _withdraw_offers(self, call: Call, ts: float | None, out: list[DomainEvent], reason: str,
                         keep: str | None = None) -> None:
        for key in [k for k in call.offers if k != keep]:
            offer = call.offers.pop(key)
            self._emit_call(out, ev.CALL_OFFER_WITHDRAWN, call, ts, offer.agent_id, reason=reason)

    def _leave_queue(self, call: Call, queue_name: str | None, ts: float | None) -> None:
        if queue_name:
            queue = self._queue(queue_name)
            pos = queue.waiting.pop(call.linkedid, None)
            if pos is not None:
                self._shift_positions(queue, pos + 1, -1)
        if call.current_queue == queue_name:
            call.current_queue = None
        call.left_queue_at = ts
        call.position = None

    def _shift_positions(self, queue: Queue, start: int, delta: int) -> None:
        """app_queue reports a position only to the caller who joins or leaves; the others move."""
        for other, p in queue.waiting.items():
            if p >= start:
                queue.waiting[other] = p + delta
                waiting = self.calls.get(other)
                if waiting is not None:
                    waiting.position = p + delta

    def _end(self, call: Call, ts: float | None, out: list[DomainEvent], reason: str = "hangup") -> None:
        if call.ended:
            return
        call.ended = True
        call.ended_at = ts
        self._withdraw_offers(call, ts, out, "call_ended")
        if call.current_queue:
            queue = self.queues.get(call.current_queue)
            if queue is not None:
                queue.waiting.pop(call.linkedid, None)
        outcome = call.outcome
        if call.queue is not None:
            q = self._queue(call.queue)
            if outcome == "answered":
                q.answered += 1
            elif outcome == "abandoned":
                q.abandoned += 1
            elif outcome == "unanswered":
                q.unanswered += 1
        for uid in call.legs:
            self._leg_call.pop(uid, None)
        del self.calls[call.linkedid]
        self.ended[call.linkedid] = call
        if len(self.ended) > _ENDED_KEEP:
            del self.ended[next(iter(self.ended))]
        log.info(
            "call.ended", linkedid=call.linkedid, caller=call.caller_num, queue=call.queue,
            agent=call.agent, outcome=outcome, wait_s=call.wait_s, talk_s=call.talk_s, reason=reason,
        )
        self._emit_call(out, ev.CALL_ENDED, call, ts, call.agent_id, reason=reason)

    # --- channel events -----------------------------------------------------------------------

    def _on_newchannel(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        f = msg.fields
        uid = f["Uniqueid"]
        linkedid = f.get("Linkedid") or uid
        call = self.calls.get(linkedid)
        if call is None:
            call = self._new_call(linkedid, ts)
            self._add_leg(call, msg)
            log.info("call.arrived", linkedid=linkedid, channel=f.get("Channel"), caller=call.caller_num)
            self._emit_call(out, ev.CALL_ARRIVED, call, ts)
        else:
            self._add_leg(call, msg)

    def _on_callerid(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        call = self._call_for(msg, ts, out)
        if call is None:
            return
        leg = call.legs.get(msg.fields.get("Uniqueid", ""))
        if leg is None:
            return
        num, name = _num(msg.fields.get("CallerIDNum")), _num(msg.fields.get("CallerIDName"))
        leg.caller_num, leg.caller_name = num or leg.caller_num, name or leg.caller_name
        if leg.uniqueid == call.linkedid and call.queued_at is None and leg.caller_num:
            call.caller_num, call.caller_name = leg.caller_num, leg.caller_name

    def _on_hangup(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        uid = msg.fields.get("Uniqueid", "")
        linkedid = self._leg_call.pop(uid, None) or msg.fields.get("Linkedid")
        call = self.calls.get(linkedid or "")
        if call is None:
            return
        call.legs.pop(uid, None)
        if not call.legs:
            self._end(call, ts, out)

    def _on_varset(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        var = msg.fields.get("Variable", "")
        if not var.startswith("CTI_"):
            return
        call = self._call_for(msg, ts, out)
        if call is not None:
            call.vars[var] = msg.fields.get("Value", "")

    # --- app_queue events ---------------------------------------------------------------------

    def _on_join(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        call = self._call_for(msg, ts, out)
        if call is None:
            return
        f = msg.fields
        queue = self._queue(f["Queue"])
        position = _int(f.get("Position"))
        if position is not None:
            self._shift_positions(queue, position, +1)
        queue.waiting[call.linkedid] = position or len(queue.waiting) + 1
        if call.queue is None:
            call.queue = queue.name
            call.queued_at = ts
        call.current_queue = queue.name
        call.position = position
        call.left_queue_at = None
        num = _num(f.get("CallerIDNum"))
        if num:
            call.caller_num, call.caller_name = num, _num(f.get("CallerIDName")) or call.caller_name
        log.info("call.queued", linkedid=call.linkedid, caller=call.caller_num, queue=queue.name,
                 position=position)
        self._emit_call(out, ev.CALL_QUEUED, call, ts, count=_int(f.get("Count")))

    def _member_event(
        self, msg: Message, ts: float | None, out: list[DomainEvent]
    ) -> tuple[Call, str, str, AgentConfig | None] | None:
        """The call, member interface, member name and configured agent an AgentXxx event names."""
        call = self._call_for(msg, ts, out)
        if call is None:
            return None
        interface, name = msg.fields["Interface"], msg.fields.get("MemberName", "")
        return call, interface, name, self.agent_for(interface, name)

    def _on_agent_called(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        found = self._member_event(msg, ts, out)
        if found is None:
            return
        call, interface, name, agent = found
        f = msg.fields
        call.offers[interface.lower()] = Offer(interface, name, agent.id if agent else None, f.get("Queue", ""), ts)
        if call.offered_at is None:
            call.offered_at = ts
        wait = round(ts - call.queued_at, 3) if ts is not None and call.queued_at is not None else None
        log.info("call.offered", linkedid=call.linkedid, caller=call.caller_num, queue=f.get("Queue"),
                 member=name, agent_id=agent.id if agent else None)
        if agent is None:
            log.warning("agent.unknown", interface=interface, member=name, linkedid=call.linkedid,
                        hint="add the agent to config agents[] to give them screen pops")
        self._emit_call(out, ev.CALL_OFFERED, call, ts, agent.id if agent else None, offered_queue=f.get("Queue"),
                        member=name, wait_so_far_s=wait)

    def _on_ring_no_answer(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        call = self._call_for(msg, ts, out)
        if call is None:
            return
        offer = call.offers.pop(msg.fields["Interface"].lower(), None)
        if offer is not None:
            log.info("call.offer_withdrawn", linkedid=call.linkedid, member=offer.member_name,
                     reason="ring_no_answer")
            self._emit_call(out, ev.CALL_OFFER_WITHDRAWN, call, ts, offer.agent_id, reason="ring_no_answer")

    def _on_connect(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        found = self._member_event(msg, ts, out)
        if found is None:
            return
        call, interface, name, agent = found
        f = msg.fields
        call.answered_at = ts
        call.agent, call.agent_interface = name or interface, interface
        call.agent_id = agent.id if agent else None
        call.hold_time = _float(f.get("HoldTime"))
        self._leave_queue(call, f.get("Queue") or call.current_queue, ts)
        member = self._member(interface, name)
        member.call = call.linkedid
        self._withdraw_offers(call, ts, out, "answered_elsewhere", keep=interface.lower())
        call.offers.clear()
        log.info("call.answered", linkedid=call.linkedid, caller=call.caller_num, queue=f.get("Queue"),
                 agent=call.agent, hold_s=call.hold_time)
        self._emit_call(out, ev.CALL_ANSWERED, call, ts, call.agent_id)

    def _on_complete(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        f = msg.fields
        member = self._member(f["Interface"], f.get("MemberName"))
        linkedid = self._call_id(msg) or member.call
        member.call = None
        call = self.calls.get(linkedid or "") or self.ended.get(linkedid or "")
        if call is None:
            return
        if call.completed_at is None:
            call.completed_at = ts
        call.talk_time = _float(f.get("TalkTime"))
        if call.hold_time is None:
            call.hold_time = _float(f.get("HoldTime"))

    def _on_leave(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        call = self._call_for(msg, ts, out)
        if call is None:
            return
        self._leave_queue(call, msg.fields.get("Queue"), ts)

    def _on_abandon(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        call = self._call_for(msg, ts, out) or self.ended.get(self._call_id(msg) or "")
        if call is None or call.answered_at is not None:
            return
        call.abandoned = True
        call.hold_time = _float(msg.fields.get("HoldTime"))
        self._leave_queue(call, msg.fields.get("Queue"), ts)
        self._withdraw_offers(call, ts, out, "caller_abandoned")
        log.info("call.abandoned", linkedid=call.linkedid, caller=call.caller_num,
                 queue=msg.fields.get("Queue"), hold_s=call.hold_time)
        self._emit_call(out, ev.CALL_LEFT_QUEUE, call, ts, reason="abandoned")

    def _queue_entry(self, msg: Message, now: float, out: list[DomainEvent]) -> None:
        call = self._call_for(msg, now, out)
        if call is None:
            return
        f = msg.fields
        queue = self._queue(f.get("Queue", ""))
        position = _int(f.get("Position")) or len(queue.waiting) + 1
        queue.waiting[call.linkedid] = position
        call.position = position
        call.current_queue = queue.name
        if call.queue is None:
            call.queue = queue.name
            wait = _float(f.get("Wait"))
            call.queued_at = now - wait if wait is not None else now
        num = _num(f.get("CallerIDNum"))
        if num and call.caller_num is None:
            call.caller_num, call.caller_name = num, _num(f.get("CallerIDName"))

    # --- queue members ------------------------------------------------------------------------

    def _member_status(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        f = msg.fields
        interface = f.get("Interface") or f.get("Location")
        if not interface:
            raise KeyError("Interface")
        member = self._member(interface, f.get("MemberName") or f.get("Name"))
        before = member.snapshot()
        member.state_interface = f.get("StateInterface") or member.state_interface
        if member.agent_id is None:
            agent = self.agent_for(interface, member.name)
            member.agent_id = agent.id if agent else None
        status = _int(f.get("Status"))
        if status is not None:
            member.status = status
        if "Paused" in f:
            member.paused = f["Paused"] == "1"
            member.paused_reason = f.get("PausedReason", "")
        taken = _int(f.get("CallsTaken"))
        if taken is not None:
            member.calls_taken = taken
        if "Queue" in f:
            member.queues.add(f["Queue"])
        after = member.snapshot()
        if after != before and member.agent_id:
            out.append(DomainEvent(ev.AGENT_STATE, None, ts, after, member.agent_id))

    def _on_member_removed(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        member = self.members.get(msg.fields.get("Interface", "").lower())
        if member is not None:
            member.queues.discard(msg.fields.get("Queue", ""))
            if member.agent_id:
                out.append(DomainEvent(ev.AGENT_STATE, None, ts, member.snapshot(), member.agent_id))


def _duration(value: str | None) -> float | None:
    """CoreShowChannel's ``Duration: HH:MM:SS``."""
    if not value:
        return None
    try:
        h, m, s = (int(p) for p in value.split(":"))
    except ValueError:
        return None
    return float(h * 3600 + m * 60 + s)


_HANDLERS: dict[str, Handler] = {
    "Newchannel": CallModel._on_newchannel,
    "NewCallerid": CallModel._on_callerid,
    "Hangup": CallModel._on_hangup,
    "VarSet": CallModel._on_varset,
    "QueueCallerJoin": CallModel._on_join,
    "QueueCallerLeave": CallModel._on_leave,
    "QueueCallerAbandon": CallModel._on_abandon,
    "AgentCalled": CallModel._on_agent_called,
    "AgentRingNoAnswer": CallModel._on_ring_no_answer,
    "AgentConnect": CallModel._on_connect,
    "AgentComplete": CallModel._on_complete,
    "QueueMemberStatus": CallModel._member_status,
    "QueueMemberAdded": CallModel._member_status,
    "QueueMemberPause": CallModel._member_status,
    "QueueMemberPaused": CallModel._member_status,
    "QueueMemberRemoved": CallModel._on_member_removed,
}
