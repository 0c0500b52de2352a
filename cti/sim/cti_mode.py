"""CTI routing mode of the simulated PBX: Asterisk playing ``config/asterisk/extensions_cti.conf``.

``SimConfig.mode = "cti"`` makes the :class:`~cti.sim.pbx.Simulator` run a :class:`CtiPbx`. Per call:

``[cti-entry]``
    Answer(), then AGI(). With ``SimConfig.agi_url`` the FastAGI session runs for real
    (:func:`run_session`, :mod:`cti.sim.agi_caller` pressing the call's keys): each command is an
    ``AGIExecStart``/``AGIExecEnd`` pair, a SET VARIABLE a ``VarSet``, a key a ``DTMFBegin``/``DTMFEnd``.
    Without it the simulator plays that footprint itself, as the ``cti`` capture shows it, writing the
    call's drawn choice (``entry_points``, ``vip_share`` / ``vip_tiers``, ``languages``) to ``CTI_FLOW``,
    ``CTI_OUTCOME=route``, ``CTI_ENTRY``, ``CTI_PRIORITY``, ``CTI_TIER`` and ``CTI_LANGUAGE``.
``[cti-hold]``
    ``CTI_HOLD_START`` (kept across returns, so ``hold_max_s`` counts the whole wait), ``UserEvent
    CtiHold``, MusicOnHold for what is left; then ``UserEvent CtiFallback`` and app_queue's ``Queue()`` on
    ``fallback_queue``: the observe mode's queue engine, unchanged.
``[cti-connect]``
    After a client's ``Setvar`` (``CTI_AGENT``, ``CTI_ENDPOINT``, ``CTI_RING_S``) and ``Redirect``:
    ``Dial(${CTI_ENDPOINT},${CTI_RING_S})`` of an agent's phone (a Local pair like the captures', or a
    PJSIP channel). Answered: bridged until one side hangs up or the agent blind-transfers (the observe
    mode's transfer code). NOANSWER, BUSY (the phone is in a call) or CHANUNAVAIL (no such phone):
    ``UserEvent CtiNoAnswer`` and back to ``[cti-hold]``. An empty ``CTI_ENDPOINT`` goes straight back.

Events follow the ``cti`` and ``ctiedge`` captures: field order, event order, the Dial() pair's caller
ids and ``LocalOptimization: No``, a second Redirect's ``Newexten`` that still shows the cancelled Dial
(Asterisk derives Newexten from a snapshot whose place changed) before its ``DialEnd CANCEL``. What
the captures' simpler dialplan had not (CtiHold's ``Entry``, MusicOnHold, CtiFallback, BUSY) is as
Asterisk 22 sends it.

Each call's :attr:`~cti.sim.pbx.Pbx.records` entry gets a ``cti`` part: entry point, tier, language,
outcome, hold times, every ring and who answered (:meth:`CtiPbx._record`).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import structlog

from cti.config import AgentConfig, SimConfig
from cti.sim.agi_caller import DEAD_CHANNEL, Scenario, SimChannel, agi_env, parse_args, place_call
from cti.sim.channels import Channel
from cti.sim.pbx import (
    _CID_PRES,
    _T_DTMF_BEGIN,
    _T_DTMF_END,
    _T_PHONE_WAIT,
    _T_SEND,
    AGENT_CONTEXT,
    ANSWER_DELAY_S,
    DEVICE_INUSE,
    DEVICE_RINGING,
    VIP_PRIORITY,
    Call,
    Caller,
    CallState,
    Member,
    Pbx,
    Phone,
    Queue,
    Ring,
    Segment,
    _fmt,
    _Timer,
)
from ivr_flows.tryout import parse_keys

__all__ = ["CONNECT_CONTEXT", "ENTRY_CONTEXT", "HOLD_CONTEXT", "AgiSession", "CtiCall", "CtiPbx", "run_session"]

log = structlog.get_logger(__name__)

ENTRY_CONTEXT: Final = "cti-entry"
HOLD_CONTEXT: Final = "cti-hold"
CONNECT_CONTEXT: Final = "cti-connect"
DEFAULT_AGI: Final = "agi://127.0.0.1:4573/hotline"  # extensions_cti.conf's CTI_AGI
DEFAULT_RING_S: Final = 15  # cti-connect: Dial()'s timeout when CTI_RING_S is empty
SESSION_TIMEOUT_S: Final = 120.0  # a FastAGI session longer than this is cut (the server stopped answering)
#: The variables Dial() clears on the caller as it starts (the captures' order).
_DIAL_VARS: Final = ("DIALSTATUS", "DIALEDPEERNUMBER", "DIALEDPEERNAME", "ANSWEREDTIME", "ANSWEREDTIME_MS",
                     "DIALEDTIME", "DIALEDTIME_MS", "RINGTIME", "RINGTIME_MS", "PROGRESSTIME", "PROGRESSTIME_MS")
_FOOTPRINT_WAIT: Final = "WAIT FOR DIGIT 5000"  # the footprint's menu: one key, as the captured flow's
_AGI_RESULTS: Final = {"510": "Invalid or unknown command", "511": DEAD_CHANNEL.partition(" ")[2], "520": "Usage"}
_CTI_STATES: Final = frozenset({CallState.IVR, CallState.HOLD, CallState.DIALING, CallState.CONNECTED})
_KEY_VERBS: Final = (("WAIT", "FOR", "DIGIT"), ("STREAM", "FILE"), ("GET", "DATA"))
#: A Dial() segment's reason when it ends unanswered, as the call model (and so ``cti replay``) names it.
_SEGMENT_REASONS: Final = {"noanswer": "ring_no_answer", "busy": "busy", "cancel": "cancelled"}

# The dialplan's priorities. [cti-entry]: Answer, AGI, GotoIf, Hangup.
_P_AGI, _P_ROUTED, _P_ENTRY_HANGUP = 2, 3, 4
# [cti-hold]: Set START, Set LEFT, GotoIf, UserEvent CtiHold, MusicOnHold, (fallback) UserEvent, Queue, Hangup.
_P_START, _P_LEFT, _P_CHECK, _P_HOLD, _P_MOH, _P_FALLBACK, _P_QUEUE = 1, 2, 3, 4, 5, 6, 7
# [cti-connect]: GotoIf, Dial, GotoIf, UserEvent CtiNoAnswer, Set, Goto, (done) Hangup.
_P_ENDPOINT, _P_DIAL, _P_ANSWERED, _P_NOANSWER, _P_CLEAR, _P_BACK = 1, 2, 3, 4, 5, 6
_P_PHONE_HANGUP, _P_AGENT_ANSWER, _P_AGENT_HANGUP = 4, 3, 5  # sim-caller's Hangup; sim-agents' Answer, Hangup


@dataclass(slots=True, kw_only=True)
class RingRecord:
    """One Dial() of an agent's phone, for the call's record."""

    agent: str | None  # the agent id whose phone CTI_ENDPOINT names; None for a phone nobody has
    endpoint: str
    at: float
    outcome: str | None = None  # answer, noanswer, busy, cancel, chanunavail
    ring_s: float | None = None

    def record(self) -> dict[str, Any]:
        return {"agent": self.agent, "endpoint": self.endpoint, "at": self.at, "outcome": self.outcome,
                "ring_s": self.ring_s}


@dataclass(slots=True, kw_only=True, eq=False)
class CtiCall(Call):
    """A caller of the CTI dialplan: what the IVR chose, and what routing did with them."""

    entry: str = ""
    tier: str = ""
    language: str = ""
    keys: str = ""  # what the caller presses in the IVR (as for ``cti ivr try``)
    session: AgiSession | None = None  # the FastAGI session while AGI() runs it
    agi_started: bool = False
    agi_pending: str | None = None  # the footprint's command waiting for the caller's key
    agi_pending_id: str = ""  # its CommandId, the same in its AGIExecStart and AGIExecEnd
    ivr_gone: bool = False  # the caller hung up while a FastAGI session ran: the call ends when it does
    endpoint: str = ""  # the Dial() in progress or bridged: CTI_ENDPOINT when it started
    outcome: str | None = None  # answered, abandoned_hold, abandoned_ringing, fallback, ivr_hangup, ivr_end ...
    enqueued_at: float | None = None  # the first CtiHold
    routed_at: float | None = None  # CTI routing ended: answered, fallback or the caller gone
    holds: int = 0  # CtiHold events sent
    rings: list[RingRecord] = field(default_factory=list)
    answered_by: str | None = None  # the agent id who answered a CTI Dial()


@dataclass(slots=True, eq=False)
class AgiSession:
    """One ``AGI(agi://…)`` of a call, run over TCP by :func:`run_session`."""

    call: CtiCall
    host: str
    port: int
    env: dict[str, str]
    channel: SimChannel
    reported: bool = False  # the caller's hangup is already in the AMI events
    detached: bool = False  # a Redirect took the channel out of AGI(): the session changes nothing now


def _agi_target(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 4573, parts.path.strip("/")


def _resource(endpoint: str) -> str:
    """``Local/1001@sim-agents/n`` -> ``1001@sim-agents/n``: Dial()'s DialString and DIALEDPEERNUMBER."""
    return endpoint.partition("/")[2] or endpoint


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _pressed(line: str, reply: str) -> str:
    """The keys a command's reply says the caller pressed (the DTMF Asterisk saw): WAIT FOR DIGIT and a
    barged-in STREAM FILE give one (as its code), GET DATA its digits."""
    words = tuple(w.upper() for w in parse_args(line)[:3])
    if not reply.startswith("200 result=") or not any(words[: len(v)] == v for v in _KEY_VERBS):
        return ""
    result = reply[len("200 result="):].split(" ", 1)[0]
    if words[0] == "GET":
        return result
    code = _int(result)
    return chr(code) if code is not None and code > 0 else ""


def _agi_result(reply: str, *, failed: bool) -> tuple[str, str]:
    """AGIExecEnd's ResultCode and Result, as res_agi reports its handler's return."""
    code = reply.partition(" ")[0]
    if code in _AGI_RESULTS:
        return code, _AGI_RESULTS[code]
    return ("-1", "Failure") if failed else ("200", "Success")


class CtiPbx(Pbx):
    """The engine with the CTI dialplan in front of its queues; a pure engine like :class:`Pbx`."""

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
        super().__init__(config=config, agents=agents, rng=rng, now=now, callers=callers,
                         random_arrivals=random_arrivals, max_records=max_records)
        self.entry_context = ENTRY_CONTEXT
        # Dial() rings a phone outside app_queue: its Ring's member is the phone's line, a membership of no
        # queue, so the code that takes a Ring (transfers, release) serves both.
        self._line_queue = Queue(name="", strategy="linear")
        self._lines = {p: Member(queue=self._line_queue, phone=p) for p in self.phones}
        if config.fallback_queue not in self.queues:
            q = self.queues[config.fallback_queue] = Queue(name=config.fallback_queue, strategy="leastrecent")
            for p in self.phones:
                m = Member(queue=q, phone=p)
                q.members.append(m)
                p.memberships.append(m)
            self.members.extend(q.members)
        self.agi_url = config.agi_url or DEFAULT_AGI
        self._agi = _agi_target(config.agi_url) if config.agi_url else None
        self._flow = _agi_target(self.agi_url)[2]
        self._command_ids = random.Random(config.seed + 1)  # AGI CommandIds: the engine's draws stay as they are
        self._due: list[AgiSession] = []
        self._cti_steps: dict[str, tuple[CallState, Callable[[CtiCall, float], None]]] = {
            "cti_agi": (CallState.IVR, self._agi_start),
            "dtmf_begin": (CallState.IVR, self._footprint_dtmf),
            "cti_ivr_end": (CallState.IVR, self._footprint_end),
            "hold_end": (CallState.HOLD, self._hold_end),
            "dial_answer": (CallState.DIALING, self._dial_answer),
            "dial_noanswer": (CallState.DIALING, self._dial_noanswer),
            "agent_wait": (CallState.CONNECTED, self._agent_wait),
            "talk_end": (CallState.CONNECTED, self._dial_agent_hangup),
            "caller_end": (CallState.CONNECTED, self._dial_caller_hangup),
            "transfer": (CallState.CONNECTED, self._blind_transfer),
        }

    # ---- callers ------------------------------------------------------------------------------

    def _random_arrival(self, now: float) -> None:
        """A ``vip_share`` of callers are VIPs (the directory's, if it has any); the rest as in observe mode."""
        cfg = self.config
        if self.rng.random() < cfg.vip_share:
            caller = self.rng.choice(self._vips) if self._vips else Caller(number=f"139{self.rng.randrange(10**8):08d}")
            self.place_call(caller.number, caller.name, now=now, priority=VIP_PRIORITY)
            return
        if self._known and self.rng.random() < 0.6:
            caller = self.rng.choice(self._known)
        else:
            caller = Caller(number=f"139{self.rng.randrange(10**8):08d}")
        self.place_call(caller.number, caller.name, now=now)

    def _weighted(self, shares: dict[str, float]) -> str:
        return self.rng.choices(list(shares), weights=list(shares.values()))[0]

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
        entry: str | None = None,
        tier: str | None = None,
        language: str | None = None,
        keys: str | None = None,
        talk: float | None = None,
    ) -> str:
        """A caller rings ``cti-entry``; returns the call's Linkedid.

        ``priority`` > 0 makes them a VIP (a ``vip_tiers`` tier); ``entry``, ``tier`` and ``language`` are the
        IVR's choice when the simulator plays it (drawn when None), ``keys`` what they press in a real one
        (``"2,1"``, ``"hangup"``: as for ``cti ivr try``; drawn from ``agi_scenarios`` when None). ``patience``:
        how long they stay before hanging up, counted after the IVR's first key, as in observe mode; ``talk``:
        how long an agent who answers talks to them (both drawn when None).
        """
        cfg = self.config
        name = name or "<unknown>"
        if patience is None:
            patience = self.rng.expovariate(1.0 / cfg.mean_patience_s)
            if self.local:
                patience = float(max(1, round(patience)))
        if talk is None:
            talk = self.rng.expovariate(1.0 / cfg.mean_talk_s)
            if self.local:
                talk = float(max(1, round(talk)))
        entry = entry if entry is not None else self._weighted(cfg.entry_points)
        tier = tier if tier is not None else (self.rng.choice(cfg.vip_tiers) if priority > 0 else "normal")
        language = language if language is not None else self._weighted(cfg.languages)
        if keys is None:
            if self.rng.random() < cfg.ivr_hangup_share:
                keys = "hangup"
            elif self._agi is not None:
                keys = self.rng.choice(cfg.agi_scenarios)
            else:
                keys = str(list(cfg.entry_points).index(entry) + 1) if entry in cfg.entry_points else "1"
        digits = "".join(k for k in parse_keys(keys) if len(k) == 1)
        self._call_seq += 1
        if self.local:
            phone, chan = self._local_pair("s", ENTRY_CONTEXT, now=now, linkedid=None)
        else:
            phone = None
            chan = self._new_channel("PJSIP/trunk", now=now, linkedid=None, state=4, context=ENTRY_CONTEXT)
            chan.set_caller(number, name)
        call = CtiCall(linkedid=chan.linkedid, caller=chan, phone=phone, number=number, name=name, priority=0,
                       seq=self._call_seq, created=now, talk=talk, stay=patience, digit=digits, route=[],
                       originate_action_id=originate_action_id, entry=entry, tier=tier, language=language,
                       keys=keys)
        self.calls[call.linkedid] = call
        self._arrive(call, now)
        return call.linkedid

    def _arrive(self, call: CtiCall, now: float) -> None:
        """The caller's channels come up and answer; AGI() starts half a second later (the observe IVR's pace)."""
        if call.phone is not None:
            variables = (("__TALK", _fmt(call.talk)), ("STAY", _fmt(call.stay)), ("PRE", "1"), ("DIGITS", call.digit))
            self._originate_local(call, now, variables)
        else:
            chan = call.caller
            self._ev("Newchannel", chan, now)
            self._newexten(chan, now, "Answer")
            self._newstate(chan, 6, now)
            self._originate_response(call, chan, now)
        steps = [(ANSWER_DELAY_S, "cti_agi"), (_T_SEND, "dtmf_send")]
        hangs_up = "hangup" in parse_keys(call.keys)
        if self._agi is None and not hangs_up:
            steps += [(_T_DTMF_BEGIN, "dtmf_begin"), (_T_DTMF_END, "cti_ivr_end")]
        for offset, kind in [*steps, (_T_PHONE_WAIT, "phone_wait")]:
            self._schedule(now + offset, kind, call)
        # A caller who hangs up in the footprint's IVR does so while its WAIT FOR DIGIT waits for them.
        stay = min(call.stay, 3.0) if hangs_up and self._agi is None else call.stay
        call.hangup_at = now + _T_PHONE_WAIT + stay
        self._schedule(call.hangup_at, "patience", call)

    def _phone_dtmf(self, call: CtiCall, now: float) -> None:
        """sim-caller's ExecIf(SendDTMF): the phone runs its own dialplan, whatever the PBX side does meanwhile."""
        phone, digits = call.phone, call.digit
        if phone is not None and self.channels.get(phone.name) is phone:
            self._newexten(phone, now, "ExecIf", f"{int(bool(digits))}?SendDTMF({digits},200)", priority=2)

    # ---- [cti-entry]: the IVR over AGI ------------------------------------------------------

    def _agi_start(self, call: CtiCall, now: float) -> None:
        chan = call.caller
        self._newexten(chan, now, "AGI", self.agi_url, priority=_P_AGI)
        call.agi_started = True
        if self._agi is not None:
            host, port, script = self._agi
            env = agi_env(script, host=host, port=port, caller=call.number, caller_name=call.name, channel=chan.name,
                          uniqueid=chan.uniqueid, agi_type="Local" if self.local else "PJSIP")
            session = AgiSession(call=call, host=host, port=port, env=env,
                                 channel=SimChannel(Scenario(keys=call.keys), env))
            call.session = session
            self._due.append(session)
            return
        self._agi_command(call, now, "ANSWER")
        call.agi_pending, call.agi_pending_id = _FOOTPRINT_WAIT, self._command_id()
        self._agi_exec("AGIExecStart", chan, now, call.agi_pending_id, _FOOTPRINT_WAIT)

    def _command_id(self) -> str:
        return str(self._command_ids.randrange(1, 2**31))

    def _agi_exec(self, event: str, chan: Channel, now: float, command_id: str, command: str, *,
                  result: tuple[str, str] | None = None) -> None:
        extra = {"ResultCode": result[0], "Result": result[1]} if result is not None else {}
        self._emit(event, "agi,all", now, chan.snapshot(), CommandId=command_id, Command=command, **extra)

    def _agi_command(self, call: CtiCall, now: float, command: str, *, variable: tuple[str, str] | None = None) -> None:
        """One AGI command that returns at once; a SET VARIABLE's VarSet between its start and its end."""
        chan, command_id = call.caller, self._command_id()
        self._agi_exec("AGIExecStart", chan, now, command_id, command)
        if variable is not None:
            self._varset(chan, now, *variable)
        self._agi_exec("AGIExecEnd", chan, now, command_id, command, result=("200", "Success"))

    def _write_vars(self, call: CtiCall, now: float, *, abandoned: bool = False) -> None:
        """The flow's end, as our IVR writes it: the CTI_* variables that have a value, in the interpreter's order
        (``ivr_flows.interpreter``; the flow's version is ``sim``)."""
        vip = call.tier in self.config.vip_tiers
        rank = len(self.config.vip_tiers) - self.config.vip_tiers.index(call.tier) if vip else 0
        values = (("CTI_FLOW", f"{self._flow}@sim"), ("CTI_OUTCOME", "abandoned" if abandoned else "route"),
                  ("CTI_ENTRY", "" if abandoned else call.entry), ("CTI_PRIORITY", "0" if abandoned else str(rank)),
                  ("CTI_TIER", "" if abandoned else call.tier), ("CTI_LANGUAGE", call.language))
        for name, value in values:
            if value:
                self._agi_command(call, now, f'SET VARIABLE {name} "{value}"', variable=(name, value))

    def _footprint_dtmf(self, call: CtiCall, now: float) -> None:
        if call.digit:
            self._ev("DTMFBegin", call.caller, now, "dtmf,all", Digit=call.digit[0], Direction="Received")

    def _footprint_end(self, call: CtiCall, now: float) -> None:
        """The footprint's key arrives: WAIT FOR DIGIT returns, the flow writes its end, AGI() returns."""
        chan = call.caller
        if call.digit:
            self._ev("DTMFEnd", chan, now, "dtmf,all", Digit=call.digit[0], DurationMs="100", Direction="Received")
        self._agi_exec("AGIExecEnd", chan, now, call.agi_pending_id, _FOOTPRINT_WAIT, result=("200", "Success"))
        call.agi_pending = None
        self._write_vars(call, now)
        self._varset(chan, now, "AGISTATUS", "SUCCESS")
        self._after_agi(call, now)

    def _after_agi(self, call: CtiCall, now: float) -> None:
        """``GotoIf(CTI_OUTCOME is "" or route ? cti-hold,s,1)``, else ``Hangup()``: the flow ended the call."""
        chan = call.caller
        variables = chan.variables  # what the IVR wrote, ours or a real one's
        call.entry, call.tier = variables.get("CTI_ENTRY", ""), variables.get("CTI_TIER", "")
        call.language = variables.get("CTI_LANGUAGE", "")
        held = variables.get("CTI_OUTCOME", "") in ("", "route")
        self._newexten(chan, now, "GotoIf", f"{int(held)}?{HOLD_CONTEXT},s,1", priority=_P_ROUTED)
        if held:
            self._enter_hold(call, now)
            return
        self._newexten(chan, now, "Hangup", priority=_P_ENTRY_HANGUP)
        call.outcome = "ivr_end"
        self._caller_side_hangup(call, now)
        self._finish(call, now)

    def take_sessions(self, clock: Callable[[], float], flush: Callable[[], None]) -> list[Coroutine[Any, Any, None]]:
        due, self._due = self._due, []
        return [run_session(s, self, clock, flush) for s in due]

    def agi_reply(self, session: AgiSession, line: str, out: list[str], *, now: float) -> None:
        """Asterisk's side of one command of a real session (``out``: the lines going back to the server)."""
        call = session.call
        if session.detached or call.state is CallState.ENDED:
            return
        chan, reply = call.caller, out[-1] if out else ""
        command_id = self._command_id()
        self._agi_exec("AGIExecStart", chan, now, command_id, line)
        newly = session.channel.hung_up and not session.reported
        if newly:  # the caller hung up during this command (the scenario's "hangup")
            session.reported = call.ivr_gone = True
            self._caller_leaves(call, now, via_ami=False)
        for digit in _pressed(line, reply):
            self._ev("DTMFBegin", chan, now, "dtmf,all", Digit=digit, Direction="Received")
            self._ev("DTMFEnd", chan, now, "dtmf,all", Digit=digit, DurationMs="100", Direction="Received")
        args = parse_args(line)
        setvar = [a.upper() for a in args[:2]] == ["SET", "VARIABLE"] and len(args) >= 4 and reply == "200 result=1"
        if setvar and "(" not in args[2]:  # a function (CHANNEL(language)) is no variable: no VarSet
            self._varset(chan, now, args[2], args[3])
        self._agi_exec("AGIExecEnd", chan, now, command_id, line, result=_agi_result(reply, failed=newly))
        if newly:
            self._hangup(call.phone, now)

    def agi_end(self, session: AgiSession, status: str, *, now: float) -> None:
        """AGI() returns (``AGISTATUS``): the dialplan goes on, or the channel the caller left hangs up."""
        call = session.call
        if session.detached or call.state is CallState.ENDED:
            return
        call.session = None
        chan = call.caller
        self._varset(chan, now, "AGISTATUS", status)
        if not call.ivr_gone:
            self._after_agi(call, now)
            return
        self._hangup_request(chan, now, soft=True)
        self._hangup(chan, now)
        call.outcome = "ivr_hangup"
        self._finish(call, now)

    # ---- [cti-hold] -----------------------------------------------------------------------------

    def _enter_hold(self, call: CtiCall, now: float) -> None:
        """``[cti-hold]``: the hold start is kept across returns, so the limit counts the whole wait."""
        chan = call.caller
        chan.context, chan.exten = HOLD_CONTEXT, "s"
        call.state = CallState.HOLD
        start = _int(chan.variables.get("CTI_HOLD_START")) or int(now)
        self._newexten(chan, now, "Set", f"CTI_HOLD_START={start}", priority=_P_START)
        self._varset(chan, now, "CTI_HOLD_START", str(start))
        left = self.config.hold_max_s - (int(now) - start)
        self._newexten(chan, now, "Set", f"CTI_HOLD_LEFT={left}", priority=_P_LEFT)
        self._varset(chan, now, "CTI_HOLD_LEFT", str(left))
        self._newexten(chan, now, "GotoIf", f"{int(left <= 0)}?fallback", priority=_P_CHECK)
        if left <= 0:
            self._fallback(call, now)
            return
        entry = chan.variables.get("CTI_ENTRY", "")
        uid = chan.uniqueid
        self._newexten(chan, now, "UserEvent", f"CtiHold,Uniqueid: {uid},Entry: {entry}", priority=_P_HOLD)
        ts = self._user_event(chan, now, "CtiHold", (("Uniqueid", uid), ("Entry", entry)))
        call.holds += 1
        if call.enqueued_at is None:
            call.enqueued_at = ts
        self._newexten(chan, now, "MusicOnHold", f",{left}", priority=_P_MOH)
        self._ev("MusicOnHoldStart", chan, now, Class="default")
        call.attempt += 1
        self._schedule(now + left, "hold_end", call, call.attempt)

    def _moh_stop(self, call: CtiCall, now: float) -> None:
        self._ev("MusicOnHoldStop", call.caller, now)

    def _hold_end(self, call: CtiCall, now: float) -> None:
        self._moh_stop(call, now)
        self._fallback(call, now)

    def _fallback(self, call: CtiCall, now: float) -> None:
        """``n(fallback)``: CtiFallback, then app_queue's Queue() and, after it, Hangup()."""
        chan, cfg = call.caller, self.config
        uid, queue = chan.uniqueid, cfg.fallback_queue
        self._newexten(chan, now, "UserEvent", f"CtiFallback,Uniqueid: {uid},Queue: {queue}", priority=_P_FALLBACK)
        ts = self._user_event(chan, now, "CtiFallback", (("Uniqueid", uid), ("Queue", queue)))
        call.outcome = "fallback"
        call.routed_at = ts
        call.route, call.after_route = [(queue, float(cfg.fallback_timeout_s), _P_QUEUE)], _P_QUEUE + 1
        self._next_queue(call, now)

    # ---- [cti-connect] ----------------------------------------------------------------------------

    def _phone_at(self, endpoint: str) -> Phone | None:
        e = endpoint.lower()
        return next((p for p in self.phones if e in (p.interface.lower(), p.state_interface.lower())), None)

    def _connect_context(self, call: CtiCall, now: float, *, announced: bool = False) -> None:
        """``[cti-connect]``: Dial(${CTI_ENDPOINT}), or straight back to hold without one. ``announced``: the
        Redirect's Newexten already showed priority 1, whose GotoIf then shows none (its place is unchanged)."""
        chan = call.caller
        chan.context, chan.exten, chan.priority = CONNECT_CONTEXT, "s", _P_ENDPOINT
        endpoint = chan.variables.get("CTI_ENDPOINT", "")
        check = f"{int(not endpoint)}?{HOLD_CONTEXT},s,1"
        if announced:
            chan.application, chan.application_data = "GotoIf", check
        else:
            self._newexten(chan, now, "GotoIf", check, priority=_P_ENDPOINT)
        if not endpoint:
            self._enter_hold(call, now)
            return
        ring = chan.variables.get("CTI_RING_S", "")
        timeout = _int(ring) or DEFAULT_RING_S
        self._newexten(chan, now, "Dial", f"{endpoint},{ring or DEFAULT_RING_S}", priority=_P_DIAL)
        self._local_vars(call, now, *((v, "") for v in _DIAL_VARS))
        call.endpoint = endpoint
        phone = self._phone_at(endpoint)
        if phone is None:
            call.rings.append(RingRecord(agent=None, endpoint=endpoint, at=self._last_ts, outcome="chanunavail",
                                         ring_s=0.0))
            self._local_vars(call, now, ("DIALSTATUS", "CHANUNAVAIL"))
            self._after_dial(call, now, "CHANUNAVAIL")
        elif phone.busy:
            self._dial_busy(call, phone, now)
        else:
            self._dial(call, phone, now, timeout)

    def _dial_out(self, call: CtiCall, p: Phone, now: float, *, answers: bool) -> Ring:
        """Dial() creates the agent's channel (a Local pair running their extension, or the PJSIP channel)
        and sends DialBegin; the ring and the segment start."""
        chan, peer = call.caller, _resource(call.endpoint)
        if p.local:
            out, dev = self._local_pair(p.exten, p.context, now=now, linkedid=call.linkedid)
            self._ev("Newchannel", out, now)
            self._ev("Newchannel", dev, now)
            self._varset(out, now, "DIALEDPEERNUMBER", peer)
            out.set_caller(p.exten, call.name)  # Dial() gives ;1 the dialled number, ;2 the caller (captures)
            out.set_connected(call.number, call.name)
            self._newexten(out, now, "AppDial", "(Outgoing Line)")
            self._ev("NewCallerid", out, now, **_CID_PRES)
            self._ev("NewConnectedLine", out, now)
            self._varset(dev, now, "DIALEDPEERNUMBER", peer)
            self._varset(dev, now, "__TALK", _fmt(call.talk))
            dev.set_caller(call.number, call.name)
            dev.set_connected(p.exten, call.name)
            self._ev("NewCallerid", dev, now, **_CID_PRES)
            self._ev("NewConnectedLine", dev, now)
            self._local_bridge(out, dev, now, optimization="No")
        else:
            out = self._new_channel(p.state_interface, now=now, linkedid=call.linkedid, state=0,
                                    context=AGENT_CONTEXT, exten="s")
            dev = None
            self._ev("Newchannel", out, now)
            out.set_caller(call.number, call.name)
            self._ev("NewCallerid", out, now, **_CID_PRES)
        ts = self._emit("DialBegin", "call,all", now, chan.snapshot(), out.snapshot("Dest"), DialString=peer)
        call.segments.append(Segment(queue=None, joined_at=ts, transferred_from=call.transferred_from))
        call.transferred_from = None
        call.rings.append(RingRecord(agent=p.agent.id, endpoint=call.endpoint, at=ts))
        return Ring(member=self._lines[p], out=out, dev=dev, started=now, answers=answers)

    def _dial(self, call: CtiCall, p: Phone, now: float, timeout: int) -> None:
        """The agent's phone rings: it answers after ``ring_s`` unless this ring is one of ``no_answer_prob``."""
        cfg = self.config
        answers = self.rng.random() >= cfg.no_answer_prob
        leg = self._dial_out(call, p, now, answers=answers)
        out, dev = leg.out, leg.dev
        if dev is not None:
            self._newexten(dev, now, "Ringing")
            self._newstate(out, 5, now)
            self._newexten(dev, now, "Wait", _fmt(cfg.ring_s) if answers else "30", priority=2)
        else:
            self._newstate(out, 5, now)
        self._local_vars(call, now, ("RINGTIME", "0"), ("RINGTIME_MS", "0"))
        self._dial_event("DialState", call, leg, now, DialStatus="RINGING")
        self._phone_status(p, now, DEVICE_INUSE if p.local else DEVICE_RINGING)
        p.call = call
        call.ring = leg
        call.state = CallState.DIALING
        call.attempt += 1
        if answers and cfg.ring_s < timeout:
            self._schedule(now + cfg.ring_s, "dial_answer", call, call.attempt)
        else:
            self._schedule(now + timeout, "dial_noanswer", call, call.attempt)

    def _dial_busy(self, call: CtiCall, p: Phone, now: float) -> None:
        """The agent's phone is in a call: it answers Busy(), Dial() returns BUSY at once."""
        leg = self._dial_out(call, p, now, answers=False)
        out, dev = leg.out, leg.dev
        self._newexten(dev, now, "Busy")
        self._dial_event("DialEnd", call, leg, now, DialStatus="BUSY")
        self._hangup_request(dev or out, now, 17)
        self._hangup(out, now, 17)
        self._hangup_request(dev, now, 16, soft=True)
        self._hangup(dev, now, 17)
        self._close_ring(call, leg, now, "busy")
        self._local_vars(call, now, ("DIALSTATUS", "BUSY"))
        self._after_dial(call, now, "BUSY")

    def _close_ring(self, call: CtiCall, leg: Ring, now: float, outcome: str, seg_outcome: str = "unanswered") -> None:
        ring, seg = call.rings[-1], self._segment(call)
        ring.outcome, ring.ring_s = outcome, round(now - leg.started, 3)
        if seg.answered_at is None:
            seg.left_at, seg.outcome = self._last_ts, seg_outcome
            seg.reason = None if seg_outcome == "abandoned" else _SEGMENT_REASONS[outcome]

    def _end_ring(self, call: CtiCall, now: float, outcome: str, seg_outcome: str = "unanswered") -> None:
        """The ring is over without an answer: the phone is free again."""
        leg = call.ring
        assert leg is not None
        call.ring = None
        self._release(leg, now, wrapup=False)
        self._close_ring(call, leg, now, outcome, seg_outcome)

    def _hangup_agent_channels(self, leg: Ring, now: float, cause: int) -> None:
        out, dev = leg.out, leg.dev
        self._hangup_request(dev or out, now, cause)
        self._hangup(out, now, cause)
        self._hangup_request(dev, now, 16, soft=True)
        self._hangup(dev, now, cause)

    def _dial_noanswer(self, call: CtiCall, now: float, cause: int = 0) -> None:
        """Dial()'s timeout: NOANSWER, the agent's channels go, CtiNoAnswer and back to hold. An AMI Hangup
        of the ringing agent's channel ends the ring the same way, with cause 16."""
        leg = call.ring
        assert leg is not None
        self._dial_event("DialEnd", call, leg, now, DialStatus="NOANSWER")
        self._hangup_agent_channels(leg, now, cause)
        self._end_ring(call, now, "noanswer")
        self._local_vars(call, now, ("DIALSTATUS", "NOANSWER"))
        self._after_dial(call, now, "NOANSWER")

    def _cancel_dial(self, call: CtiCall, now: float, seg_outcome: str = "unanswered") -> None:
        """The caller leaves Dial() while the phone rings (a Redirect, or their hangup): DialEnd CANCEL."""
        leg = call.ring
        assert leg is not None
        self._dial_event("DialEnd", call, leg, now, DialStatus="CANCEL")
        self._hangup_agent_channels(leg, now, 16)
        self._end_ring(call, now, "cancel", seg_outcome)
        self._local_vars(call, now, ("DIALSTATUS", "CANCEL"))

    def _after_dial(self, call: CtiCall, now: float, status: str) -> None:
        """Dial() returned unanswered: CtiNoAnswer (Agent is CTI_AGENT), CTI_ENDPOINT cleared, back to hold."""
        chan = call.caller
        uid, agent = chan.uniqueid, chan.variables.get("CTI_AGENT", "")
        self._newexten(chan, now, "GotoIf", "0?done", priority=_P_ANSWERED)
        self._newexten(chan, now, "UserEvent", f"CtiNoAnswer,Uniqueid: {uid},Agent: {agent},Status: {status}",
                       priority=_P_NOANSWER)
        self._user_event(chan, now, "CtiNoAnswer", (("Uniqueid", uid), ("Agent", agent), ("Status", status)))
        self._newexten(chan, now, "Set", "CTI_ENDPOINT=", priority=_P_CLEAR)
        self._varset(chan, now, "CTI_ENDPOINT", "")
        self._newexten(chan, now, "Goto", f"{HOLD_CONTEXT},s,1", priority=_P_BACK)
        self._enter_hold(call, now)

    def _dial_answer(self, call: CtiCall, now: float) -> None:
        """The agent answers: DialEnd ANSWER, the bridge, and the talk (or a transfer) as in observe mode."""
        leg = call.ring
        assert leg is not None
        out, dev, chan, p = leg.out, leg.dev, call.caller, leg.member.phone
        if dev is not None:
            self._newexten(dev, now, "Answer", priority=_P_AGENT_ANSWER)
            self._newstate(dev, 6, now)
        self._newstate(out, 6, now)
        self._local_vars(call, now, ("DIALSTATUS", "ANSWER"), ("DIALEDPEERNAME", out.name),
                         ("DIALEDPEERNUMBER", _resource(call.endpoint)))
        if dev is not None:
            out.exten = ""  # the answered ;1 has left the extension (the captures' DestExten is empty)
        ts = self._emit("DialEnd", "call,all", now, chan.snapshot(), out.snapshot("Dest"), DialStatus="ANSWER")
        call.bridge_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        out.bridge_id = chan.bridge_id = call.bridge_id
        self._bridge("BridgeCreate", now, call.bridge_id, 0)
        if dev is not None:
            self._newexten(out, now, "AppDial", "(Outgoing Line)")
        self._bridge("BridgeEnter", now, call.bridge_id, 1, out)
        self._bridge("BridgeEnter", now, call.bridge_id, 2, chan)
        if call.blind_var:
            self._varset(chan, now, "BLINDTRANSFER", "")
            call.blind_var = False
        if dev is not None:
            self._varset(out, now, "BRIDGEPEER", chan.name)
            self._varset(chan, now, "BRIDGEPEER", out.name)
        else:
            self._phone_status(p, now, DEVICE_INUSE)
        seg = self._segment(call)
        seg.answered_at = seg.left_at = ts
        seg.outcome, seg.agent = "answered", p.agent.name
        ring = call.rings[-1]
        ring.outcome, ring.ring_s = "answer", round(now - leg.started, 3)
        call.outcome, call.answered_by = "answered", p.agent.id
        call.routed_at = ts
        call.state = CallState.CONNECTED
        call.talking, call.ring = leg, None
        call.connected = now
        call.hangup_at = None
        self._schedule_talk(call, now, dev is not None)

    def _dial_end_vars(self, call: Call, now: float) -> None:
        """What Dial() sets as an answered call leaves it: ANSWEREDTIME, DIALEDTIME (the caller's), DIALSTATUS."""
        t = now - call.created
        secs, ms = str(int(t)), str(int(t * 1000))
        self._local_vars(call, now, ("ANSWEREDTIME", secs), ("ANSWEREDTIME_MS", ms), ("DIALEDTIME", secs),
                         ("DIALEDTIME_MS", ms), ("DIALSTATUS", "ANSWER"))

    def _dial_agent_hangup(self, call: CtiCall, now: float, *, via_ami: bool = False) -> None:
        """The agent hangs up: the bridge ends, Dial() returns and the caller's channels hang up (the capture)."""
        leg = call.talking
        assert leg is not None
        out, dev, chan, phone = leg.out, leg.dev, call.caller, call.phone
        if dev is not None:
            if not via_ami:
                self._newexten(dev, now, "Hangup", priority=_P_AGENT_HANGUP)
            self._hangup_request(dev, now, soft=True)
            self._hangup_request(out, now)
            self._hangup(dev, now)
            self._varset(out, now, "BRIDGEPEER", "")
            self._varset(chan, now, "BRIDGEPEER", "")
            self._release(leg, now, wrapup=False)
            self._bridge("BridgeLeave", now, call.bridge_id, 1, out)
            self._hangup(out, now)
        else:
            self._hangup_request(out, now)
            self._bridge("BridgeLeave", now, call.bridge_id, 1, out)
            self._hangup(out, now)
            self._release(leg, now, wrapup=False)
        self._bridge("BridgeLeave", now, call.bridge_id, 0, chan)
        self._segment(call).completed_at = self._last_ts
        self._dial_end_vars(call, now)
        call.talking = None
        out.bridge_id = chan.bridge_id = ""
        if phone is not None:
            self._hangup_request(chan, now, soft=True)
            self._varset(phone, now, "CHANLOCALSTATUS", "ANSWER")
            self._hangup_request(phone, now)
            self._hangup(chan, now)
            self._bridge("BridgeDestroy", now, call.bridge_id, 0)
            self._hangup_request(phone, now, soft=True)
            self._hangup(phone, now)
        else:
            self._bridge("BridgeDestroy", now, call.bridge_id, 0)
            self._hangup(chan, now)
        self._finish(call, now)

    def _dial_caller_hangup(self, call: CtiCall, now: float, *, via_ami: bool = False) -> None:
        """The caller hangs up while talking: the bridge ends from their side, then the agent's channels go."""
        leg = call.talking
        assert leg is not None
        out, dev, chan, phone = leg.out, leg.dev, call.caller, call.phone
        if phone is not None and not via_ami:
            self._newexten(phone, now, "Hangup", priority=_P_PHONE_HANGUP)
        self._hangup_request(phone, now, soft=True)
        self._hangup_request(chan, now)
        self._hangup(phone, now)
        if dev is not None:
            self._varset(out, now, "BRIDGEPEER", "")
            self._varset(chan, now, "BRIDGEPEER", "")
        self._bridge("BridgeLeave", now, call.bridge_id, 1, chan)
        self._bridge("BridgeLeave", now, call.bridge_id, 0, out)
        self._bridge("BridgeDestroy", now, call.bridge_id, 0)
        out.bridge_id = chan.bridge_id = ""
        self._segment(call).completed_at = self._last_ts
        self._dial_end_vars(call, now)
        if phone is not None:
            self._hangup_request(chan, now, soft=True)
        self._hangup(chan, now)
        self._hangup_request(dev, now)
        self._hangup(out, now)
        self._hangup_request(dev, now, soft=True)
        self._hangup(dev, now)
        call.talking = None
        self._release(leg, now, wrapup=False)
        self._finish(call, now)

    def _leave_connected(self, call: CtiCall, now: float) -> None:
        """A Redirect takes the caller out of the Dial() bridge: the agent's part ends, their channels go."""
        leg = call.talking
        assert leg is not None
        chan = call.caller
        self._bridge("BridgeLeave", now, call.bridge_id, 1, chan)
        self._bridge("BridgeLeave", now, call.bridge_id, 0, leg.out)
        self._bridge("BridgeDestroy", now, call.bridge_id, 0)
        leg.out.bridge_id = chan.bridge_id = ""
        self._segment(call).completed_at = self._last_ts
        self._dial_end_vars(call, now)
        self._hangup_request(leg.dev or leg.out, now)
        self._hangup(leg.out, now)
        self._hangup(leg.dev, now)
        call.talking = None
        self._release(leg, now, wrapup=False)

    # ---- the caller hangs up ---------------------------------------------------------------------

    def _caller_leaves(self, call: CtiCall, now: float, *, via_ami: bool) -> None:
        """sim-caller's Hangup() on the phone: its ;1 asks to go, the PBX side is told."""
        if call.phone is not None and not via_ami:
            self._newexten(call.phone, now, "Hangup", priority=_P_PHONE_HANGUP)
        self._hangup_request(call.phone, now, soft=True)
        self._hangup_request(call.caller, now)

    def _caller_gone(self, call: CtiCall, now: float, *, via_ami: bool) -> None:
        state = call.state
        if state is CallState.IVR:
            self._ivr_hangup(call, now, via_ami=via_ami)
        elif state is CallState.HOLD:
            self._hold_abandon(call, now, via_ami=via_ami)
        elif state is CallState.DIALING:
            self._ringing_abandon(call, now, via_ami=via_ami)
        elif state is CallState.CONNECTED:
            self._dial_caller_hangup(call, now, via_ami=via_ami)

    def _ivr_hangup(self, call: CtiCall, now: float, *, via_ami: bool) -> None:
        """Hung up during the IVR (ctiedge's 501): the pending command fails, the flow still writes its end on
        the dead channel, AGISTATUS=HANGUP. A real session is told and ends the call when it returns."""
        self._caller_leaves(call, now, via_ami=via_ami)
        chan = call.caller
        if call.session is not None:
            call.session.reported = call.ivr_gone = True
            call.session.channel.hang_up()
            self._hangup(call.phone, now)
            return
        if call.agi_pending is not None:
            self._agi_exec("AGIExecEnd", chan, now, call.agi_pending_id, call.agi_pending, result=("-1", "Failure"))
            call.agi_pending = None
        self._hangup(call.phone, now)
        if call.agi_started:
            self._write_vars(call, now, abandoned=True)
            self._varset(chan, now, "AGISTATUS", "HANGUP")
        if self.local:
            self._hangup_request(chan, now, soft=True)
        self._hangup(chan, now)
        call.outcome = "ivr_hangup"
        self._finish(call, now)

    def _hold_abandon(self, call: CtiCall, now: float, *, via_ami: bool) -> None:
        """Gave up on hold (ctiedge's 502): the music stops, both halves hang up."""
        self._caller_leaves(call, now, via_ami=via_ami)
        self._moh_stop(call, now)
        if self.local:
            self._hangup_request(call.caller, now, soft=True)
        self._hangup(call.caller, now)
        self._hangup(call.phone, now)
        call.outcome = "abandoned_hold"
        call.routed_at = self._last_ts
        self._finish(call, now)

    def _ringing_abandon(self, call: CtiCall, now: float, *, via_ami: bool) -> None:
        """Gave up while the agent's phone rang (ctiedge's 504): DialEnd CANCEL, every channel goes."""
        leg = call.ring
        assert leg is not None
        self._caller_leaves(call, now, via_ami=via_ami)
        self._dial_event("DialEnd", call, leg, now, DialStatus="CANCEL")
        self._hangup(call.phone, now)
        self._hangup_agent_channels(leg, now, 16)
        self._end_ring(call, now, "cancel", "abandoned")
        self._local_vars(call, now, ("DIALSTATUS", "CANCEL"))
        if self.local:
            self._hangup_request(call.caller, now, soft=True)
        self._hangup(call.caller, now)
        call.outcome = "abandoned_ringing"
        call.routed_at = self._last_ts
        self._finish(call, now)

    # ---- time and client controls ------------------------------------------------------------------

    def _fire(self, timer: _Timer) -> None:
        call, kind, t = timer.call, timer.kind, timer.at
        if not isinstance(call, CtiCall) or call.state is CallState.ENDED:
            super()._fire(timer)
            return
        if kind == "dtmf_send":
            self._phone_dtmf(call, t)
            return
        if kind == "patience":
            if call.hangup_at == t and call.state in _CTI_STATES:
                self._caller_gone(call, t, via_ami=False)
            else:
                super()._fire(timer)  # waiting in the fallback queue: app_queue's abandon
            return
        step = self._cti_steps.get(kind)
        if step is None or step[0] is not call.state:
            super()._fire(timer)
        elif timer.token == call.attempt:
            step[1](call, t)

    def hangup(self, channel: str, *, now: float) -> bool:
        """AMI Hangup in the CTI contexts: the caller's channels end the call, the agent's end the ring or talk."""
        found = self._call_of(channel)
        if found is None:
            return super().hangup(channel, now=now)
        call, chan = found
        if not isinstance(call, CtiCall) or call.state not in _CTI_STATES:
            return super().hangup(channel, now=now)
        if chan is call.caller or chan is call.phone:
            self._caller_gone(call, now, via_ami=True)
            return True
        if call.ring is not None and chan in (call.ring.out, call.ring.dev):
            self._dial_noanswer(call, now, cause=16)
        elif call.talking is not None and chan in (call.talking.out, call.talking.dev):
            self._dial_agent_hangup(call, now, via_ami=True)
        else:
            return super().hangup(channel, now=now)
        return True

    def redirect(self, channel: str, context: str, exten: str, *, now: float, priority: int = 1) -> bool:
        """AMI Redirect: to ``cti-connect`` (Dial the agent in CTI_ENDPOINT) or ``cti-hold`` (hold again), at
        ``s,1`` whatever the extension and priority; anything else as in observe mode (a queue, else parked).

        A Redirect while Dial() rings cancels that ring and dials CTI_ENDPOINT as it is now, so two servers'
        Redirects both succeed and the second wins, as Asterisk does (ctiedge's 505)."""
        found = self._call_of(channel)
        if found is None:
            return super().redirect(channel, context, exten, now=now, priority=priority)
        call, chan = found
        if not isinstance(call, CtiCall) or chan is not call.caller:
            return super().redirect(channel, context, exten, now=now, priority=priority)
        if context not in (HOLD_CONTEXT, CONNECT_CONTEXT):
            if call.outcome is None:
                call.outcome, call.routed_at = "redirected", now
            return super().redirect(channel, context, exten, now=now, priority=priority)
        if context == CONNECT_CONTEXT and call.state is CallState.DIALING:
            chan.context, chan.exten, chan.priority = CONNECT_CONTEXT, "s", _P_ENDPOINT
            self._newexten(chan, now, chan.application, chan.application_data)  # the moved snapshot, old app
            self._cancel_dial(call, now)
            call.attempt += 1
            self._connect_context(call, now, announced=True)
            return True
        self._leave_for_redirect(call, chan, now)
        call.queue = None
        call.attempt += 1
        if context == CONNECT_CONTEXT:
            self._connect_context(call, now)
        else:
            self._enter_hold(call, now)
        self._dispatch(now)
        return True

    def _leave_for_redirect(self, call: Call, chan: Channel, now: float) -> None:
        if not isinstance(call, CtiCall):
            super()._leave_for_redirect(call, chan, now)
        elif call.state is CallState.HOLD:
            self._moh_stop(call, now)
        elif call.state is CallState.DIALING:
            self._cancel_dial(call, now)
        elif call.state is CallState.CONNECTED:
            self._leave_connected(call, now)
        elif call.state is CallState.IVR:
            self._leave_ivr(call, now)
        else:
            super()._leave_for_redirect(call, chan, now)

    def _leave_ivr(self, call: CtiCall, now: float) -> None:
        """A Redirect during AGI(): the footprint's command fails; a real session is told the channel is gone."""
        if call.session is not None:
            call.session.detached = True
            call.session.channel.hang_up()
            call.session = None
        elif call.agi_pending is not None:
            self._agi_exec("AGIExecEnd", call.caller, now, call.agi_pending_id, call.agi_pending,
                           result=("-1", "Failure"))
            call.agi_pending = None

    # ---- the observe engine's hooks for a Dial() leg ---------------------------------------------------

    def _is_line(self, leg: Ring) -> bool:
        return leg.member.queue is self._line_queue

    def _complete(self, call: Call, leg: Ring, now: float, reason: str) -> float:
        """A Dial() leg's part ends without app_queue's AgentComplete (a transfer of a CTI-connected call)."""
        if not self._is_line(leg):
            return super()._complete(call, leg, now, reason)
        ts = self._last_ts
        self._segment(call).completed_at = ts
        return ts

    def _queue_end_vars(self, call: Call, now: float, answered: float | None) -> None:
        if call.state is CallState.CONNECTED:  # a transfer takes the caller out of Dial(), not Queue()
            self._dial_end_vars(call, now)
        else:
            super()._queue_end_vars(call, now, answered)

    def _release(self, leg: Ring, now: float, *, wrapup: bool) -> None:
        """A Dial() leg has no app_queue wrap-up; the phone it frees may take a fallback-queue caller at once."""
        if not self._is_line(leg):
            super()._release(leg, now, wrapup=wrapup)
            return
        super()._release(leg, now, wrapup=False)
        self._schedule(now, "dispatch")

    # ---- records -------------------------------------------------------------------------------

    def _record(self, call: Call) -> dict[str, Any]:
        """``cti replay``'s shape, a Dial() being a hand-off segment (so its outcome and wait count every segment,
        as the call model's do), and a ``cti`` part: what the IVR chose and what routing did."""
        record = super()._record(call)
        segments = call.segments
        if segments:
            answered = next((s for s in segments if s.answered_at is not None), None)
            if answered is None:
                record["outcome"] = "abandoned" if segments[-1].outcome == "abandoned" else "unanswered"
            end = answered.answered_at if answered is not None else segments[-1].left_at
            record["wait_s"] = round(end - segments[0].joined_at, 3) if end is not None else None
        if isinstance(call, CtiCall):
            hold = None
            if call.enqueued_at is not None and call.routed_at is not None:
                hold = round(call.routed_at - call.enqueued_at, 3)
            record["cti"] = {
                "entry": call.entry,
                "tier": call.tier,
                "language": call.language,
                "outcome": call.outcome,
                "enqueued_at": call.enqueued_at,
                "hold_s": hold,
                "holds": call.holds,
                "rings": [r.record() for r in call.rings],
                "answered_by": call.answered_by,
            }
        return record


async def run_session(session: AgiSession, pbx: CtiPbx, clock: Callable[[], float], flush: Callable[[], None],
                      *, timeout: float = SESSION_TIMEOUT_S) -> None:
    """One call's FastAGI session over TCP: each command's AMI events as it is answered, AGISTATUS at the end
    (SUCCESS, HANGUP when the caller hung up, FAILURE when the server could not be reached or stopped)."""

    def on_reply(line: str, out: list[str]) -> None:
        pbx.agi_reply(session, line, out, now=clock())
        flush()

    status = "SUCCESS"
    try:
        await place_call(session.host, session.port, session.env, channel=session.channel, on_reply=on_reply,
                         timeout=timeout)
    except (OSError, TimeoutError) as exc:
        log.warning("sim.agi_failed", channel=session.env.get("agi_channel"), error=repr(exc))
        status = "FAILURE"
    except Exception:  # a bug in one session must not leave its caller in AGI() for ever
        log.exception("sim.agi_session_failed", channel=session.env.get("agi_channel"))
        status = "FAILURE"
    if session.channel.hung_up:
        status = "HANGUP"
    pbx.agi_end(session, status, now=clock())
    flush()
