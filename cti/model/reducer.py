"""The call model as a pure reducer: AMI messages in, domain events out.

No I/O and no clock of its own: time comes from each event's ``Timestamp``
(sent when the manager account has ``timestampevents``) or from the ``now`` the
caller passes. So the same code runs live, replays a capture, and is tested
with hypothesis.

Calls are keyed by ``Linkedid``: with Local channels, app_queue and transfers a
caller's call is many channels, and Asterisk gives all of them the Linkedid of
the channel that started it. A call ends when its last leg hangs up. A leg we
know stays with its call even when a later event names another Linkedid (an
attended transfer folds the consult call's legs into the caller's call).

What happens to the caller is a list of segments (``cti.model.state``): queue
visits from app_queue's events, and direct hand-offs to an agent from
``BlindTransfer``/``AttendedTransfer`` and ``DialBegin``/``DialEnd`` to an
agent's device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import structlog

from cti.agents import AgentRegistry, device_of, interface_device
from cti.ami.codec import Message
from cti.config import AgentConfig
from cti.model import events as ev
from cti.model.events import DomainEvent
from cti.model.state import Call, Hold, Leg, Member, Membership, Offer, Outcome, Queue, Segment, Transfer

__all__ = ["CallModel"]

log = structlog.get_logger(__name__)

_UNKNOWN = frozenset({"", "<unknown>", "unknown"})
_ENDED_KEEP = 2000  # ended calls remembered for late events (AgentComplete after Hangup)
#: app_queue's QUEUESTATUS after a QueueCallerAbandon that was not the caller hanging up.
_LEFT_STATUSES = frozenset({"TIMEOUT", "LEAVEEMPTY", "LEAVEUNAVAIL", "FULL", "JOINEMPTY", "JOINUNAVAIL",
                            "WITHDRAW", "CONTINUE"})
#: DialEnd statuses of a direct ring, and what they mean for the segment.
_DIAL_FAILED = {"NOANSWER": "ring_no_answer", "BUSY": "busy", "CONGESTION": "busy", "CHANUNAVAIL": "unavailable"}

#: Timestamps outside [0, year 5138) or not finite (``nan``, ``inf``, ``1e400``) are refused.
_MAX_SECONDS = 1e11
#: A kind of bad value is logged the first time and then once per this many.
_LOG_EVERY = 1000

Handler = Callable[["CallModel", Message, "float | None", list[DomainEvent]], None]


class Target(NamedTuple):
    """An agent's phone a call may be handed to directly."""

    interface: str
    name: str
    agent_id: str | None
    device: str


def _num(value: str | None) -> str | None:
    return None if value is None or value in _UNKNOWN else value


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    """A duration app_queue sends (HoldTime, TalkTime): finite and not negative, else unknown."""
    try:
        number = float(value) if value else None
    except ValueError:
        return None
    return number if number is not None and 0.0 <= number < _MAX_SECONDS else None


