"""Restart and resync: the router's store checked against the channels Asterisk has.

The store (Redis) outlives a server, and a server's memory of the calls it follows does not: after a
restart the calls that were waiting, ringing or talking are in Redis, but nothing here follows their
events any more, and what happened to them meanwhile was never seen. After each AMI login (and each
periodic resync on a live link) the controller takes the ``CoreShowChannels`` list the call model
resynchronises from and :func:`plan` says, per call, what to do:

* a call the store holds whose channel is gone ended while nobody looked: out of the store
  (:class:`Gone`: abandoned on hold, or its reserved agent freed);
* one whose channel runs ``Queue()`` in the hold context fell back while we were away (:class:`FellBack`);
* a reserved call whose dial had begun and whose channel is back on hold (``MusicOnHold``): its
  ``CtiNoAnswer`` was lost, the call waits again and the agent is ready (:class:`BackOnHold`);
* an agent ``on_call`` whose call's channel is gone: the call is over, wrap-up (:class:`TalkOver`);
* every other call still up, and the talking agent's, is followed again (:class:`Follow`), so its
  ``Hangup``, ``DialEnd`` and ``CtiNoAnswer`` are handled as if the server had never stopped;
* a channel on hold (``MusicOnHold`` in the hold context) that the store lacks, and no agent's status
  is about, was queued in a Redis that lost it: queued again (:class:`Enqueue`).

Guards, since other servers may change the store after the list was taken: a call is judged gone only
if it was already there then (queued, or its Uniqueid's creation second, more than :data:`SLACK_MS`
before ``taken_at_ms``); on a live link only when two lists in a row lack it (``confirm``), as the call
model does, since a channel being renamed or masqueraded can be missing from one list.

Pure: the controller reads the store and applies the steps, each a conditional store step.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from cti.agents import device_of
from cti.ami.codec import Message
from cti.router.reconcile import MARKS
from cti.router.store import AgentCall, CallState, HeldCall
from routing.model import WaitingCall

__all__ = ["SLACK_MS", "BackOnHold", "Channel", "Enqueue", "FellBack", "Follow", "Gone", "Plan", "Step",
           "TalkOver", "channels_of", "plan", "uniqueid_ms"]

#: A call queued (or a channel created) this close before the list, or after it, may be newer than the
#: list: ``taken_at_ms`` is read when the router's hook runs, after the list's reply (and QueueStatus's),
#: and the servers' clocks may differ from Asterisk's by a little.
SLACK_MS: Final = 2_000

_UNIQUEID: Final = re.compile(r"(?:^|-)(\d{1,12})\.\d+$")  # [systemname-]<epoch s>.<sequence>


@dataclass(frozen=True, slots=True)
class Channel:
    """What a ``CoreShowChannel`` item says about a channel."""

    name: str
    uniqueid: str
    linkedid: str
    context: str
    application: str
    age_ms: int


@dataclass(frozen=True, slots=True)
class Gone:
    call_id: str
    state: CallState
    agent: str | None


@dataclass(frozen=True, slots=True)
class FellBack:
    call_id: str


@dataclass(frozen=True, slots=True)
class BackOnHold:
    call_id: str
    agent: str | None


@dataclass(frozen=True, slots=True)
class Follow:
    call_id: str
    channel: str
    linkedid: str
    phase: Literal["waiting", "offered", "ringing", "talking"]
    agent: str | None
    agent_leg: str | None     # the Uniqueid of the agent's channel in the call, when found
    waiting: WaitingCall | None  # as the store has it (None for a talking call: no longer there)


@dataclass(frozen=True, slots=True)
class TalkOver:
    agent: str
    call_id: str


@dataclass(frozen=True, slots=True)
class Enqueue:
    call_id: str
    channel: str
    linkedid: str
    age_ms: int


Step = Gone | FellBack | BackOnHold | Follow | TalkOver | Enqueue


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[Step, ...]
    missing: frozenset[str]  # calls this list lacks: a live link's next list confirms them (``confirm``)


def _age_ms(duration: str | None) -> int:
    """``HH:MM:SS`` (CoreShowChannel's ``Duration``) in ms; 0 if unreadable."""
    parts = (duration or "").split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return 0
    h, m, s = (int(p) for p in parts)
    return ((h * 60 + m) * 60 + s) * 1000


def channels_of(items: Iterable[Message]) -> dict[str, Channel]:
    """``CoreShowChannel`` items by Uniqueid."""
    out = {}
    for msg in items:
        uid = msg.get("Uniqueid")
        if uid:
            out[uid] = Channel(msg.get("Channel") or "", uid, msg.get("Linkedid") or uid, msg.get("Context") or "",
                               msg.get("Application") or "", _age_ms(msg.get("Duration")))
    return out


def uniqueid_ms(uniqueid: str) -> int | None:
    """The end of the second a channel was created in, from its Uniqueid (``[system-]1795391605.129``)."""
    m = _UNIQUEID.search(uniqueid)
    return None if m is None else (int(m.group(1)) + 1) * 1000


def _agent_leg(channels: Mapping[str, Channel], linkedid: str, device: str | None) -> str | None:
    """The agent's channel in the call: same Linkedid, the agent's device; a Local pair's ``;1``."""
    if device is None:
        return None
    legs = sorted((c for c in channels.values() if c.linkedid == linkedid and device_of(c.name) == device),
                  key=lambda c: (c.name.endswith(";2"), c.name))
    return legs[0].uniqueid if legs else None


def plan(channels: Mapping[str, Channel], held: Sequence[HeldCall], agents: Mapping[str, AgentCall], *,
         hold_context: str, taken_at_ms: int, agent_devices: Mapping[str, str], followed: Collection[str] = (),
         confirm: frozenset[str] | None = None) -> Plan:
    """The steps that make the store agree with ``channels`` (the module docstring has the rules).

    ``held``/``agents``: the store now; ``agent_devices``: agent id -> device key
    (:func:`cti.agents.interface_device`); ``followed``: calls this server follows already (no
    :class:`Follow` for them); ``confirm``: on a live link, the previous plan's ``missing``."""
    steps: list[Step] = []
    missing: set[str] = set()
    cutoff = taken_at_ms - SLACK_MS

    def gone(call_id: str) -> bool:
        missing.add(call_id)
        return confirm is None or call_id in confirm

    for h in held:
        call_id = h.call.id
        ch = channels.get(call_id)
        if ch is None:
            if h.call.enqueued_at_ms <= cutoff and gone(call_id):
                steps.append(Gone(call_id, h.state, h.agent))
        elif ch.context == hold_context and ch.application == "Queue":
            steps.append(FellBack(call_id))
        elif h.state == "ringing" and ch.context == hold_context and ch.application == "MusicOnHold":
            steps.append(BackOnHold(call_id, h.agent))
        elif call_id not in followed:
            leg = _agent_leg(channels, ch.linkedid, agent_devices.get(h.agent or "")) if h.state == "ringing" else None
            steps.append(Follow(call_id, ch.name, ch.linkedid, h.state, h.agent, leg, h.call))
    for agent_id, a in sorted(agents.items()):
        if a.status != "on_call" or a.call is None or a.call in MARKS:
            continue
        ch = channels.get(a.call)
        if ch is None:
            created = uniqueid_ms(a.call)
            if (created is None or created <= cutoff) and gone(a.call):
                steps.append(TalkOver(agent_id, a.call))
        elif a.call not in followed:
            steps.append(Follow(a.call, ch.name, ch.linkedid, "talking", agent_id,
                                _agent_leg(channels, ch.linkedid, agent_devices.get(agent_id)), None))
    known = {h.call.id for h in held} | {a.call for a in agents.values() if a.call is not None}
    for ch in channels.values():
        if ch.context == hold_context and ch.application == "MusicOnHold" and ch.uniqueid not in known:
            steps.append(Enqueue(ch.uniqueid, ch.name, ch.linkedid, ch.age_ms))
    return Plan(tuple(steps), frozenset(missing))
