"""AmiClient against a tiny in-test AMI server on 127.0.0.1:0.

The fake speaks just enough AMI (greeting, Login, Ping, scripted replies) to
drive the client's edges: login, ordering, routing, timeouts, disconnects,
keepalive and reconnect. Trace replay against the simulator lives elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from structlog.testing import capture_logs

from cti.ami import (
    AmiActionError,
    AmiAuthError,
    AmiClient,
    AmiConnectionError,
    AmiDisconnected,
    AmiTimeout,
    Decoder,
    Message,
    UnsafeValueError,
)
from cti.config import AmiConfig

WAIT = 5.0  # upper bound for every wait; tests never assert on timing
SECRET = "s3cret-ami"

Replier = Callable[[Message, asyncio.StreamWriter], Awaitable[None]]


def wire(**fields: str) -> bytes:
    return Message(dict(fields)).encode()


def event(name: str, **fields: str) -> bytes:
    return wire(Event=name, **fields)


def reply(msg: Message, response: str = "Success", **fields: str) -> bytes:
    return wire(Response=response, ActionID=msg.action_id or "", **fields)


class FakeAmi:
    """Greeting, Login (checks the secret), Ping, then ``self.replies[action]`` or a plain Success."""

    def __init__(self, *, secret: str = SECRET, answer_ping: bool = True) -> None:
        self.secret = secret
        self.answer_ping = answer_ping
        self.replies: dict[str, Replier | None] = {}  # None: never answer
        self.actions: list[Message] = []
        self.raw = bytearray()
        self.logins = 0
        self.refused = 0
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.after_login = b""  # written in the same breath as the Login reply
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeAmi:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self.writers:
            w.close()
        await self._server.wait_closed()
        for w in self.writers:
            with suppress(OSError):
                await w.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def config(self, **overrides: Any) -> AmiConfig:
        values: dict[str, Any] = {
            "host": "127.0.0.1", "port": self.port, "username": "cti", "secret": SECRET,
            "ping_interval": 30.0, "ping_timeout": 2.0, "action_timeout": 2.0, "connect_timeout": 2.0,
            "backoff_initial": 0.01, "backoff_max": 0.05,
        }
        values.update(overrides)
        return AmiConfig(**values)

    def named(self, action: str) -> list[Message]:
        return [m for m in self.actions if m.get("Action") == action]

    async def send(self, data: bytes) -> None:
        """Write to the newest connection."""
        w = self.writers[-1]
        w.write(data)
        await w.drain()

    def drop(self) -> None:
        for w in self.writers:
            w.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        writer.write(b"Asterisk Call Manager/9.0.0\r\n")
        decoder = Decoder(expect_greeting=False)
        try:
            while data := await reader.read(65536):
                self.raw += data
                for msg in decoder.feed(data):
                    self.actions.append(msg)
                    await self._answer(msg, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, msg: Message, writer: asyncio.StreamWriter) -> None:
        name = msg.get("Action")
        if name == "Login":
            if msg.get("Secret") == self.secret:
                self.logins += 1
                writer.write(reply(msg, Message="Authentication accepted") + self.after_login)
            else:
                self.refused += 1
                writer.write(reply(msg, "Error", Message="Authentication failed"))
        elif name == "Ping":
            if self.answer_ping:
                writer.write(reply(msg, Ping="Pong", Timestamp="1700000000.000000"))
        elif name in self.replies:
            replier = self.replies[name]
            if replier is not None:
                await replier(msg, writer)
        else:
            writer.write(reply(msg, Message=f"{name} ok"))
        await writer.drain()


class Recorder:
    """on_event / on_connect that record into one list, so their relative order is visible."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.events: list[Message] = []
        self.connects = 0
        self.changed = asyncio.Event()

    async def on_event(self, msg: Message) -> None:
        self.events.append(msg)
        self.log.append(msg.event or "?")
        self.changed.set()

    async def on_connect(self, client: AmiClient) -> None:
        self.connects += 1
        self.log.append("<connected>")
        self.changed.set()


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` with a bounded wait (no timing asserts, only a hang guard)."""
    async def poll() -> None:
        while not check():  # noqa: ASYNC110  (polling test state owned by plain attributes)
            await asyncio.sleep(0.005)
    try:
        await asyncio.wait_for(poll(), WAIT)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


@asynccontextmanager
async def running(client: AmiClient, *, connect: bool = True) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(client.run(), name="test.ami.run")
    try:
        if connect:
            await asyncio.wait_for(client.wait_connected(), WAIT)
        yield task
    finally:
        await asyncio.wait_for(client.close(), WAIT)
        await asyncio.wait_for(task, WAIT)  # re-raises anything run() died of


def make(fake: FakeAmi, rec: Recorder, **overrides: Any) -> AmiClient:
    return AmiClient(config=fake.config(**overrides), on_event=rec.on_event, on_connect=rec.on_connect)


# ---------------------------------------------------------------- login


async def test_login_ok_runs_on_connect_and_never_logs_the_secret() -> None:
    rec = Recorder()
    with capture_logs() as logs:
        async with FakeAmi() as fake:
            client = make(fake, rec)
            async with running(client):
                await until(lambda: rec.connects == 1, "on_connect")
                assert client.connected
                assert fake.logins == 1
                login = fake.named("Login")[0]
                assert login["Username"] == "cti"
                assert login["Secret"] == SECRET
    assert any(e["event"] == "ami.logged_in" for e in logs)
    assert all(e.get("host") == "127.0.0.1" for e in logs if e["event"].startswith("ami."))
    assert SECRET not in repr(logs)


async def test_bad_secret_is_logged_and_retried_with_backoff() -> None:
    rec = Recorder()
    with capture_logs() as logs:
        async with FakeAmi(secret="other") as fake:
            client = make(fake, rec)
            async with running(client, connect=False):
                await until(lambda: fake.refused >= 3, "three refused logins")
                assert not client.connected
                assert rec.connects == 0
    refused = [e for e in logs if e["event"] == "ami.login_refused"]
    assert len(refused) >= 3
    assert refused[0]["reason"] == "Authentication failed"
    scheduled = [e["delay"] for e in logs if e["event"] == "ami.reconnect_scheduled"]
    assert scheduled and all(d > 0 for d in scheduled)  # never a busy loop
    assert client.stats.auth_failures >= 3


async def test_not_connected_raises_at_once() -> None:
    rec = Recorder()
    async with FakeAmi() as fake:
        client = make(fake, rec)
        with pytest.raises(AmiConnectionError):
            await client.action("Ping")


# ---------------------------------------------------------------- events


async def test_events_are_delivered_in_arrival_order() -> None:
    rec = Recorder()
    async with FakeAmi() as fake:
        client = make(fake, rec)
        async with running(client):
            for chunk in range(20):
                await fake.send(b"".join(event("UserEvent", Seq=str(chunk * 50 + i)) for i in range(50)))
            await until(lambda: len(rec.events) == 1000, "1000 events")
    assert [int(m["Seq"]) for m in rec.events] == list(range(1000))
    assert client.stats.events == 1000


async def test_a_flood_right_after_the_login_reply_is_read_whole() -> None:
    """Several MB behind the Login reply fill (and pause) the reader during the login itself; the
    session that follows must get every event of it, in order, and then the live ones."""
    rec = Recorder()
    async with FakeAmi() as fake:
        fake.after_login = b"".join(event("UserEvent", Seq=str(i), Pad="x" * 300) for i in range(20_000))
        client = make(fake, rec)
        async with running(client):
            await until(lambda: len(rec.events) == 20_000, "the flood")
            await fake.send(event("UserEvent", Seq="20000"))
            await until(lambda: len(rec.events) == 20_001, "a live event after it")
    assert [int(m["Seq"]) for m in rec.events] == list(range(20_001))


async def test_handler_exception_is_logged_and_delivery_goes_on() -> None:
    seen: list[str] = []

    async def on_event(msg: Message) -> None:
        seen.append(msg["Seq"])
        if msg["Seq"] == "3":
            raise RuntimeError("bug in a handler")

    with capture_logs() as logs:
        async with FakeAmi() as fake:
            client = AmiClient(config=fake.config(), on_event=on_event)
            async with running(client):
                await fake.send(b"".join(event("Hangup", Seq=str(i)) for i in range(10)))
                await until(lambda: len(seen) == 10, "10 events")
    assert seen == [str(i) for i in range(10)]
    failed = [e for e in logs if e["event"] == "ami.on_event_failed"]
    assert len(failed) == 1
    assert failed[0]["event_name"] == "Hangup"


async def test_malformed_message_is_skipped_not_raised() -> None:
    rec = Recorder()
    async with FakeAmi() as fake:
        client = make(fake, rec)
        async with running(client):
            await fake.send(wire(Foo="bar") + event("Newchannel", Seq="1"))
            await until(lambda: len(rec.events) == 1, "the good event")
            assert client.stats.malformed == 1
            assert client.connected


async def test_multibyte_names_split_across_tcp_writes_arrive_whole() -> None:
    rec = Recorder()
    names = ["Jürgen", "王小明", "Zoë 🎧"]
    async with FakeAmi() as fake:
        client = make(fake, rec)
        async with running(client):
            data = b"".join(event("Newchannel", CallerIDName=n) for n in names)
            for i in range(0, len(data), 3):  # 3-byte writes cut every multibyte char somewhere
                await fake.send(data[i : i + 3])
                await asyncio.sleep(0.001)
            await until(lambda: len(rec.events) == 3, "3 events")
    assert [m["CallerIDName"] for m in rec.events] == names


async def test_unknown_action_id_events_go_to_on_event() -> None:
    rec = Recorder()
    async with FakeAmi() as fake:
        client = make(fake, rec)
        async with running(client):
            await fake.send(event("OriginateResponse", ActionID="someone-else-7", Response="Success"))
            await until(lambda: len(rec.events) == 1, "OriginateResponse")
    assert rec.events[0]["ActionID"] == "someone-else-7"


# ---------------------------------------------------------------- actions


async def test_action_reply_and_error() -> None:
    rec = Recorder()

    async def refuse(msg: Message, w: asyncio.StreamWriter) -> None:
        w.write(reply(msg, "Error", Message="No such channel"))

    async with FakeAmi() as fake:
        fake.replies["Hangup"] = refuse
        client = make(fake, rec)
        async with running(client):
            pong = await client.action("Ping")
            assert pong["Ping"] == "Pong"
            with pytest.raises(AmiActionError) as err:
                await client.action("Hangup", {"Channel": "PJSIP/nobody"})
            assert err.value.message == "No such channel"
            assert err.value.response.response == "Error"
    ids = [m.action_id for m in fake.actions]
    assert len(set(ids)) == len(ids)
    assert all(i and i.startswith("cti-") for i in ids)


async def test_cancelled_action_late_reply_does_not_reach_the_next_caller() -> None:
    """Like redis-py's test_cwe_404: cancel mid-flight, then the next reply must be the right one."""
    rec = Recorder()
    held: list[Message] = []

    async def hold(msg: Message, w: asyncio.StreamWriter) -> None:
        held.append(msg)

    async with FakeAmi() as fake:
        fake.replies["Slow"] = hold
        client = make(fake, rec)
        async with running(client):
            slow = asyncio.create_task(client.action("Slow"))
            await until(lambda: len(held) == 1, "Slow reaches the server")
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            await fake.send(reply(held[0], Message="late Slow reply"))  # arrives before Status' reply
            status = await asyncio.wait_for(client.action("Status"), WAIT)
            assert status["Message"] == "Status ok"
            assert status.action_id == fake.named("Status")[0].action_id
            assert client.stats.late_replies == 1
            assert rec.events == []  # a stray response is not an event


async def test_action_timeout_then_next_action_still_works() -> None:
    rec = Recorder()
    async with FakeAmi() as fake:
        fake.replies["Never"] = None
        client = make(fake, rec)
        async with running(client):
            with pytest.raises(AmiTimeout) as err:
                await client.action("Never", timeout=0.1)
            assert isinstance(err.value, TimeoutError)
            assert (await client.action("Ping"))["Ping"] == "Pong"
            assert client.connected


async def test_crlf_in_a_value_raises_and_nothing_is_written() -> None:
    rec = Recorder()
    async with FakeAmi() as fake:
        client = make(fake, rec)
        async with running(client):
            with pytest.raises(UnsafeValueError):
                await client.action("Setvar", {"Variable": "NAME", "Value": "x\r\n\r\nAction: Hangup\r\nChannel: *"})
            await client.action("Ping")  # the server has read everything sent before this
    assert b"Setvar" not in fake.raw
    assert fake.named("Hangup") == []


async def test_reply_cut_by_disconnect_fails_promptly_and_is_not_resent() -> None:
    rec = Recorder()

    async def half_then_drop(msg: Message, w: asyncio.StreamWriter) -> None:
        w.write(reply(msg, EventList="start", Message="Channels will follow"))
        w.write(event("CoreShowChannel", ActionID=msg.action_id or "", Channel="PJSIP/1001-1"))
        await w.drain()
        w.transport.abort()

    async with FakeAmi() as fake:
        fake.replies["CoreShowChannels"] = half_then_drop
        client = AmiClient(config=fake.config(action_timeout=30.0), on_event=rec.on_event)
        async with running(client):
            with pytest.raises(AmiDisconnected):
                await asyncio.wait_for(client.action_list("CoreShowChannels"), WAIT)
            await asyncio.wait_for(client.wait_connected(), WAIT)  # reconnected
            await client.action("Ping")
    assert len(fake.named("CoreShowChannels")) == 1


# ---------------------------------------------------------------- keepalive and reconnect


async def test_unanswered_ping_drops_the_connection_and_reconnects() -> None:
    rec = Recorder()
    with capture_logs() as logs:
        async with FakeAmi(answer_ping=False) as fake:
            client = make(fake, rec, ping_interval=0.05, ping_timeout=0.1)
            async with running(client):
                await until(lambda: fake.logins >= 2, "a second login after the Ping timeout")
    assert any(e["event"] == "ami.ping_timeout" for e in logs)
    assert any(e["event"] == "ami.disconnected" and "Ping" in e["reason"] for e in logs)


async def test_answered_pings_keep_the_connection() -> None:
    rec = Recorder()
    async with FakeAmi() as fake:
        client = make(fake, rec, ping_interval=0.02, ping_timeout=2.0)
        async with running(client):
            await until(lambda: len(fake.named("Ping")) >= 3, "three Pings")
            assert fake.connections == 1


async def test_server_close_reconnects_with_backoff_and_reruns_on_connect() -> None:
    rec = Recorder()
    with capture_logs() as logs:
        async with FakeAmi() as fake:
            client = make(fake, rec)
            async with running(client):
                await until(lambda: rec.connects == 1, "first on_connect")
                fake.drop()
                await until(lambda: rec.connects == 2, "on_connect after reconnect")
                assert fake.logins == 2
                assert client.stats.reconnects >= 1
    scheduled = [e for e in logs if e["event"] == "ami.reconnect_scheduled"]
    assert scheduled and scheduled[0]["delay"] > 0 and scheduled[0]["attempt"] == 1


@pytest.mark.parametrize(("stable_after", "second_failures"), [(0.0, 1), (1e9, 2)])
async def test_backoff_resets_only_after_a_connection_that_stayed_up(
    stable_after: float, second_failures: int
) -> None:
    rec = Recorder()
    with capture_logs() as logs:
        async with FakeAmi() as fake:
            client = AmiClient(
                config=fake.config(), on_event=rec.on_event, on_connect=rec.on_connect, stable_after=stable_after
            )
            async with running(client):
                for n in (1, 2):
                    await until(lambda n=n: rec.connects == n, f"connection {n}")
                    fake.drop()
                await until(lambda: rec.connects == 3, "connection 3")
    failures = [e["failures"] for e in logs if e["event"] == "ami.reconnect_scheduled"]
    assert failures[:2] == [1, second_failures]


async def test_a_link_cut_again_and_again_is_retried_at_the_first_delay_each_time() -> None:
    """AMI cut every 10 s: each session was up longer than a second, so no delay ever grows."""
    rec = Recorder()
    now = [0.0]

    def clock() -> float:
        now[0] += 5.0  # every look at the clock is 5 s later: each session lasts 10 s
        return now[0]

    with capture_logs() as logs:
        async with FakeAmi() as fake:
            config = fake.config()
            client = AmiClient(config=config, on_event=rec.on_event, on_connect=rec.on_connect, clock=clock)
            async with running(client):
                for n in range(1, 6):
                    await until(lambda n=n: rec.connects == n, f"connection {n}")
                    fake.drop()
                await until(lambda: rec.connects == 6, "connection 6")
    scheduled = [e for e in logs if e["event"] == "ami.reconnect_scheduled"]
    assert [e["failures"] for e in scheduled[:5]] == [1] * 5
    assert max(e["delay"] for e in scheduled[:5]) <= config.backoff_initial


async def test_protocol_error_drops_and_reconnects() -> None:
    rec = Recorder()
    async with FakeAmi() as fake:
        client = make(fake, rec)
        client_decoder_limit = 1 << 20
        async with running(client):
            line = b"X: " + b"x" * 97 + b"\r\n"
            await fake.send(line * (client_decoder_limit // len(line) + 10))  # no end of message: oversized
            await until(lambda: fake.logins == 2, "reconnect after the protocol error")
            assert client.stats.malformed >= 1


@pytest.mark.parametrize("plain", [False, True], ids=["coroutine_handler", "plain_handler"])
async def test_on_connect_resync_works_while_events_stream(plain: bool) -> None:
    """on_connect awaits action_list while a burst of events waits behind it: no deadlock. A plain
    handler (called straight from the read path when nothing is queued) keeps the same order."""
    log: list[str] = []
    items: list[Message] = []

    async def channels(msg: Message, w: asyncio.StreamWriter) -> None:
        aid = msg.action_id or ""
        w.write(b"".join(event("VarSet", Seq=str(i)) for i in range(500, 1000)))  # unrelated events interleave
        w.write(reply(msg, EventList="start", Message="Channels will follow"))
        w.write(event("CoreShowChannel", ActionID=aid, Channel="PJSIP/1001-1"))
        w.write(event("Newstate", Seq="1000"))
        w.write(event("CoreShowChannel", ActionID=aid, Channel="PJSIP/1002-2"))
        w.write(event("CoreShowChannelsComplete", ActionID=aid, EventList="Complete", ListItems="2"))

    async def on_connect(client: AmiClient) -> None:
        response, got = await client.action_list("CoreShowChannels")
        assert response["EventList"] == "start"
        items.extend(got)
        log.append("<resynced>")

    async def on_event(msg: Message) -> None:
        log.append(msg.get("Seq", "?") or "?")

    def on_event_plain(msg: Message) -> None:
        log.append(msg.get("Seq", "?") or "?")

    async with FakeAmi() as fake:
        fake.replies["CoreShowChannels"] = channels
        original = fake._answer

        async def answer_then_burst(msg: Message, w: asyncio.StreamWriter) -> None:
            await original(msg, w)
            if msg.get("Action") == "Login":  # events right behind the login reply
                w.write(b"".join(event("VarSet", Seq=str(i)) for i in range(500)))

        fake._answer = answer_then_burst  # type: ignore[method-assign]
        client = AmiClient(config=fake.config(), on_event=on_event_plain if plain else on_event,
                           on_connect=on_connect)
        async with running(client):
            await until(lambda: len(log) == 1002, "resync + 1001 events")
            await fake.send(event("Newstate", Seq="1001"))  # the queue is empty now: delivered directly
            await until(lambda: len(log) == 1003, "a live event after the resync")
    assert log[0] == "<resynced>"
    assert log[1:] == [str(i) for i in range(1002)]
    assert [m["Channel"] for m in items] == ["PJSIP/1001-1", "PJSIP/1002-2"]
    assert client.stats.events == 1002


async def test_request_resync_reruns_on_connect_in_order_on_the_same_connection() -> None:
    rec = Recorder()
    async with FakeAmi() as fake:
        client = make(fake, rec)
        assert not client.request_resync(), "nothing to resync before a login"
        async with running(client):
            await until(lambda: rec.connects == 1, "first on_connect")
            await fake.send(event("Newchannel", Uniqueid="1.1"))
            await until(lambda: len(rec.events) == 1, "the event before the resync")
            assert client.request_resync()
            await fake.send(event("Hangup", Uniqueid="1.1"))
            await until(lambda: rec.connects == 2 and len(rec.events) == 2, "resync, then the next event")
            assert rec.log[-3:] == ["Newchannel", "<connected>", "Hangup"]
            assert fake.logins == 1, "same connection, no new login"


async def test_failed_on_connect_forces_a_reconnect() -> None:
    calls = 0

    async def on_connect(client: AmiClient) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise AmiTimeout("resync failed")

    async def on_event(msg: Message) -> None:
        pass

    async with FakeAmi() as fake:
        client = AmiClient(config=fake.config(), on_event=on_event, on_connect=on_connect)
        async with running(client):
            await until(lambda: calls == 2 and fake.logins == 2, "second resync on a new connection")


async def test_cancelling_run_closes_the_socket() -> None:
    rec = Recorder()
    async with FakeAmi() as fake:
        client = make(fake, rec)
        task = asyncio.create_task(client.run())
        await asyncio.wait_for(client.wait_connected(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT)
        assert not client.connected
        await until(fake.writers[0].transport.is_closing, "server sees the close")


async def test_auth_error_class_is_exported() -> None:
    assert issubclass(AmiAuthError, Exception)
    assert issubclass(AmiDisconnected, AmiConnectionError)


async def test_a_megabyte_caller_name_keeps_the_link_and_the_event() -> None:
    rec = Recorder()
    with capture_logs() as logs:
        async with FakeAmi() as fake:
            client = make(fake, rec)
            async with running(client):
                await until(lambda: rec.connects == 1, "logged in")
                await fake.send(b"Event: Newchannel\r\nChannel: PJSIP/trunk-00000001\r\nCallerIDName: "
                                + b"N" * (1 << 20) + b"\r\nUniqueid: 1.1\r\nLinkedid: 1.1\r\n\r\n")
                await until(lambda: any(m.event == "Newchannel" for m in rec.events), "the event")
                assert client.stats.connects == 1 and fake.logins == 1, "the link stayed up"
    [event] = [m for m in rec.events if m.event == "Newchannel"]
    assert len(event["CallerIDName"]) == 8192 and event["Linkedid"] == "1.1"
    assert [e for e in logs if e["event"] == "ami.value_truncated"]


async def test_the_reader_resumes_a_transport_the_login_paused() -> None:
    """Bytes that piled up during the login (past twice the limit, which pauses reading) go to the sink
    at attach, and reading resumes: else a busy Asterisk's link would stall for good after login."""
    from cti.ami.client import _FeedingReader

    class Transport:
        paused = False

        def pause_reading(self) -> None:
            self.paused = True

        def resume_reading(self) -> None:
            self.paused = False

    reader = _FeedingReader(asyncio.get_running_loop())
    transport = Transport()
    reader.set_transport(transport)  # type: ignore[arg-type]
    reader.feed_data(b"x" * 300_000)
    assert transport.paused
    got: list[bytes] = []
    reader.attach(got.append)
    assert not transport.paused and got == [b"x" * 300_000]
    reader.feed_data(b"live")
    reader.feed_eof()
    assert got[-1] == b"live" and await reader.ended == "closed by server"
