"""The generated password and ACL files, against a real mosquitto and real Redis.

What must not arrive is proved with a marker: the same connection publishes the forbidden message,
then one the subscriber may receive; messages from one connection arrive in order, so once the marker
is in, the forbidden one would have been too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner
from pydantic import SecretStr

from cti.auth.mqtt_acl import mqtt_acl_command, render, write_files
from cti.auth.store import TokenStore
from cti.auth.tokens import Role, TokenRecord, hash_secret, verify_secret
from cti.config import MqttConfig
from cti.devservices import mosquitto_secured

P = "cti/v1/agents"
SERVER, SERVER_PW = "cti-server", "server-secret"
MARKER = b"marker"
network = pytest.mark.network  # the tests that start mosquitto or use Redis


@dataclass
class Broker:
    port: int
    workdir: Path
    store: TokenStore
    config: MqttConfig
    tokens: dict[str, str]  # subject -> token
    records: dict[str, TokenRecord]

    async def regenerate(self) -> None:
        """Rewrite both files from the store and make mosquitto reread them."""
        await write_files(self.store, passwd=self.workdir / "passwd", acl=self.workdir / "acl", config=self.config)
        os.kill(int((self.workdir / "mosquitto.pid").read_text()), signal.SIGHUP)

    def client(self, user: str | None, password: str | None = None) -> aiomqtt.Client:
        if user is not None and password is None:
            password = SERVER_PW if user == SERVER else self.tokens[user]
        return aiomqtt.Client("127.0.0.1", self.port, username=user, password=password, identifier=None,
                              timeout=10, max_queued_incoming_messages=1000)


@pytest.fixture
async def broker(redis_client: aioredis.Redis, tmp_path: Path) -> AsyncIterator[Broker]:
    store = TokenStore(redis_client, key_prefix="acltest:")
    tokens, records = {}, {}
    for subject, role in [("alice", "agent"), ("bob", "agent"), ("sup", "supervisor")]:
        tokens[subject], records[subject] = await store.issue(subject, role)
    config = MqttConfig(username=SERVER, password=SecretStr(SERVER_PW))
    summary = await write_files(store, passwd=tmp_path / "passwd", acl=tmp_path / "acl", config=config)
    assert summary == {"users": 4, "agents": ["alice", "bob"], "supervisors": ["sup"]}
    assert (tmp_path / "passwd").stat().st_mode & 0o777 == 0o600
    with mosquitto_secured(tmp_path, tmp_path / "passwd", tmp_path / "acl") as port:
        yield Broker(port, tmp_path, store, config, tokens, records)


async def until_marker(client: aiomqtt.Client, topic: str) -> list[tuple[str, bytes]]:
    """(topic, payload) of everything received up to and including the marker on ``topic``."""
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(15):  # only bounds a failing test: nothing is concluded from a timeout
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            got.append((str(message.topic), message.payload))
            if got[-1] == (topic, MARKER):
                return got
    raise AssertionError("unreachable")


async def refused(broker: Broker, user: str | None, password: str | None = None) -> bool:
    try:
        async with broker.client(user, password):
            return False
    except aiomqtt.MqttCodeError:
        return True


# --- logins ------------------------------------------------------------------------------------------------

@network
async def test_bad_logins_are_refused(broker: Broker) -> None:
    assert await refused(broker, "alice", broker.tokens["bob"])  # a valid token, someone else's
    assert await refused(broker, "alice", broker.tokens["alice"] + "x")
    assert await refused(broker, "mallory", "anything")
    assert await refused(broker, None)  # anonymous
    assert await refused(broker, "alice", "")
    for user in ("alice", "bob", "sup", SERVER):
        assert not await refused(broker, user)


# --- reading ----------------------------------------------------------------------------------------------

@network
async def test_agent_reads_only_own_events_supervisor_reads_all(broker: Broker) -> None:
    async with broker.client(SERVER) as server, broker.client("alice") as alice, broker.client("sup") as sup:
        # mosquitto 2.0's ACL file does not check SUBSCRIBE: each message is checked on delivery
        for topic in (f"{P}/+/events", f"{P}/bob/events", f"{P}/alice/events"):
            await alice.subscribe(topic, qos=1)
        await sup.subscribe(f"{P}/+/events", qos=1)
        await server.publish(f"{P}/bob/events", b"for bob", qos=1)
        await server.publish(f"{P}/alice/events", MARKER, qos=1)
        alice_got = await until_marker(alice, f"{P}/alice/events")
        sup_got = await until_marker(sup, f"{P}/alice/events")
    assert {t for t, _ in alice_got} == {f"{P}/alice/events"}
    assert sup_got == [(f"{P}/bob/events", b"for bob"), (f"{P}/alice/events", MARKER)]


@network
async def test_retained_state_is_filtered_too(broker: Broker) -> None:
    async with broker.client(SERVER) as server:
        await server.publish(f"{P}/bob/state", b"bob: ready", qos=1, retain=True)
        await server.publish(f"{P}/alice/state", b"alice: ready", qos=1, retain=True)
        async with broker.client("alice") as alice, broker.client("sup") as sup:
            await alice.subscribe(f"{P}/+/state", qos=1)
            await sup.subscribe(f"{P}/+/state", qos=1)
            await server.publish(f"{P}/alice/state", MARKER, qos=1)  # after the retained ones on each connection
            alice_got = await until_marker(alice, f"{P}/alice/state")
            sup_got = await until_marker(sup, f"{P}/alice/state")
    assert alice_got == [(f"{P}/alice/state", b"alice: ready"), (f"{P}/alice/state", MARKER)]
    assert sorted(sup_got[:-1]) == [(f"{P}/alice/state", b"alice: ready"), (f"{P}/bob/state", b"bob: ready")]


# --- writing ----------------------------------------------------------------------------------------------

@network
async def test_agent_commands_only_self_supervisor_anyone(broker: Broker) -> None:
    async with broker.client(SERVER) as server, broker.client("alice") as alice, broker.client("sup") as sup:
        await server.subscribe(f"{P}/+/commands", qos=1)
        await alice.publish(f"{P}/bob/commands", b"forged", qos=1)
        await alice.publish(f"{P}/alice/commands", MARKER, qos=1)
        assert await until_marker(server, f"{P}/alice/commands") == [(f"{P}/alice/commands", MARKER)]
        await sup.publish(f"{P}/bob/commands", b"force ready", qos=1)
        await sup.publish(f"{P}/alice/commands", MARKER, qos=1)
        assert await until_marker(server, f"{P}/alice/commands") == [(f"{P}/bob/commands", b"force ready"),
                                                                      (f"{P}/alice/commands", MARKER)]


@network
@pytest.mark.parametrize("who", ["alice", "sup"])
async def test_only_the_server_publishes_events_and_state(broker: Broker, who: str) -> None:
    async with broker.client(SERVER) as server, broker.client(who) as client:
        await server.subscribe("cti/v1/#", qos=1)
        for topic in (f"{P}/alice/events", f"{P}/alice/state", f"{P}/bob/events", "cti/v1/other"):
            await client.publish(topic, b"forged", qos=1)
        await client.publish(f"{P}/alice/commands", MARKER, qos=1)
        assert await until_marker(server, f"{P}/alice/commands") == [(f"{P}/alice/commands", MARKER)]


# --- revocation -------------------------------------------------------------------------------------------

@network
async def test_revoked_token_stops_working_after_reload(broker: Broker) -> None:
    old = broker.tokens["alice"]
    async with broker.client("alice") as connected:
        await broker.store.revoke(broker.records["alice"].id)
        new, _ = await broker.store.issue("alice", "agent")
        await broker.regenerate()
        # mosquitto rechecks connected clients' passwords on reload and drops those that fail
        async with asyncio.timeout(15):
            with pytest.raises(aiomqtt.MqttError):
                async for _ in connected.messages:
                    pass
    for _ in range(200):  # the reload is asynchronous: poll, bounded
        if await refused(broker, "alice", old):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the revoked token still logs in after the reload")
    assert not await refused(broker, "alice", new)
    assert not await refused(broker, "bob")


# --- render, pure -----------------------------------------------------------------------------------------

def rec(subject: str, role: Role = "agent", created_at: float = 1.0) -> TokenRecord:
    return TokenRecord(id=f"{subject}{created_at:g}", subject=subject, role=role,
                       hash=f"$7$101$salt$hash-{subject}-{created_at:g}", created_at=created_at)


def test_render_exact_files() -> None:
    passwd, acl = render([rec("sup", "supervisor"), rec("bob"), rec("root", "admin")], topic_prefix="x/v2",
                         server_user="srv", server_password_hash="$7$101$s$h")
    assert passwd == ("srv:$7$101$s$h\nbob:$7$101$salt$hash-bob-1\nroot:$7$101$salt$hash-root-1\n"
                      "sup:$7$101$salt$hash-sup-1\n")
    body = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert body == [
        "user srv", "topic readwrite x/v2/#",
        "user bob", "topic read x/v2/agents/bob/events", "topic read x/v2/agents/bob/state",
        "topic write x/v2/agents/bob/commands",
        "user root", "topic read x/v2/agents/+/events", "topic read x/v2/agents/+/state",
        "topic write x/v2/agents/+/commands",
        "user sup", "topic read x/v2/agents/+/events", "topic read x/v2/agents/+/state",
        "topic write x/v2/agents/+/commands",
    ]


def test_render_newest_token_wins() -> None:
    records = [rec("alice", created_at=5.0), rec("alice", created_at=9.0), rec("alice", created_at=7.0)]
    passwd, acl = render(records, topic_prefix="cti/v1", server_user="srv", server_password_hash="h")
    assert [line for line in passwd.splitlines() if line.startswith("alice:")] == ["alice:$7$101$salt$hash-alice-9"]
    assert acl.count("user alice") == 1


def test_render_passwd_hash_checks_the_token() -> None:
    token, hashed = "cti_0123456789ab_" + "A" * 43, hash_secret("cti_0123456789ab_" + "A" * 43)
    passwd, _ = render([TokenRecord("0123456789ab", "alice", "agent", hashed, 1.0)], topic_prefix="cti/v1",
                       server_user="srv", server_password_hash=hash_secret("pw"))
    lines = dict(line.split(":", 1) for line in passwd.splitlines())
    assert verify_secret(token, lines["alice"]) and verify_secret("pw", lines["srv"])


@pytest.mark.parametrize(("records", "server_user", "message"), [
    ([rec("bob"), rec("bob", "supervisor", 2.0)], "srv", "both agent and supervisor"),
    ([rec("bob", "admin"), rec("bob", created_at=0.5)], "srv", "both agent and supervisor"),
    ([rec("srv", "supervisor")], "srv", "server's own username"),
    ([rec("srv")], "srv", "server's own username"),
    ([rec("bad name")], "srv", "not a valid MQTT username"),
    ([], "has:colon", "cannot go in a password file"),
    ([], "", "cannot go in a password file"),
])
def test_render_rejects(records: list[TokenRecord], server_user: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render(records, topic_prefix="cti/v1", server_user=server_user, server_password_hash="h")


@network
async def test_write_files_needs_server_credentials(redis_client: aioredis.Redis, tmp_path: Path) -> None:
    store = TokenStore(redis_client, key_prefix="acltest:")
    for config in (MqttConfig(), MqttConfig(username=SERVER), MqttConfig(password=SecretStr("pw"))):
        with pytest.raises(ValueError, match=r"mqtt\.username and mqtt\.password"):
            await write_files(store, passwd=tmp_path / "p", acl=tmp_path / "a", config=config)
    assert not os.listdir(tmp_path)


# --- the command ------------------------------------------------------------------------------------------

def test_command_help_shows_mosquitto_conf() -> None:
    out = CliRunner().invoke(mqtt_acl_command, ["--help"]).output
    for needle in ("password_file", "acl_file", "allow_anonymous false", "kill -HUP", "--passwd", "--acl"):
        assert needle in out


@network
def test_command_writes_files(redis_url: str, tmp_path: Path) -> None:
    async def issue() -> None:
        client = aioredis.from_url(redis_url)
        with contextlib.suppress(Exception):
            await client.delete("clitest:auth:tokens")
        await TokenStore(client, key_prefix="clitest:").issue("carol", "agent")
        await client.aclose()

    asyncio.run(issue())
    config = tmp_path / "cti.yaml"
    config.write_text(f"redis: {{url: '{redis_url}', key_prefix: 'clitest:'}}\n"
                      f"mqtt: {{username: srv, password: pw, topic_prefix: t/v1}}\n")
    result = CliRunner().invoke(mqtt_acl_command, ["--passwd", str(tmp_path / "pw"), "--acl",
                                                   str(tmp_path / "acl"), "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "2 users" in result.output
    assert [line.split(":")[0] for line in (tmp_path / "pw").read_text().splitlines()] == ["srv", "carol"]
    assert "topic write t/v1/agents/carol/commands" in (tmp_path / "acl").read_text()
    bad = CliRunner().invoke(mqtt_acl_command, ["--passwd", str(tmp_path / "pw"), "--acl", str(tmp_path / "acl"),
                                                "-c", str(tmp_path / "missing.yaml")])
    assert bad.exit_code != 0


@network
async def test_rewrite_keeps_owner_and_mode(redis_client: aioredis.Redis, tmp_path: Path) -> None:
    """As root a rewrite keeps a file chowned to mosquitto readable by it; as anyone else, their own file."""
    store, config = TokenStore(redis_client, key_prefix="acltest:"), MqttConfig(username="srv", password=SecretStr("p"))
    passwd = tmp_path / "passwd"
    passwd.write_text("stale\n")
    os.chmod(passwd, 0o644)
    owner = 65534 if os.geteuid() == 0 else os.geteuid()  # nobody
    os.chown(passwd, owner, owner if os.geteuid() == 0 else os.getegid())
    await write_files(store, passwd=passwd, acl=tmp_path / "acl", config=config)
    st = os.stat(passwd)
    assert (st.st_uid, st.st_mode & 0o777) == (owner, 0o600)
    assert sorted(os.listdir(tmp_path)) == ["acl", "passwd"]  # no temporary file left behind