class CallModel:
    """Every live call, queue member and queue, as the AMI stream tells it."""

    def __init__(self, *, agents: Sequence[AgentConfig] | AgentRegistry = ()) -> None:
        self.calls: dict[str, Call] = {}
        self.ended: dict[str, Call] = {}
        self.members: dict[str, Member] = {}
        self.queues: dict[str, Queue] = {}
        self.agents = agents if isinstance(agents, AgentRegistry) else AgentRegistry(agents)
        self._leg_call: dict[str, str] = {}  # Uniqueid -> Linkedid
        self._member_by_device: dict[str, Member] = {}
        self._suspects: set[str] = set()  # calls a live-link resync found without channels
        self._ringing_exten: set[str] = set()  # calls sent to an agent's extension, not yet answered
        self.unknown_events = 0
        self.malformed = 0
        self.bad_values: dict[str, int] = {}

    # --- entry points -------------------------------------------------------------------------

    def apply(self, msg: Message, now: float | None = None) -> list[DomainEvent]:
        """Fold one AMI message into the model; return what changed, in order."""
        name = msg.event  # from the text: an event no handler wants is never parsed
        if name is None:
            return []
        handler = _HANDLERS.get(name)
        if handler is None:
            return []
        # The two most frequent events rarely matter: decide that before parsing anything.
        if name == "VarSet":
            var = msg.get("Variable") or ""
            if var != "QUEUESTATUS" and not var.startswith("CTI_"):
                return []
        elif name == "Newexten" and not self._ringing_exten:
            return []
        ts = msg.timestamp()
        if ts is None:
            ts = now
        elif not 0.0 <= ts < _MAX_SECONDS:  # NaN fails this too
            self._bad_value("Timestamp", name, msg.get("Timestamp"))
            ts = now
        out: list[DomainEvent] = []
        try:
            handler(self, msg, ts, out)
        except (KeyError, ValueError) as exc:
            self.malformed += 1
            if self.malformed % _LOG_EVERY == 1:  # a flood of bad events must not become a flood of logs
                log.warning("ami.event.malformed", ami_event=name, error=repr(exc), seen=self.malformed)
        return out

    def restore(self, calls: Iterable[Call]) -> None:
        """Take back the live calls a previous run left (a restart, a standby taking over); the
        resync that follows the next login ends those that ended meanwhile and tells the agents."""
        for call in calls:
            if call.ended or call.linkedid in self.calls:
                continue
            self.calls[call.linkedid] = call
            for uid in call.legs:
                self._leg_call[uid] = call.linkedid
            if any(o.exten for o in call.offers.values()):
                self._ringing_exten.add(call.linkedid)
            talking = call.talking
            if talking is not None and talking.agent_interface:
                member = self._member(talking.agent_interface, talking.agent)
                member.call = member.last_call = call.linkedid
            if call.current_queue:
                queue = self._queue(call.current_queue)
                queue.waiting[call.linkedid] = call.position or len(queue.waiting) + 1

    def _bad_value(self, key: str, event: str, value: str | None) -> None:
        """Counted always, logged the first time and then once per ``_LOG_EVERY`` of a kind."""
        seen = self.bad_values[key] = self.bad_values.get(key, 0) + 1
        if seen % _LOG_EVERY == 1:
            log.warning("ami.bad_value", key=key, ami_event=event, value=(value or "")[:40], seen=seen,
                        action="ignored: the receive time is used")

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
            uid = msg.get("Uniqueid")
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
                if msg.get("Event") == "QueueMember":
                    self._member_status(msg, now, out)
            return out
        self._suspects = set()
        queue_status = list(queue_status)
        vanished = []
        for call in list(self.calls.values()):
            for uid in [u for u in call.legs if u not in live]:
                del call.legs[uid]
                self._leg_call.pop(uid, None)
            if not call.legs:
                vanished.append(call)
        self._answered_and_gone(vanished, queue_status)
        for call in vanished:
            call.seen_gap = True
            self._end(call, now, out, reason="gone_at_resync")
        for uid, msg in live.items():
            if uid in self._leg_call:
                continue
            linkedid = msg.get("Linkedid") or uid
            adopted = self.calls.get(linkedid)
            if adopted is None:
                duration = _duration(msg.get("Duration"))
                adopted = self._new_call(linkedid, now - duration if duration is not None else now)
                adopted.seen_gap = True
            self._add_leg(adopted, msg)
        waiting: dict[str, set[str]] = {}
        for msg in queue_status:
            kind = msg.get("Event")
            if kind == "QueueMember":
                self._member_status(msg, now, out)
            elif kind == "QueueEntry":
                self._queue_entry(msg, now, out)
                waiting.setdefault(msg.get("Queue", ""), set()).add(self._call_id(msg) or "")
            elif kind == "QueueParams":
                self._queue(msg.get("Queue", ""))
        for queue in self.queues.values():
            still = waiting.get(queue.name, set())
            for linkedid in [c for c in queue.waiting if c not in still]:
                del queue.waiting[linkedid]
                left = self.calls.get(linkedid)
                if left is not None and left.current_queue == queue.name:
                    left.current_queue = None
                    left.position = None
                    left.seen_gap = True
                    self._answered_while_away(left, live, now, out)
        self._stale_offers(live, now, out)
        self._ringing_now(live, now, out)
        # Every agent gets its truth after an outage, once: what they may have missed is in here.
        out[:] = [e for e in out if e.type != ev.AGENT_STATE]
        for member in self.members.values():
            if member.agent_id:
                member.mark(now)
                out.append(DomainEvent(ev.AGENT_STATE, None, now, {**member.snapshot(), "resync": True},
                                       member.agent_id))
        return out

    def _ringing_now(self, live: dict[str, Message], now: float, out: list[DomainEvent]) -> None:
        """A ring that started while we could not see (an outage, a restart): the agent's phone is a
        channel of the call in state Ringing. The agent gets the pop now, late rather than never."""
        for uid, msg in live.items():
            f = msg
            if f.get("ChannelState") != "5":
                continue
            call = self.calls.get(self._leg_call.get(uid, ""))
            target = self._target_for_device(device_of(f.get("Channel", ""))) if call is not None else None
            if call is None or target is None or target.interface.lower() in call.offers:
                continue
            if f.get("Application") == "AppQueue" and call.current_queue is not None:
                self._offer_from_queue(call, target, call.current_queue, now, out, while_disconnected=True)
            elif call.current_queue is None:
                self._offer_direct(call, target, now, out)

    def _stale_offers(self, live: dict[str, Message], now: float, out: list[DomainEvent]) -> None:
        """An offer whose ring ended while we could not see: no live channel of the call is
        that agent's phone any more (or the call left the queue it rang from)."""
        for call in self.calls.values():
            if not call.offers:
                continue
            devices = {device_of(m.fields.get("Channel", "")) for uid, m in live.items() if uid in call.legs}
            for key, offer in list(call.offers.items()):
                gone = offer.device not in devices or (offer.queue is not None and call.current_queue != offer.queue)
                if gone:
                    del call.offers[key]
                    self._emit_call(out, ev.CALL_OFFER_WITHDRAWN, call, now, offer.agent_id, reason="gone_at_resync")

    def _answered_and_gone(self, vanished: list[Call], queue_status: list[Message]) -> None:
        """Calls that were waiting when we lost sight and are gone now were answered, not abandoned,
        when app_queue counted calls taken for them: each member's ``CallsTaken`` rise in a queue,
        less the calls we knew they were on, goes to the callers who waited longest there."""
        rises: dict[tuple[str, str], int] = {}
        for msg in queue_status:
            f = msg
            interface, queue, taken = f.get("Interface") or f.get("Location"), f.get("Queue"), _int(f.get("CallsTaken"))
            member = self.members.get((interface or "").lower())
            known = member.queues.get(queue or "") if member is not None else None
            if member is not None and queue and known is not None and taken is not None and taken > known.calls_taken:
                rises[(member.interface.lower(), queue)] = taken - known.calls_taken
        if not rises:
            return
        for call in vanished:  # calls we knew were answered account for their agent's rise first
            for part in call.segments:
                known_key = ((part.agent_interface or "").lower(), part.queue or "")
                if part.talking and rises.get(known_key, 0) > 0:
                    rises[known_key] -= 1
        waiting = sorted((seg.joined_at or 0.0, call.linkedid, call, seg) for call in vanished
                         if (seg := call.current) is not None and seg.waiting and seg.queue is not None)
        for _, _, call, seg in waiting:
            found = next((k for k, n in rises.items() if k[1] == seg.queue and n > 0), None)
            if found is None:
                continue
            rises[found] -= 1
            member = self.members[found[0]]
            seg.outcome, seg.reason = "answered", "while_disconnected"
            seg.agent, seg.agent_id, seg.agent_interface = member.name, member.agent_id, member.interface
            seg.notified = True  # they were never told it was answered; nothing to clear but the ring
            self._leave_queue(call, found[1])
            self._queue(found[1]).answered += 1
            log.info("call.answered", linkedid=call.linkedid, caller=call.caller_num, agent=member.name,
                     while_disconnected=True, found_by="CallsTaken")

    def _answered_while_away(self, call: Call, live: dict[str, Message], now: float,
                             out: list[DomainEvent]) -> None:
        """A caller who left the queue during the outage and is now bridged was answered.

        The agent is the one whose device names a bridged leg's channel
        (``PJSIP/1001`` -> ``PJSIP/1001-0000002b``); the answer time is unknown, so now.
        """
        seg = call.current
        bridged = [live[uid] for uid in call.legs if uid in live and live[uid].fields.get("BridgeId")]
        if seg is None or not seg.waiting:
            return
        if not bridged:
            self._close_waiting(call, seg, now, out, outcome="unanswered", reason="left_while_disconnected")
            return
        seg.left_at = seg.answered_at = now
        seg.outcome = "answered"
        if seg.queue is not None:
            self._queue(seg.queue).answered += 1
        for msg in bridged:
            target = self._target_for_device(device_of(msg.get("Channel", "")))
            if target is not None:
                self._answer(call, seg, target, now)
                break
        log.info("call.answered", linkedid=call.linkedid, caller=call.caller_num, agent=seg.agent,
                 while_disconnected=True)
        self._emit_call(out, ev.CALL_ANSWERED, call, now, seg.agent_id, while_disconnected=True)

    # --- lookups ------------------------------------------------------------------------------

    def agent_for(self, interface: str, member_name: str | None) -> AgentConfig | None:
        """The configured agent behind a queue member, by interface, state interface or name."""
        member = self.members.get(interface.lower())
        return self.agents.by_interface(interface, member.state_interface if member else None, member_name)

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": [c.snapshot() for c in self.calls.values()],
            "members": [m.snapshot() for m in self.members.values()],
            "queues": [q.snapshot() for q in self.queues.values()],
        }

    def _target_for_device(self, device: str) -> Target | None:
        """The agent (configured, or a queue member we have seen) whose phone ``device`` is."""
        member = self._member_by_device.get(device)
        agent = self.agents.by_device(device)
        if member is None and agent is not None:
            member = self.members.get(agent.interface.lower())
        if member is not None:
            agent_id = member.agent_id or (agent.id if agent else None)
            return Target(member.interface, member.name, agent_id, device)
        if agent is not None:
            return Target(agent.interface, agent.name, agent.id, device)
        return None

    def _target_for_exten(self, context: str, exten: str) -> Target | None:
        """Who a blind transfer to ``exten@context`` rings: a Local member for exactly that
        extension, else the configured agent with that extension."""
        device = f"local/{exten}@{context}".lower()
        if device in self._member_by_device or self.agents.with_device(device) is not None:
            return self._target_for_device(device)
        agent = self.agents.by_extension(exten)
        if agent is not None:
            member = self.members.get(agent.interface.lower())
            return Target(agent.interface, member.name if member else agent.name, agent.id,
                          interface_device(agent.interface))
        prefix = f"local/{exten}@".lower()
        for dev, member in self._member_by_device.items():
            if dev.startswith(prefix):
                return Target(member.interface, member.name, member.agent_id, dev)
        return None

    # --- helpers ------------------------------------------------------------------------------

    def _call_id(self, msg: Message) -> str | None:
        f = msg
        return self._leg_call.get(f.get("Uniqueid", "")) or f.get("Linkedid")

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
        uid = msg.get("Uniqueid")
        if uid and uid not in call.legs and "Channel" in msg:
            self._add_leg(call, msg)
        return call

    def _add_leg(self, call: Call, msg: Message) -> Leg:
        f = msg
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
            self._member_by_device.setdefault(interface_device(key), member)
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
        if not call.offers:
            self._ringing_exten.discard(call.linkedid)

    def _open_segment(self, call: Call, queue: str | None, ts: float | None, leg: str | None,
                      position: int | None = None) -> Segment:
        """A new visit; a transfer still looking for its destination has found it."""
        seg = Segment(queue=queue, joined_at=ts, leg=leg, position=position)
        if call.transfer is not None:
            seg.transferred_from, seg.transferred_from_id = call.transfer.from_name, call.transfer.from_id
            call.transfer = None
            if queue is not None:
                self._queue(queue).transferred_in += 1
        call.segments.append(seg)
        return seg

    def _queue_segment(self, call: Call, queue: str | None) -> Segment | None:
        """The latest segment in ``queue`` (app_queue's events name it)."""
        for seg in reversed(call.segments):
            if seg.queue is not None and (queue is None or seg.queue == queue):
                return seg
        return None

    def _leave_queue(self, call: Call, queue_name: str | None) -> None:
        if queue_name:
            queue = self._queue(queue_name)
            pos = queue.waiting.pop(call.linkedid, None)
            if pos is not None:
                self._shift_positions(queue, pos + 1, -1)
        if call.current_queue == queue_name:
            call.current_queue = None
        call.position = None

    def _shift_positions(self, queue: Queue, start: int, delta: int) -> None:
        """app_queue reports a position only to the caller who joins or leaves; the others move."""
        for other, p in queue.waiting.items():
            if p >= start:
                queue.waiting[other] = p + delta
                waiting = self.calls.get(other)
                if waiting is not None:
                    waiting.position = p + delta

    def _close_waiting(self, call: Call, seg: Segment, ts: float | None, out: list[DomainEvent], *,
                       outcome: str, reason: str | None = None) -> None:
        """A waiting segment ends without an agent: the caller hung up, or app_queue let them go."""
        seg.left_pending = False
        if seg.left_at is None:
            seg.left_at = ts
        seg.outcome = "abandoned" if outcome == "abandoned" else "unanswered"
        seg.reason = reason
        if seg.queue is not None:
            q = self._queue(seg.queue)
            if seg.outcome == "abandoned":
                q.abandoned += 1
            else:
                q.unanswered += 1
            if call.current_queue == seg.queue:
                self._leave_queue(call, seg.queue)
        self._withdraw_offers(call, ts, out, "caller_abandoned" if seg.outcome == "abandoned" else "left_queue")
        log.info("call.left_queue", linkedid=call.linkedid, caller=call.caller_num, queue=seg.queue,
                 outcome=seg.outcome, reason=reason, wait_s=seg.wait_s)
        self._emit_call(out, ev.CALL_LEFT_QUEUE, call, ts, reason=seg.outcome if reason is None else reason,
                        left_queue=seg.queue)

    def _settle_pending(self, call: Call, ts: float | None, out: list[DomainEvent], *, hung_up: bool) -> None:
        """A ``QueueCallerAbandon`` is an abandon only if no ``QUEUESTATUS`` follows it."""
        seg = call.segments[-1] if call.segments else None
        if seg is not None and seg.left_pending:
            reason = None if hung_up or seg.queue is not None else "cancelled"
            self._close_waiting(call, seg, seg.left_at or ts, out, outcome="abandoned" if hung_up else "unanswered",
                                reason=reason)

    def _answer(self, call: Call, seg: Segment, target: Target, ts: float | None) -> None:
        seg.outcome = "answered"
        seg.answered_at = ts
        if seg.left_at is None:
            seg.left_at = ts
        seg.agent, seg.agent_id, seg.agent_interface = target.name, target.agent_id, target.interface
        member = self._member(target.interface, target.name)
        member.call = member.last_call = call.linkedid

    def _agent_done(self, call: Call, seg: Segment, ts: float | None, out: list[DomainEvent], reason: str) -> None:
        """The agent's part of the call is over: tell them once."""
        if seg.completed_at is None:
            seg.completed_at = ts
        if seg.agent_interface:
            member = self.members.get(seg.agent_interface.lower())
            if member is not None and member.call == call.linkedid:
                member.call = None
        if not seg.notified:
            seg.notified = True
            self._emit_call(out, ev.CALL_ENDED, call, ts, seg.agent_id, reason=reason, segment_agent=seg.agent)

    def _end(self, call: Call, ts: float | None, out: list[DomainEvent], reason: str = "hangup") -> None:
        if call.ended:
            return
        call.ended = True
        call.ended_at = ts
        self._ringing_exten.discard(call.linkedid)
        self._settle_pending(call, ts, out, hung_up=True)
        seg = call.current
        if seg is not None and seg.waiting:
            self._close_waiting(call, seg, ts, out, outcome="abandoned")
        self._end_hold(call, ts, "abandoned")
        self._withdraw_offers(call, ts, out, "call_ended")
        if call.current_queue:
            queue = self.queues.get(call.current_queue)
            if queue is not None:
                queue.waiting.pop(call.linkedid, None)
        for uid in call.legs:
            self._leg_call.pop(uid, None)
        del self.calls[call.linkedid]
        self.ended[call.linkedid] = call
        if len(self.ended) > _ENDED_KEEP:
            del self.ended[next(iter(self.ended))]
        for part in call.segments:
            if part.outcome == "answered" and not part.notified:
                self._agent_done(call, part, ts, out, reason)
        log.info(
            "call.ended", linkedid=call.linkedid, caller=call.caller_num, queue=call.queue,
            agent=call.agent, outcome=call.final_outcome, wait_s=call.wait_s, talk_s=call.talk_s, reason=reason,
            segments=len(call.segments),
        )
        self._emit_call(out, ev.CALL_FINISHED, call, ts, reason=reason)

    # --- channel events -----------------------------------------------------------------------

    def _on_newchannel(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        f = msg
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
        leg = call.legs.get(msg.get("Uniqueid", ""))
        if leg is None:
            return
        num, name = _num(msg.get("CallerIDNum")), _num(msg.get("CallerIDName"))
        leg.caller_num, leg.caller_name = num or leg.caller_num, name or leg.caller_name
        if leg.uniqueid == call.linkedid and call.queued_at is None and leg.caller_num:
            call.caller_num, call.caller_name = leg.caller_num, leg.caller_name

    def _on_hangup(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        uid = msg.get("Uniqueid", "")
        linkedid = self._leg_call.pop(uid, None) or msg.get("Linkedid")
        call = self.calls.get(linkedid or "")
        if call is None:
            return
        call.legs.pop(uid, None)
        if call.segments and call.segments[-1].leg == uid:
            self._settle_pending(call, ts, out, hung_up=True)
        if not call.legs:
            self._end(call, ts, out)

    def _on_varset(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        var = msg.get("Variable", "")
        if var.startswith("CTI_"):
            call = self._call_for(msg, ts, out)
            if call is not None:
                call.vars[var] = msg.get("Value", "")
        elif var == "QUEUESTATUS":
            call = self.calls.get(self._call_id(msg) or "")
            status = msg.get("Value", "")
            seg = call.segments[-1] if call is not None and call.segments else None
            if call is not None and seg is not None and seg.left_pending and status in _LEFT_STATUSES:
                self._close_waiting(call, seg, seg.left_at, out, outcome="unanswered", reason=status.lower())

    def _on_newexten(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        """A caller a blind transfer sent to an agent's own extension is answered there."""
        if not self._ringing_exten or msg.get("Application") != "Answer":
            return
        linkedid = self._call_id(msg) or ""
        call = self.calls.get(linkedid)
        if call is None or linkedid not in self._ringing_exten:
            return
        where = (msg.get("Context", ""), msg.get("Exten", ""))
        for key, offer in list(call.offers.items()):
            if offer.exten == where:
                self._answer_direct(call, key, offer, ts, out)
                return

    def _on_dial_begin(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        """A dial to an agent's phone outside app_queue (a transfer, a CTI redirect, a direct call)."""
        f = msg
        dest = f.get("DestChannel")
        if not dest:
            return
        linkedid = self._leg_call.get(f.get("Uniqueid", "")) or f.get("Linkedid") or f.get("DestLinkedid")
        call = self.calls.get(linkedid or "")
        if call is None or call.current_queue is not None:
            return  # app_queue's own ring: its Agent* events tell the story
        target = self._target_for_device(device_of(dest))
        if target is None:
            return
        key = target.interface.lower()
        existing = call.offers.get(key)
        if existing is not None:
            existing.device = target.device
            return
        self._offer_direct(call, target, ts, out)

    def _on_dial_end(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        f = msg
        dest = f.get("DestChannel")
        call = self.calls.get(self._call_id(msg) or "") if "Uniqueid" in f else None
        if call is None and dest:
            call = self.calls.get(self._leg_call.get(f.get("DestUniqueid", "")) or f.get("DestLinkedid") or "")
        held = call.held if call is not None else None
        if held is not None and f.get("DialStatus") == "ANSWER" and f.get("Uniqueid") == held.leg:
            # The router's dial answered, by an agent of ours (the offer below names them) or not
            target = self._target_for_device(device_of(dest)) if dest else None
            assert call is not None
            self._end_hold(call, ts, "answered", agent_id=target.agent_id if target is not None else None)
        if call is None or not call.offers or not dest:
            return
        device = device_of(dest)
        for key, offer in list(call.offers.items()):
            if offer.queue is None and offer.device == device:
                status = f.get("DialStatus", "")
                if status == "ANSWER":
                    self._answer_direct(call, key, offer, ts, out)
                else:
                    self._direct_failed(call, key, offer, ts, out, status=status, leg=f.get("Uniqueid"))
                return

    def _on_bridge_enter(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        """An agent's phone joining the caller's bridge answers a direct ring with no DialEnd."""
        call = self.calls.get(self._call_id(msg) or "")
        if call is None or not call.offers:
            return
        device = device_of(msg.get("Channel", ""))
        for key, offer in list(call.offers.items()):
            if offer.queue is None and offer.device == device:
                self._answer_direct(call, key, offer, ts, out)
                return

    def _offer_direct(self, call: Call, target: Target, ts: float | None, out: list[DomainEvent],
                      exten: tuple[str, str] | None = None) -> None:
        self._settle_pending(call, ts, out, hung_up=False)
        waiting = call.current
        if waiting is not None and waiting.waiting and waiting.queue is None:
            seg = waiting  # a second phone rung for the same hand-off (a ring group)
        else:
            seg = self._open_segment(call, None, ts, None)
        offer = Offer(target.interface, target.name, target.agent_id, None, ts, target.device, exten)
        call.offers[target.interface.lower()] = offer
        if exten is not None:
            self._ringing_exten.add(call.linkedid)
        if call.offered_at is None:
            call.offered_at = ts
        log.info("call.offered", linkedid=call.linkedid, caller=call.caller_num, member=target.name,
                 agent_id=target.agent_id, direct=True, transferred_from=seg.transferred_from)
        self._emit_call(out, ev.CALL_OFFERED, call, ts, target.agent_id, offered_queue=None, member=target.name,
                        wait_so_far_s=0.0, transferred_from=seg.transferred_from,
                        transferred_from_id=seg.transferred_from_id)

    def _answer_direct(self, call: Call, key: str, offer: Offer, ts: float | None,
                       out: list[DomainEvent]) -> None:
        seg = call.current
        if seg is None or not seg.waiting or seg.queue is not None:
            return
        del call.offers[key]
        self._answer(call, seg, Target(offer.interface, offer.member_name, offer.agent_id, offer.device), ts)
        self._end_hold(call, ts, "answered", agent_id=offer.agent_id)
        self._withdraw_offers(call, ts, out, "answered_elsewhere")
        log.info("call.answered", linkedid=call.linkedid, caller=call.caller_num, agent=seg.agent, direct=True,
                 transferred_from=seg.transferred_from)
        self._emit_call(out, ev.CALL_ANSWERED, call, ts, seg.agent_id, transferred_from=seg.transferred_from,
                        transferred_from_id=seg.transferred_from_id)

    def _direct_failed(self, call: Call, key: str, offer: Offer, ts: float | None, out: list[DomainEvent], *,
                       status: str, leg: str | None) -> None:
        """A direct ring that failed. ``CANCEL`` is the caller hanging up, or a second Redirect
        taking the caller elsewhere (two CTI servers racing): the next event tells which."""
        del call.offers[key]
        cancel = status == "CANCEL"
        reason = "cancelled" if cancel else _DIAL_FAILED.get(status, status.lower())
        self._emit_call(out, ev.CALL_OFFER_WITHDRAWN, call, ts, offer.agent_id, reason=reason)
        seg = call.current
        if not call.offers:
            self._ringing_exten.discard(call.linkedid)
            if seg is not None and seg.waiting and seg.queue is None:
                seg.left_at = ts
                if cancel:
                    seg.left_pending, seg.leg = True, leg
                else:
                    seg.outcome, seg.reason = "unanswered", reason

    # --- CTI routing mode's holds -------------------------------------------------------------

    def _on_user_event(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        """The CTI dialplan's ``CtiHold`` (the caller waits for the router; again after a ring not
        answered) and ``CtiFallback`` (the router let the caller go to app_queue)."""
        kind = msg.get("UserEvent")
        if kind not in ("CtiHold", "CtiFallback"):
            return
        call = self.calls.get(self._call_id(msg) or "")
        if call is None:
            return
        if kind == "CtiFallback":
            self._end_hold(call, ts, "unanswered", reason="fallback")
            return
        if call.held is not None:
            return  # back on hold after a ring: the same wait goes on
        hold = Hold(entry=msg.get("Entry") or None, joined_at=ts, leg=msg.get("Uniqueid"))
        call.holds.append(hold)
        log.info("call.held", linkedid=call.linkedid, caller=call.caller_num, entry=hold.entry,
                 hold=len(call.holds))
        self._emit_call(out, ev.CALL_HELD, call, ts)

    def _end_hold(self, call: Call, ts: float | None, outcome: Outcome, *, reason: str | None = None,
                  agent_id: str | None = None) -> None:
        hold = call.held
        if hold is None:
            return
        hold.left_at, hold.outcome, hold.reason, hold.agent_id = ts, outcome, reason, agent_id
        log.info("call.hold_ended", linkedid=call.linkedid, caller=call.caller_num, entry=hold.entry,
                 outcome=outcome, reason=reason, agent_id=agent_id, wait_s=hold.wait_s)

    # --- transfers ----------------------------------------------------------------------------

    def _transfer_away(self, call: Call, ts: float | None, out: list[DomainEvent], kind: str,
                       transferer_channel: str) -> Segment | None:
        """The talking agent hands the call on: their segment ends as ``transferred``."""
        device = device_of(transferer_channel)
        talking = [s for s in call.segments if s.talking]
        seg = next((s for s in reversed(talking)
                    if s.agent_interface and interface_device(s.agent_interface) == device),
                   talking[-1] if talking else None)
        if seg is None:
            call.transfer = Transfer(None, None, ts, kind)
            return None
        seg.outcome = "transferred"
        seg.reason = kind
        call.transfer = Transfer(seg.agent, seg.agent_id, ts, kind)
        log.info("call.transferred", linkedid=call.linkedid, caller=call.caller_num, agent=seg.agent, kind=kind)
        self._agent_done(call, seg, ts, out, "transferred")
        return seg

    def _on_blind_transfer(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        f = msg
        if f.get("Result", "Success") != "Success":
            return
        uid = f.get("TransfereeUniqueid", "")
        call = self.calls.get(self._leg_call.get(uid) or f.get("TransfereeLinkedid") or "")
        if call is None:
            return
        self._transfer_away(call, ts, out, "blind", f.get("TransfererChannel", ""))
        context, exten = f.get("Context", ""), f.get("Extension", "")
        target = self._target_for_exten(context, exten) if exten else None
        if target is not None:
            # A Local member's extension is the agent's phone itself: its Answer() answers the call.
            # Any other extension answers when it dials the agent's phone and they pick up.
            here = (context, exten) if target.device.startswith("local/") else None
            self._offer_direct(call, target, ts, out, exten=here)
        # Otherwise the destination shows itself: a QueueCallerJoin, or a DialBegin to an agent.

    def _on_attended_transfer(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        """The consult call (agent A to B) folds into the caller's call, which B now has."""
        f = msg
        if f.get("Result", "Success") != "Success" or f.get("DestType") == "Fail":
            return
        uid = f.get("TransfereeUniqueid") or f.get("OrigTransfererUniqueid", "")
        call = self.calls.get(self._leg_call.get(uid) or f.get("TransfereeLinkedid")
                              or f.get("OrigTransfererLinkedid") or "")
        if call is None:
            return
        threeway = f.get("DestType") == "Threeway"
        if not threeway:
            self._transfer_away(call, ts, out, "attended", f.get("OrigTransfererChannel", ""))
        consult_id = (self._leg_call.get(f.get("TransferTargetUniqueid", ""))
                      or self._leg_call.get(f.get("SecondTransfererUniqueid", ""))
                      or f.get("SecondTransfererLinkedid"))
        consult = self.calls.get(consult_id or "")
        target = self._target_for_device(device_of(f.get("TransferTargetChannel", "")))
        if consult is not None and consult is not call:
            if target is None:
                answered = consult.talking
                if answered is not None and answered.agent_interface:
                    target = Target(answered.agent_interface, answered.agent or "", answered.agent_id,
                                    interface_device(answered.agent_interface))
            self._merge(consult, call, ts, out)
        if target is None or f.get("DestType") == "App":
            return  # the caller went to an application (a queue, voicemail): its events follow
        if threeway:
            call.transfer = Transfer(call.talking.agent if call.talking else None,
                                     call.talking.agent_id if call.talking else None, ts, "threeway")
        seg = self._open_segment(call, None, ts, None)
        self._emit_call(out, ev.CALL_OFFERED, call, ts, target.agent_id, offered_queue=None, member=target.name,
                        wait_so_far_s=0.0, transferred_from=seg.transferred_from,
                        transferred_from_id=seg.transferred_from_id)
        self._answer(call, seg, target, ts)
        log.info("call.answered", linkedid=call.linkedid, caller=call.caller_num, agent=seg.agent,
                 transferred_from=seg.transferred_from, kind="attended")
        self._emit_call(out, ev.CALL_ANSWERED, call, ts, seg.agent_id, transferred_from=seg.transferred_from,
                        transferred_from_id=seg.transferred_from_id)

    def _merge(self, consult: Call, into: Call, ts: float | None, out: list[DomainEvent]) -> None:
        """Move the consult call's legs into the caller's call; the consult call is over."""
        for uid, leg in consult.legs.items():
            into.legs[uid] = leg
            self._leg_call[uid] = into.linkedid
        consult.legs.clear()
        consult.merged_into = into.linkedid
        self._withdraw_offers(consult, ts, out, "call_ended")
        for seg in consult.segments:
            if seg.outcome == "answered" and not seg.notified:
                self._agent_done(consult, seg, ts, out, "merged")
        consult.ended, consult.ended_at = True, ts
        self._ringing_exten.discard(consult.linkedid)
        del self.calls[consult.linkedid]
        self.ended[consult.linkedid] = consult
        self._emit_call(out, ev.CALL_FINISHED, consult, ts, reason="merged", merged_into=into.linkedid)

    # --- app_queue events ---------------------------------------------------------------------

    def _on_join(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        call = self._call_for(msg, ts, out)
        if call is None:
            return
        self._settle_pending(call, ts, out, hung_up=False)
        self._end_hold(call, ts, "unanswered", reason="fallback")  # a dialplan without CtiFallback
        f = msg
        queue = self._queue(f["Queue"])
        position = _int(f.get("Position"))
        if position is not None:
            self._shift_positions(queue, position, +1)
        queue.waiting[call.linkedid] = position or len(queue.waiting) + 1
        self._open_segment(call, queue.name, ts, f.get("Uniqueid"), position)
        call.current_queue = queue.name
        call.position = position
        num = _num(f.get("CallerIDNum"))
        if num and call.caller_num is None:
            call.caller_num, call.caller_name = num, _num(f.get("CallerIDName")) or call.caller_name
        log.info("call.queued", linkedid=call.linkedid, caller=call.caller_num, queue=queue.name,
                 position=position, segment=len(call.segments))
        self._emit_call(out, ev.CALL_QUEUED, call, ts, count=_int(f.get("Count")))

    def _member_event(
        self, msg: Message, ts: float | None, out: list[DomainEvent]
    ) -> tuple[Call, str, str, AgentConfig | None] | None:
        """The call, member interface, member name and configured agent an AgentXxx event names."""
        call = self._call_for(msg, ts, out)
        if call is None:
            return None
        interface, name = msg["Interface"], msg.get("MemberName", "")
        return call, interface, name, self.agent_for(interface, name)

    def _on_agent_called(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        found = self._member_event(msg, ts, out)
        if found is None:
            return
        call, interface, name, agent = found
        if agent is None:
            log.warning("agent.unknown", interface=interface, member=name, linkedid=call.linkedid,
                        hint="add the agent to config agents[] to give them screen pops")
        target = Target(interface, name, agent.id if agent else None, interface_device(interface))
        self._offer_from_queue(call, target, msg.get("Queue", ""), ts, out)

    def _offer_from_queue(self, call: Call, target: Target, queue: str, ts: float | None, out: list[DomainEvent],
                          **extra: Any) -> None:
        """app_queue rings an agent for the call: the screen pop."""
        seg = self._queue_segment(call, queue)
        call.offers[target.interface.lower()] = Offer(target.interface, target.name, target.agent_id, queue, ts,
                                                      target.device)
        if call.offered_at is None:
            call.offered_at = ts
        wait = round(ts - seg.joined_at, 3) if ts is not None and seg and seg.joined_at is not None else None
        log.info("call.offered", linkedid=call.linkedid, caller=call.caller_num, queue=queue,
                 member=target.name, agent_id=target.agent_id, **extra)
        self._emit_call(out, ev.CALL_OFFERED, call, ts, target.agent_id, offered_queue=queue,
                        member=target.name, wait_so_far_s=wait,
                        transferred_from=seg.transferred_from if seg else None,
                        transferred_from_id=seg.transferred_from_id if seg else None, **extra)

    def _on_ring_no_answer(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        call = self._call_for(msg, ts, out)
        if call is None:
            return
        offer = call.offers.pop(msg["Interface"].lower(), None)
        if offer is not None:
            log.info("call.offer_withdrawn", linkedid=call.linkedid, member=offer.member_name,
                     reason="ring_no_answer")
            self._emit_call(out, ev.CALL_OFFER_WITHDRAWN, call, ts, offer.agent_id, reason="ring_no_answer")

    def _on_connect(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        found = self._member_event(msg, ts, out)
        if found is None:
            return
        call, interface, name, agent = found
        f = msg
        queue = f.get("Queue") or call.current_queue
        seg = self._queue_segment(call, queue)
        if seg is None:  # met mid-call: the join fell before we were listening
            seg = self._open_segment(call, queue, None, f.get("Uniqueid"))
            call.seen_gap = True
        self._leave_queue(call, queue)
        self._answer(call, seg, Target(interface, name or interface, agent.id if agent else None,
                                       interface_device(interface)), ts)
        seg.hold_time = _float(f.get("HoldTime"))
        if seg.queue is not None:
            self._queue(seg.queue).answered += 1
        self._withdraw_offers(call, ts, out, "answered_elsewhere", keep=interface.lower())
        call.offers.clear()
        log.info("call.answered", linkedid=call.linkedid, caller=call.caller_num, queue=queue,
                 agent=seg.agent, hold_s=seg.hold_time, transferred_from=seg.transferred_from)
        self._emit_call(out, ev.CALL_ANSWERED, call, ts, seg.agent_id, answered_queue=queue,
                        transferred_from=seg.transferred_from, transferred_from_id=seg.transferred_from_id)

    def _on_complete(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        f = msg
        member = self._member(f["Interface"], f.get("MemberName"))
        linkedid = self._call_id(msg) or member.call or member.last_call
        call = self.calls.get(linkedid or "") or self.ended.get(linkedid or "")
        if member.call == linkedid:
            member.call = None
        if call is None:
            return
        key = f["Interface"].lower()
        seg = next((s for s in reversed(call.segments)
                    if s.agent_interface and s.agent_interface.lower() == key and s.queue == f.get("Queue", s.queue)),
                   None)
        if seg is None:
            return
        seg.talk_time = _float(f.get("TalkTime"))
        if seg.hold_time is None:
            seg.hold_time = _float(f.get("HoldTime"))
        if f.get("Reason") == "transfer" and seg.outcome == "answered":
            seg.outcome, seg.reason = "transferred", seg.reason or "blind"
        if call.ended:
            if seg.completed_at is None:
                seg.completed_at = ts
            return
        self._agent_done(call, seg, ts, out, "transferred" if seg.outcome == "transferred" else "hangup")

    def _on_leave(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        call = self._call_for(msg, ts, out)
        if call is None:
            return
        queue = msg.get("Queue")
        seg = self._queue_segment(call, queue)
        if seg is not None and seg.left_at is None:
            seg.left_at = ts
        self._leave_queue(call, queue)

    def _on_abandon(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        """The caller left the queue without an agent. app_queue says the same for a hang-up and
        for a timeout; only a ``QUEUESTATUS`` right after tells a timeout (see _settle_pending)."""
        call = self._call_for(msg, ts, out) or self.ended.get(self._call_id(msg) or "")
        if call is None:
            return
        queue = msg.get("Queue")
        seg = self._queue_segment(call, queue)
        if seg is None or not seg.waiting:
            return
        seg.left_at = ts
        seg.hold_time = _float(msg.get("HoldTime"))
        seg.left_pending = True
        self._leave_queue(call, queue)
        if call.ended:
            self._close_waiting(call, seg, ts, out, outcome="abandoned")

    def _queue_entry(self, msg: Message, now: float, out: list[DomainEvent]) -> None:
        call = self._call_for(msg, now, out)
        if call is None:
            return
        f = msg
        queue = self._queue(f.get("Queue", ""))
        position = _int(f.get("Position")) or len(queue.waiting) + 1
        queue.waiting[call.linkedid] = position
        call.position = position
        call.current_queue = queue.name
        seg = call.current
        if seg is None or seg.queue != queue.name or not seg.waiting:
            wait = _float(f.get("Wait"))
            self._open_segment(call, queue.name, now - wait if wait is not None else now, f.get("Uniqueid"),
                               position)
        num = _num(f.get("CallerIDNum"))
        if num and call.caller_num is None:
            call.caller_num, call.caller_name = num, _num(f.get("CallerIDName"))

    # --- queue members ------------------------------------------------------------------------

    def _member_status(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        f = msg
        interface = f.get("Interface") or f.get("Location")
        if not interface:
            raise KeyError("Interface")
        member = self._member(interface, f.get("MemberName") or f.get("Name"))
        before = member.snapshot()
        state_interface = f.get("StateInterface")
        if state_interface and state_interface != member.state_interface:
            member.state_interface = state_interface
            self._member_by_device.setdefault(interface_device(state_interface), member)
        if member.agent_id is None:
            agent = self.agent_for(interface, member.name)
            member.agent_id = agent.id if agent else None
        status = _int(f.get("Status"))
        if status is not None:
            member.status = status
        queue = f.get("Queue")
        if queue:
            ms = member.queues.get(queue)
            if ms is None:
                ms = member.queues[queue] = Membership()
            if "Paused" in f:
                ms.paused = f["Paused"] == "1"
                ms.paused_reason = f.get("PausedReason", "") if ms.paused else ""
            taken = _int(f.get("CallsTaken"))
            if taken is not None:
                ms.calls_taken = taken
            penalty = _int(f.get("Penalty"))
            if penalty is not None:
                ms.penalty = penalty
        elif "Paused" in f:  # no queue named: app_queue paused it everywhere
            for ms in member.queues.values():
                ms.paused = f["Paused"] == "1"
                ms.paused_reason = f.get("PausedReason", "") if ms.paused else ""
        member.mark(ts)
        after = member.snapshot()
        if after != before and member.agent_id:
            out.append(DomainEvent(ev.AGENT_STATE, None, ts, after, member.agent_id))

    def _on_member_removed(self, msg: Message, ts: float | None, out: list[DomainEvent]) -> None:
        member = self.members.get(msg.get("Interface", "").lower())
        if member is not None:
            member.queues.pop(msg.get("Queue", ""), None)
            member.mark(ts)
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
    "Newexten": CallModel._on_newexten,
    "DialBegin": CallModel._on_dial_begin,
    "DialEnd": CallModel._on_dial_end,
    "BridgeEnter": CallModel._on_bridge_enter,
    "BlindTransfer": CallModel._on_blind_transfer,
    "AttendedTransfer": CallModel._on_attended_transfer,
    "QueueCallerJoin": CallModel._on_join,
    "UserEvent": CallModel._on_user_event,
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
