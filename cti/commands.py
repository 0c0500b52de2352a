"""What an agent's client may ask the server to do, checked, then done through the AMI client.

One :class:`CommandExecutor` serves HTTP (``POST /api/agents/{id}/commands``) and the WebSocket (text
frames); every command gets one answer: the HTTP reply, and a ``command.result`` envelope to the
agent on every transport. AMI actions go through :meth:`cti.ami.client.AmiClient.action`: each has
a reply and a timeout and is never re-sent (an ``Originate`` sent twice rings a phone twice), so a
command that timed out says so and the client decides.

States: in CTI routing mode they are the router's (``ready``, ``not_ready`` with a routing-config
reason, ``logged_out``, ``wrap_up`` ended early). In observe mode app_queue owns them, and only
ready / not ready exist, as ``QueuePause`` in every queue of the agent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Annotated, Any, Literal, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from cti.agents import AgentRegistry, device_of
from cti.ami.codec import Message
from cti.ami.errors import AmiActionError, AmiConnectionError, AmiError, AmiTimeout
from cti.config import AgentConfig, CommandsConfig
from cti.model.reducer import CallModel
from cti.model.state import Call
from cti.router.agent_state import AgentStateError, UnknownAgentError
from routing.model import AgentStatus

__all__ = ["Command", "CommandError", "CommandExecutor", "parse_command"]

log = structlog.get_logger(__name__)

#: A number that may be dialled: digits and the keypad's symbols, never a space, CR, LF or ``@``.
NUMBER = r"^\+?[0-9*#]{1,32}$"
_CODE = r"^[A-Za-z0-9_.-]{1,64}$"
_LINKEDID = r"^[0-9A-Za-z_.-]{1,64}$"
MAX_WRAP_UP_EXTENSION_S = 3600


class _Cmd(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str | None = Field(None, max_length=64, description="the client's id for the answer to name")


class Ready(_Cmd):
    command: Literal["ready", "login", "end_wrap_up"]


class NotReady(_Cmd):
    command: Literal["not_ready"]
    reason: str = Field(pattern=_CODE)


class Logout(_Cmd):
    command: Literal["logout"]


class ExtendWrapUp(_Cmd):
    command: Literal["extend_wrap_up"]
    seconds: int = Field(30, ge=1, le=MAX_WRAP_UP_EXTENSION_S, description="added to the wrap-up's end")


class Hangup(_Cmd):
    command: Literal["hangup"]
    linkedid: str | None = Field(None, pattern=_LINKEDID, description="default: the call the agent is on")


class Transfer(_Cmd):
    command: Literal["transfer"]
    linkedid: str | None = Field(None, pattern=_LINKEDID)
    to_agent: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    to_number: str | None = Field(None, pattern=NUMBER)
    to_entry_point: str | None = Field(None, pattern=_CODE)


class Dial(_Cmd):
    command: Literal["dial"]
    number: str = Field(pattern=NUMBER)


class Disposition(_Cmd):
    command: Literal["disposition"]
    linkedid: str = Field(pattern=_LINKEDID)
    code: str = Field(pattern=_CODE)


Command = Annotated[Ready | NotReady | Logout | ExtendWrapUp | Hangup | Transfer | Dial | Disposition,
                    Field(discriminator="command")]
_COMMAND: TypeAdapter[Command] = TypeAdapter(Command)


class CommandError(Exception):
    """A command refused or failed: ``error_id`` for programs, the message for people."""

    def __init__(self, status: int, error_id: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.error_id, self.details = status, error_id, details

    def body(self) -> dict[str, Any]:
        return {"error_id": self.error_id, "message": str(self), "details": self.details}


def parse_command(data: Any) -> Command:
    """A command from JSON; a clear 400 naming the field otherwise."""
    try:
        return _COMMAND.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "command"
        raise CommandError(400, "bad-command", f"{where}: {first['msg']}",
                           known=["ready", "not_ready", "logout", "login", "end_wrap_up", "extend_wrap_up", "hangup",
                                  "transfer", "dial", "disposition"]) from None


class Actions(Protocol):
    def action(self, name: str, fields: Mapping[str, str]) -> Awaitable[Message]: ...


class States(Protocol):
    """The router's manual steps (:class:`cti.router.controller.RoutingController`)."""

    async def set_ready(self, agent_id: str) -> None: ...
    async def set_not_ready(self, agent_id: str, reason: str) -> None: ...
    async def log_out(self, agent_id: str) -> None: ...
    async def extend_wrap_up(self, agent_id: str, seconds: int) -> float: ...
    async def status(self, agent_id: str) -> AgentStatus | None: ...


