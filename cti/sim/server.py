"""An AMI TCP server in front of the simulated PBX, answering as Asterisk 22's manager.c does.

Responses, list shapes (``EventList: start`` ... ``*Complete``) and error
messages are taken from main/manager.c and apps/app_queue.c. Every task it
starts (the simulation clock, one per connection) is tracked, cancelled and
awaited by :meth:`AmiServer.close`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence

import structlog

from cti.ami.codec import Decoder, Message, ProtocolError
from cti.config import AgentConfig, SimConfig
from cti.sim.listener import TcpListener
from cti.sim.pbx import Caller, Simulator

__all__ = ["GREETING", "AmiServer"]

log = structlog.get_logger(__name__)

GREETING = b"Asterisk Call Manager/11.0.0\r\n"
_MAX_BUFFERED = 4 << 20  # a client this far behind is dropped rather than buffered without end
_MAX_ACTION = 64 * 1024  # an action longer than this closes the connection
_ALL_CLASSES = {
    "system",
    "call",
    "log",
    "verbose",
    "command",
    "agent",
    "user",
    "config",
    "dtmf",
    "reporting",
    "cdr",
    "dialplan",
    "originate",
    "agi",
    "cc",
    "aoc",
    "test",
    "security",
    "message",
}


def _response(status: str, action_id: str | None, **fields: str) -> bytes:
    out = {"Response": status}
    if action_id:
        out["ActionID"] = action_id
    out.update(fields)
    return Message(fields=out).encode()


class _Connection:
    """One manager session: its writer, login state and event mask."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.sent = 0  # bytes written, greeting included
        self.authenticated = False
        self.mask: set[str] | None = _ALL_CLASSES  # None = events off

    def wants(self, event: Message) -> bool:
        if not self.authenticated or self.mask is None:
            return False
        priv = event.fields.get("Privilege", "")
        return not priv or bool(self.mask.intersection(priv.split(",")))

    def send(self, data: bytes) -> None:
        transport = self.writer.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > _MAX_BUFFERED:
            log.warning("sim.client_too_slow", peer=self.writer.get_extra_info("peername"))
            transport.abort()
            return
        self.writer.write(data)
        self.sent += len(data)


