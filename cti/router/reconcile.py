"""Reconciliation: the router's view of each agent checked against what their phone is doing.

The router learns that a call ended from AMI events (``Hangup``, ``DialEnd``, ``CtiNoAnswer``). One
lost event (a manager ``eventfilter``, a server that missed it) would leave an agent ``on_call`` or
``reserved`` for ever; and a call routing did not make (the dialplan's fallback ``Queue()``, a direct
or transferred call, one the agent dialled) would leave a ``ready`` agent with a busy phone open to a
second call. Asterisk reports every phone's device state (``DeviceStateChange`` as it changes, and the
``DeviceStateList`` action after each login): this module decides, from the status the store has, the
device state and how long both have held, whether the router is wrong and how to put it right.

Pure: no I/O, no clock (``now_ms`` is given). The controller applies a :class:`Correction` as a
conditional store step (from ``before``, for ``expect_call``), so a server whose view is stale changes
nothing, and of several servers on the same events one makes each correction.

The rules (:func:`decide`), by the status in the store:

* ``on_call`` for a routed call, the phone idle (NOT_INUSE or UNAVAILABLE) for more than
  :attr:`Rules.grace_ms` (2 × ``reservation_timeout_s``): the end of the call was lost. The agent goes
  to ``wrap_up``, ending when it would have had the end been seen when the phone went idle (then
  ``ready``, by the store's wrap-up timer).
* ``reserved``, the same: the offer's end was lost. Ready again, the call requeued in its place.
* Both only for a device whose changes reach this server (``live``: a ``DeviceStateChange`` event,
  not only a list reply, was seen for it: a list nobody updates proves nothing), never while a dial to
  the phone is in flight (:attr:`Rules.dial_ms`), and measured from the later of the device's change
  and the moment this server first saw the status (a new reservation restarts the count). A server
  behind its events waits that much longer (:meth:`Rules.behind`): what would end the wait is in its backlog.
* ``ready`` with a busy phone (INUSE, BUSY, RINGING, RINGINUSE, ONHOLD): a call outside routing. The
  agent goes ``on_call`` with :data:`BUSY_MARK` as its call (``ready`` → ``on_call`` is a step of
  :mod:`cti.router.agent_state`), so no match picks them. At once when the phone has just changed
  (an event, or the list after a login); otherwise after :data:`BUSY_GRACE_MS`, which lets the idle
  state that follows a withdrawn offer arrive first (the abandon of a ringing call frees the agent a
  moment before their phone's ``NOT_INUSE``).
* ``on_call`` with :data:`BUSY_MARK`, the phone idle again: ``wrap_up`` for the routing config's
  ``wrapup_s`` (after-call work, as after a routed call), then ``ready``.
* ``ready`` with an UNAVAILABLE phone (unregistered): ``not_ready`` for the routing config's
  ``reservation.rona_not_ready_reason``, the reason a dial to it would earn anyway (CHANUNAVAIL counts
  as no answer), so the reason is one the config lists; marked :data:`UNAVAILABLE_MARK`, so the phone
  coming back (NOT_INUSE) makes them ready again. A person's own status change clears the mark (the
  store's ``status``/``put`` steps drop the call field), and their choice is never undone. Not
  ``logged_out``: logging in is the agent's act, and a phone that re-registers after a network blip
  should not leave a logged-in agent out.
* INVALID and UNKNOWN are no reading: nothing changes. ``wrap_up``, ``logged_out`` and a person's
  ``not_ready`` are left alone (a busy phone in wrap-up is judged once wrap-up ends).

An agent's device is the state interface of their ``interface``: ``PJSIP/1001``, or
``Local/1001@sim-agents`` for ``Local/1001@sim-agents/n``, the device ``CTI_ENDPOINT`` dials. A Local
interface must not optimise itself away (``/n``, as queue members have it), or its device reads idle
while the agent talks. ``ExtensionStatus`` is not used: a hint aggregates several devices (custom DND
states among them), and it is the dialled device that says whether the phone is free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final, Literal

from cti.agents import device_of, interface_device
from cti.config import AgentConfig, RoutingModeConfig
from routing.config import RoutingConfig
from routing.model import AgentStatus

__all__ = ["BUSY_GRACE_MS", "BUSY_MARK", "MARKS", "UNAVAILABLE_MARK", "Correction", "Device", "DeviceClass",
           "Kind", "Reconciler", "Rules", "decide", "device_class"]

#: What a phone's device state means for routing.
DeviceClass = Literal["idle", "busy", "unavailable", "unknown"]

_CLASSES: Final[Mapping[str, DeviceClass]] = {
    "NOT_INUSE": "idle", "INUSE": "busy", "BUSY": "busy", "RINGING": "busy", "RINGINUSE": "busy",
    "ONHOLD": "busy", "UNAVAILABLE": "unavailable",
}

#: The call field of an agent ``on_call`` for a call outside routing, and of one ``not_ready`` because
#: their phone is unavailable: no Uniqueid looks like them.
BUSY_MARK: Final = "device:busy"
UNAVAILABLE_MARK: Final = "device:unavailable"
MARKS: Final = frozenset({BUSY_MARK, UNAVAILABLE_MARK})

#: A ready agent whose phone has been busy this long (and was not just seen to change) is taken off.
BUSY_GRACE_MS: Final = 2_000

#: Each kind is also the name of its :class:`~cti.router.controller.RoutingCounters` field.
Kind = Literal["stuck_on_call", "stuck_reserved", "busy_outside", "busy_outside_over", "phone_unavailable",
               "phone_available"]


def device_class(state: str) -> DeviceClass:
    """``NOT_INUSE`` -> idle, ``INUSE``/``RINGING``/… -> busy, ``UNAVAILABLE``; anything else unknown."""
    return _CLASSES.get(state.strip().upper(), "unknown")


@dataclass(frozen=True, slots=True)
class Device:
    """A phone's last reading: its class, Asterisk's word for it, since when, and whether its changes
    reach us (``live``)."""

    state: DeviceClass
    raw: str
    since_ms: int
    live: bool


@dataclass(frozen=True, slots=True)
class Rules:
    """The thresholds, from the routing mode's and the routing config's settings (:meth:`of`)."""

    grace_ms: int            # an idle phone under an on_call or reserved agent is believed after this
    dial_ms: int             # a dial to the phone counts as in flight this long after it began
    wrapup_ms: int           # after a call outside routing
    unavailable_reason: str  # the not-ready reason of an agent whose phone is unavailable
    busy_grace_ms: int = BUSY_GRACE_MS

    @classmethod
    def of(cls, mode: RoutingModeConfig, config: RoutingConfig) -> Rules:
        reservation_ms = int(mode.reservation_timeout_s * 1000)
        return cls(grace_ms=2 * reservation_ms, dial_ms=config.reservation.offer_timeout_s * 1000 + reservation_ms,
                   wrapup_ms=config.wrapup_s * 1000, unavailable_reason=config.reservation.rona_not_ready_reason)

    def behind(self, lag_ms: int) -> Rules:
        """The rules for a server ``lag_ms`` behind its events (:mod:`cti.router.lag`): the events that would
        end the wait (a ``DialBegin``, a ``Hangup``, the idle state after a withdrawn offer) may sit in its
        backlog, so every wait is that much longer. The wrap-up, a length of after-call work, is not a wait."""
        if lag_ms <= 0:
            return self
        return replace(self, grace_ms=self.grace_ms + lag_ms, dial_ms=self.dial_ms + lag_ms,
                       busy_grace_ms=self.busy_grace_ms + lag_ms)


@dataclass(frozen=True, slots=True)
class Correction:
    """One status step that puts the router right: from ``before`` (about ``expect_call``, None for
    any) to ``after`` (about ``call``, for ``reason``, wrap-up until ``wrap_until_ms``). For
    ``stuck_reserved`` the step is the requeue of ``expect_call``."""

    kind: Kind
    before: AgentStatus
    after: AgentStatus
    why: str
    expect_call: str | None = None
    call: str | None = None
    reason: str | None = None
    wrap_until_ms: int | None = None


def decide(status: AgentStatus, call: str | None, status_since_ms: int, device: Device, *, now_ms: int,
           rules: Rules, dialing: bool = False, changed: bool = False) -> Correction | None:
    """The correction the agent needs, or None (the module docstring has the rules).

    ``call``: what the status is about (a call id or a mark); ``status_since_ms``: when this server first
    saw this status and call; ``dialing``: a dial to the phone began within ``rules.dial_ms``;
    ``changed``: the device's state has just changed (an event), or was just read (a login's list)."""
    held_ms = now_ms - max(device.since_ms, status_since_ms)
    seen = f"phone {device.raw} for {max(held_ms, 0)} ms"
    if device.state == "unknown":
        return None
    if status == "on_call" and call == BUSY_MARK:
        if device.state == "busy":
            return None
        return Correction("busy_outside_over", "on_call", "wrap_up", f"phone {device.raw} again: the call outside "
                          "routing is over", expect_call=BUSY_MARK, wrap_until_ms=now_ms + rules.wrapup_ms)
    if status in ("on_call", "reserved"):
        if (device.state == "busy" or not device.live or dialing or call is None or call in MARKS
                or held_ms <= rules.grace_ms):
            return None
        if status == "reserved":
            return Correction("stuck_reserved", "reserved", "ready", f"{seen}: the offer's end was lost",
                              expect_call=call)
        ended = max(device.since_ms, status_since_ms)
        return Correction("stuck_on_call", "on_call", "wrap_up", f"{seen}: the call's end was lost", expect_call=call,
                          call=call, wrap_until_ms=max(now_ms, ended + rules.wrapup_ms))
    if status == "ready" and device.state != "idle" and (changed or held_ms >= rules.busy_grace_ms):
        if device.state == "busy":
            return Correction("busy_outside", "ready", "on_call", f"{seen}: a call outside routing", call=BUSY_MARK)
        return Correction("phone_unavailable", "ready", "not_ready", f"{seen}: the phone cannot be rung",
                          call=UNAVAILABLE_MARK, reason=rules.unavailable_reason)
    if status == "not_ready" and call == UNAVAILABLE_MARK and device.state == "idle":
        return Correction("phone_available", "not_ready", "ready", f"phone {device.raw} again",
                          expect_call=UNAVAILABLE_MARK)
    return None


class Reconciler:
    """What this server has seen of the agents' phones and statuses, and :meth:`check` over it.

    Pure bookkeeping for the controller, which feeds it (:meth:`observe_state`, :meth:`observe_dial`)
    and applies what :meth:`check` returns."""

    def __init__(self, agents: Iterable[AgentConfig]) -> None:
        self._agent_at = {interface_device(a.interface): a.id for a in agents}
        self.devices: Mapping[str, str] = {agent: device for device, agent in self._agent_at.items()}
        self._readings: dict[str, Device] = {}                          # agent id -> their phone
        self._dials: dict[str, int] = {}                                # agent id -> when a dial to them began
        self._seen: dict[str, tuple[AgentStatus, str | None, int]] = {}  # agent id -> status, call, since

    def agent_at(self, device: str) -> str | None:
        """The agent whose phone ``device`` (``PJSIP/1001``, ``Local/1001@sim-agents``) is."""
        return self._agent_at.get(device.lower())

    def device(self, agent_id: str) -> Device | None:
        return self._readings.get(agent_id)

    def followed(self) -> list[str]:
        """The agents whose phone this server has a reading of, by id."""
        return sorted(self._readings)

    def observe_state(self, device: str, state: str, now_ms: int, *, live: bool) -> str | None:
        """A ``DeviceStateChange`` (``live``) or a ``DeviceStateList`` item: the agent whose phone's class
        changed (None: not an agent's phone, or the same class again, as Asterisk repeats INUSE)."""
        agent_id = self.agent_at(device)
        if agent_id is None:
            return None
        cls = device_class(state)
        old = self._readings.get(agent_id)
        if old is not None and old.state == cls:
            if live and not old.live:
                self._readings[agent_id] = Device(old.state, old.raw, old.since_ms, True)
            return None
        self._readings[agent_id] = Device(cls, state, now_ms, live or (old is not None and old.live))
        return agent_id

    def observe_dial(self, event: str, dest_channel: str, now_ms: int) -> None:
        """``DialBegin`` / ``DialEnd`` to an agent's phone (anyone's dial: app_queue's too)."""
        agent_id = self._agent_at.get(device_of(dest_channel))
        if agent_id is None:
            return
        if event == "DialBegin":
            self._dials[agent_id] = now_ms
        else:
            self._dials.pop(agent_id, None)

    def check(self, agent_id: str, status: AgentStatus, call: str | None, *, now_ms: int, rules: Rules,
              changed: bool = False) -> Correction | None:
        """Note the status the store has for the agent, then :func:`decide` on their phone's reading."""
        seen = self._seen.get(agent_id)
        if seen is None or seen[:2] != (status, call):
            seen = self._seen[agent_id] = (status, call, now_ms)
        device = self._readings.get(agent_id)
        if device is None:
            return None
        began = self._dials.get(agent_id)
        dialing = began is not None and now_ms - began < rules.dial_ms
        return decide(status, call, seen[2], device, now_ms=now_ms, rules=rules, dialing=dialing, changed=changed)