class Dispositions(Protocol):
    async def set(self, linkedid: str, agent_id: str, code: str) -> None: ...


class CommandExecutor:
    def __init__(self, *, agents: AgentRegistry, model: CallModel, actions: Actions, config: CommandsConfig,
                 states: States | None, dispositions: Dispositions, hold_context: str = "cti-hold") -> None:
        self._agents = agents
        self._model = model
        self._actions = actions
        self._config = config
        self._states = states
        self._dispositions = dispositions
        self._hold_context = hold_context

    async def execute(self, agent_id: str, command: Command) -> dict[str, Any]:
        """Do it, or raise :class:`CommandError`; returns what was done (the ``command.result``)."""
        agent = self._agents.get(agent_id)
        if agent is None:
            raise CommandError(404, "no-such-agent", "unknown agent", agent=agent_id)
        try:
            done = await self._run(agent, command)
        except CommandError:
            raise
        except AgentStateError as exc:
            raise CommandError(409, "illegal-transition", str(exc), current=exc.current, wanted=exc.wanted) from None
        except UnknownAgentError as exc:
            raise CommandError(404, "no-such-agent", str(exc), agent=agent_id) from None
        except AmiTimeout:
            raise CommandError(504, "ami-timeout", "Asterisk did not answer in time; the action was not sent "
                               "again and may have happened: check before retrying") from None
        except AmiActionError as exc:
            raise CommandError(502, "ami-refused", f"Asterisk refused {exc.action}: {exc.message}") from None
        except (AmiConnectionError, AmiError) as exc:
            raise CommandError(503, "ami-unavailable", f"Asterisk is not connected: {exc}") from None
        log.info("command.done", agent=agent_id, command=command.command, **{k: v for k, v in done.items()
                                                                             if k != "command"})
        return {"command": command.command, "id": command.id, **done}

    async def _run(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        if isinstance(cmd, Ready | NotReady | Logout | ExtendWrapUp):
            return await self._state(agent, cmd)
        if isinstance(cmd, Hangup):
            call = self._call(agent, cmd.linkedid)
            channel = self._agent_leg(call, agent)
            await self._actions.action("Hangup", {"Channel": channel})
            return {"linkedid": call.linkedid, "channel": channel}
        if isinstance(cmd, Transfer):
            return await self._transfer(agent, cmd)
        if isinstance(cmd, Dial):
            await self._actions.action("Originate", {
                "Channel": agent.interface, "Context": self._config.dial_context, "Exten": cmd.number,
                "Priority": "1", "CallerID": f"{agent.name} <{agent.extension or agent.id}>"[:80], "Async": "true",
                "Timeout": str(int(self._config.dial_timeout_s * 1000))})
            return {"number": cmd.number}
        if cmd.code not in self._config.dispositions:
            raise CommandError(400, "bad-code", f"unknown disposition code {cmd.code!r}",
                               known=list(self._config.dispositions))
        self._call(agent, cmd.linkedid, ended_ok=True)
        await self._dispositions.set(cmd.linkedid, agent.id, cmd.code)
        return {"linkedid": cmd.linkedid, "code": cmd.code}

    async def _state(self, agent: AgentConfig, cmd: Ready | NotReady | Logout | ExtendWrapUp) -> dict[str, Any]:
        if self._states is not None:
            if isinstance(cmd, ExtendWrapUp):
                ends_at = await self._states.extend_wrap_up(agent.id, cmd.seconds)
                return {"state": "wrap_up", "wrap_up_ends_at": ends_at}
            if isinstance(cmd, NotReady):
                try:
                    await self._states.set_not_ready(agent.id, cmd.reason)
                except ValueError as exc:
                    raise CommandError(400, "bad-reason", str(exc), reason=cmd.reason) from None
                return {"state": "not_ready", "reason": cmd.reason}
            if isinstance(cmd, Logout):
                await self._states.log_out(agent.id)
                return {"state": "logged_out"}
            if cmd.command == "end_wrap_up":  # "ready" says the same from more states; this one only ends wrap-up
                current = await self._states.status(agent.id)
                if current != "wrap_up":
                    raise CommandError(409, "illegal-transition", f"agent {agent.id!r} is {current}, not in wrap-up: "
                                       f"nothing to end (ready makes them ready)", current=current, wanted="ready")
            await self._states.set_ready(agent.id)
            return {"state": "ready"}
        # Observe mode: app_queue's pause, in every queue of the member.
        if isinstance(cmd, Logout | ExtendWrapUp) or cmd.command in ("login", "end_wrap_up"):
            raise CommandError(409, "not-in-observe-mode", f"{cmd.command} needs CTI routing mode (routing.mode: "
                               f"cti); in observe mode app_queue's queues.conf owns membership and wrap-up")
        reason = cmd.reason if isinstance(cmd, NotReady) else None
        fields = {"Interface": agent.interface, "Paused": "false" if reason is None else "true"}
        if reason is not None:
            fields["Reason"] = reason
        await self._actions.action("QueuePause", fields)
        return {"state": "ready" if reason is None else "not_ready", "reason": reason}

    def _call(self, agent: AgentConfig, linkedid: str | None, *, ended_ok: bool = False) -> Call:
        """The named call, which must be the agent's; or the one the agent is on (or that rings them)."""
        if linkedid is not None:
            call = self._model.calls.get(linkedid) or (self._model.ended.get(linkedid) if ended_ok else None)
            if call is None or not call.involves(agent.id):
                raise CommandError(404, "no-such-call", "no call with this id is yours", linkedid=linkedid)
            return call
        for call in self._model.calls.values():
            talking = call.talking
            if talking is not None and talking.agent_id == agent.id:
                return call
        for call in self._model.calls.values():
            if any(o.agent_id == agent.id for o in call.offers.values()):
                return call
        raise CommandError(409, "no-call", "you are on no call")

    def _agent_leg(self, call: Call, agent: AgentConfig) -> str:
        """The agent's own channel on the call: hanging it up ends their part, not the caller's journey
        (a caller transferred on is not cut off)."""
        for leg in call.legs.values():
            owner = self._agents.by_device(device_of(leg.channel))
            if owner is not None and owner.id == agent.id:
                return leg.channel
        raise CommandError(409, "no-call", "your phone is not on this call", linkedid=call.linkedid)

    def _caller_leg(self, call: Call) -> str:
        leg = call.legs.get(call.linkedid) or next(iter(call.legs.values()), None)
        if leg is None:
            raise CommandError(409, "no-call", "the call has no channel left", linkedid=call.linkedid)
        return leg.channel

    async def _transfer(self, agent: AgentConfig, cmd: Transfer) -> dict[str, Any]:
        targets = [t for t in (cmd.to_agent, cmd.to_number, cmd.to_entry_point) if t is not None]
        if len(targets) != 1:
            raise CommandError(400, "bad-command", "name exactly one of to_agent, to_number, to_entry_point")
        call = self._call(agent, cmd.linkedid)
        channel = self._caller_leg(call)
        if cmd.to_agent is not None:
            target = self._agents.get(cmd.to_agent)
            if target is None or not target.extension:
                raise CommandError(404, "no-such-agent", "no agent with an extension by this id", agent=cmd.to_agent)
            context, exten = self._config.transfer_context, target.extension
        elif cmd.to_number is not None:
            context, exten = self._config.dial_context, cmd.to_number
        else:
            if self._states is None:
                raise CommandError(409, "not-in-observe-mode", "a transfer to an entry point needs CTI routing mode")
            assert cmd.to_entry_point is not None
            await self._actions.action("Setvar", {"Channel": channel, "Variable": "CTI_ENTRY",
                                                  "Value": cmd.to_entry_point})
            context, exten = self._hold_context, "s"
        await self._actions.action("Redirect", {"Channel": channel, "Context": context, "Exten": exten,
                                                "Priority": "1"})
        return {"linkedid": call.linkedid, "channel": channel, "context": context, "exten": exten}