class AmiServer(TcpListener):
    """The simulator's AMI endpoint; ``async with AmiServer(...) as srv:`` then connect to ``srv.port``.

    ``srv.sim`` is the :class:`Simulator` with the scripted API (place_call,
    pause, hangup ...). Events go to every logged-in connection with events on.
    """

    def __init__(
        self,
        *,
        config: SimConfig,
        agents: Sequence[AgentConfig],
        callers: Sequence[Caller] = (),
        username: str = "cti",
        secret: str = "ctisecret",
        host: str | None = None,
        port: int | None = None,
        clock: Callable[[], float] = time.time,
        random_arrivals: bool = True,
        batch_writes: bool = False,
    ) -> None:
        """``batch_writes``: each batch of events the engine produces goes out in one write per connection
        (``cti simulate``, where the syscalls of one write per event were a fifth of the run's CPU); off,
        one write per event, as Asterisk's manager does."""
        super().__init__(host=host if host is not None else config.host,
                         port=port if port is not None else config.port)
        self.username = username
        self.secret = secret
        self.clock = clock
        self.started = clock()
        self.sim = Simulator(
            config=config,
            agents=agents,
            callers=callers,
            listener=self._broadcast,
            clock=clock,
            random_arrivals=random_arrivals,
        )
        self._conns: dict[asyncio.Task[None], _Connection] = {}
        #: The last actions clients sent (fields, lower-case keys), Login and Ping left out: bounded.
        self.actions: deque[dict[str, str]] = deque(maxlen=1000)
        self._tick_task: asyncio.Task[None] | None = None
        self._batch_writes = batch_writes

    async def start(self) -> None:
        await super().start()
        self._tick_task = asyncio.create_task(self.sim.run(), name="sim-clock")
        log.info("sim.ami_listening", host=self.host, port=self.port)

    async def close(self) -> None:
        await super().close()
        if self._tick_task is not None:
            self._tick_task.cancel()
            await asyncio.gather(self._tick_task, return_exceptions=True)
            self._tick_task = None

    def drop_connections(self) -> int:
        """Abruptly close every client socket (an AMI outage); the simulation keeps running."""
        count = self.abort_connections()
        log.info("sim.connections_dropped", count=count)
        return count

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    @property
    def bytes_sent(self) -> int:
        """Bytes written to the clients connected now (a test compares them with what one read)."""
        return sum(conn.sent for conn in self._conns.values())

    def _broadcast(self, events: list[Message]) -> None:
        """One write per event, as Asterisk's manager does: a client that keeps up reads them one or two
        at a time (the live shape, and the costly one), not in the large chunks a batch would make."""
        encoded = [e.encode() for e in events]
        for conn in list(self._conns.values()):
            if self._batch_writes:
                batch = b"".join(data for event, data in zip(events, encoded, strict=True) if conn.wants(event))
                if batch:
                    conn.send(batch)
                continue
            for event, data in zip(events, encoded, strict=True):
                if conn.wants(event):
                    conn.send(data)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(writer)
        self._conns[task] = conn
        decoder = Decoder(expect_greeting=False, max_message_size=_MAX_ACTION)
        unterminated = 0  # bytes since the last blank line: an action that never ends is dropped
        try:
            conn.send(GREETING)
            while data := await reader.read(65536):
                lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
                end = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
                unterminated = len(data) - end if end else unterminated + len(data)
                try:
                    if unterminated > _MAX_ACTION:
                        raise ProtocolError(f"no end of message in {unterminated} bytes")
                    messages = decoder.feed(data)
                except ProtocolError as exc:
                    log.warning("sim.bad_client_input", peer=writer.get_extra_info("peername"), error=str(exc))
                    writer.write(_response("Error", None, Message="Message too large"))
                    return
                keep = True
                for msg in messages:
                    keep = self._dispatch(conn, msg)
                    if not keep:
                        break
                await writer.drain()
                if not keep:
                    return
        finally:
            self._conns.pop(task, None)

    # ---- actions ---------------------------------------------------------------------------

    def _dispatch(self, conn: _Connection, msg: Message) -> bool:
        """Answer one action; False closes the connection."""
        fields = {k.lower(): v for k, v in msg.fields.items()}
        action = fields.get("action", "").strip()
        aid = fields.get("actionid")
        act = action.lower()
        if not act:
            conn.send(_response("Error", aid, Message="Missing action in request"))
            return True
        if not conn.authenticated and act not in ("login", "logoff", "challenge"):
            conn.send(_response("Error", aid, Message="Permission denied"))
            return True
        if act not in ("login", "ping"):
            self.actions.append(fields)  # what a client asked of the PBX: tests and the demo's log read it
        handler = getattr(self, f"_action_{act}", None)
        if handler is None:
            conn.send(
                _response(
                    "Error",
                    aid,
                    Message=f"Invalid/unknown command: {action}. Use Action: ListCommands to show available commands.",
                )
            )
            return True
        try:
            return bool(handler(conn, fields, aid, msg))
        except Exception:
            log.exception("sim.action_failed", action=action)
            conn.send(_response("Error", aid, Message="Internal error"))
            return True

    def _action_login(self, conn: _Connection, f: dict[str, str], aid: str | None, _m: Message) -> bool:
        if conn.authenticated:
            conn.send(_response("Success", aid, Message="Already authenticated"))
            return True
        if f.get("username") != self.username or f.get("secret") != self.secret:
            log.info("sim.login_failed", username=f.get("username"))
            conn.send(_response("Error", aid, Message="Authentication failed"))
            return False
        conn.authenticated = True
        events = f.get("events")
        if events is not None:
            conn.mask = self._mask(events)
        conn.send(_response("Success", aid, Message="Authentication accepted"))
        if conn.mask is not None and "system" in conn.mask:
            up = str(int(self.clock() - self.started))
            conn.send(
                Message(
                    fields={
                        "Event": "FullyBooted",
                        "Privilege": "system,all",
                        "Uptime": up,
                        "LastReload": up,
                        "Status": "Fully Booted",
                    }
                ).encode()
            )
        return True

    @staticmethod
    def _mask(value: str) -> set[str] | None:
        v = value.strip().lower()
        if v in ("off", "no", "false", "0", "none", ""):
            return None
        if v in ("on", "yes", "true", "1", "all"):
            return set(_ALL_CLASSES)
        return {c.strip() for c in v.split(",")}

    def _action_logoff(self, conn: _Connection, f: dict[str, str], aid: str | None, _m: Message) -> bool:
        conn.send(_response("Goodbye", aid, Message="Thanks for all the fish."))
        return False

    def _action_ping(self, conn: _Connection, f: dict[str, str], aid: str | None, _m: Message) -> bool:
        conn.send(_response("Success", aid, Ping="Pong", Timestamp=f"{time.time():.6f}"))
        return True

    def _action_events(self, conn: _Connection, f: dict[str, str], aid: str | None, _m: Message) -> bool:
        conn.mask = self._mask(f.get("eventmask", "on"))
        conn.send(_response("Success", aid, Events="Off" if conn.mask is None else "On"))
        return True

    def _list(self, conn: _Connection, aid: str | None, start_msg: str, items: list[Message], done: str) -> None:
        out = [_response("Success", aid, EventList="start", Message=start_msg)]
        out.extend(m.encode() for m in items)
        tail = {"Event": done}
        if aid:
            tail["ActionID"] = aid
        tail.update(EventList="Complete", ListItems=str(len(items)))
        out.append(Message(fields=tail).encode())
        conn.send(b"".join(out))

    def _action_coreshowchannels(self, conn: _Connection, f: dict[str, str], aid: str | None, _m: Message) -> bool:
        items = self.sim.pbx.core_show_channels(self.clock(), aid)
        self._list(conn, aid, "Channels will follow", items, "CoreShowChannelsComplete")
        return True

    def _action_devicestatelist(self, conn: _Connection, f: dict[str, str], aid: str | None, _m: Message) -> bool:
        items = self.sim.pbx.device_states(aid)
        self._list(conn, aid, "Device State Changes will follow", items, "DeviceStateListComplete")
        return True

    def _action_queuestatus(self, conn: _Connection, f: dict[str, str], aid: str | None, _m: Message) -> bool:
        items = self.sim.pbx.queue_status(self.clock(), aid, f.get("queue", ""), f.get("member", ""))
        self._list(conn, aid, "Queue status will follow", items, "QueueStatusComplete")
        return True

    def _action_originate(self, conn: _Connection, f: dict[str, str], aid: str | None, _m: Message) -> bool:
        # CallerID "Name <number>" or a bare number, as Asterisk parses it.
        cid = f.get("callerid", "").strip()
        name, number = "<unknown>", cid
        if "<" in cid and cid.endswith(">"):
            name, _, number = cid[:-1].partition("<")
            name = name.strip().strip('"') or "<unknown>"
        number = number.strip() or f.get("exten", "") or "<unknown>"
        conn.send(_response("Success", aid, Message="Originate successfully queued"))
        self.sim.originate(number, name, action_id=aid)
        return True

    def _action_redirect(self, conn: _Connection, f: dict[str, str], aid: str | None, _m: Message) -> bool:
        channel = f.get("channel", "")
        if not channel:
            conn.send(_response("Error", aid, Message="Channel not specified"))
            return True
        if channel not in self.sim.pbx.channels:
            # CTI mode answers as the ctiedge capture (and manager.c's action_redirect) does.
            gone = f"Channel does not exist: {channel}" if self.sim.config.mode == "cti" else (
                "Channel specified does not exist")
            conn.send(_response("Error", aid, Message=gone))
            return True
        try:
            prio = int(f.get("priority", "1") or 1)
        except ValueError:
            conn.send(_response("Error", aid, Message="Invalid priority"))
            return True
        conn.send(_response("Success", aid, Message="Redirect successful"))
        self.sim.redirect(channel, f.get("context", ""), f.get("exten", ""), prio)
        return True

    def _action_hangup(self, conn: _Connection, f: dict[str, str], aid: str | None, _m: Message) -> bool:
        channel = f.get("channel", "")
        if not channel:
            conn.send(_response("Error", aid, Message="No channel specified"))
            return True
        if channel not in self.sim.pbx.channels:
            conn.send(_response("Error", aid, Message="No such channel"))
            return True
        conn.send(_response("Success", aid, Message="Channel Hungup"))
        self.sim.hangup(channel)
        return True

    def _action_setvar(self, conn: _Connection, f: dict[str, str], aid: str | None, _m: Message) -> bool:
        channel, variable = f.get("channel", ""), f.get("variable", "")
        if not variable:
            conn.send(_response("Error", aid, Message="No variable specified"))
            return True
        if channel and channel not in self.sim.pbx.channels:
            conn.send(_response("Error", aid, Message="No such channel"))
            return True
        conn.send(_response("Success", aid, Message="Variable Set"))
        if channel:
            self.sim.setvar(channel, variable, f.get("value", ""))
        return True

    def _action_getvar(self, conn: _Connection, f: dict[str, str], aid: str | None, _m: Message) -> bool:
        """Getvar of a channel variable (an unset one is empty, as in Asterisk); a gone channel as in ctiedge."""
        channel, variable = f.get("channel", ""), f.get("variable", "")
        if not variable:
            conn.send(_response("Error", aid, Message="No variable specified"))
            return True
        chan = self.sim.pbx.channels.get(channel) if channel else None
        if channel and chan is None:
            conn.send(_response("Error", aid, Message="No such channel"))
            return True
        value = chan.variables.get(variable, "") if chan is not None else ""
        conn.send(_response("Success", aid, Variable=variable, Value=value))
        return True

    def _action_queuepause(self, conn: _Connection, f: dict[str, str], aid: str | None, _m: Message) -> bool:
        """QueuePause: in ``Queue`` only when given (a member paused in one queue is still rung from the
        others), else in every queue of the member; the reply comes before the events, as in ctiedge."""
        paused = f.get("paused", "").lower() in ("true", "yes", "1", "on")
        interface = f.get("interface", "")
        queue = f.get("queue", "").strip() or None
        if not interface or self.sim.pbx.member(interface, queue) is None:
            conn.send(_response("Error", aid, Message="Interface not found"))
            return True
        conn.send(
            _response(
                "Success", aid, Message="Interface paused successfully" if paused else "Interface unpaused successfully"
            )
        )
        self.sim.pause(interface, paused, reason=f.get("reason", ""), queue=queue)
        return True
