"""mosquitto's password file and ACL file, made from the token store.

An agent's MQTT login is their agent id and their token: a token's stored hash is already in
mosquitto's ``$7$`` format, so the password file is the token records as they are. The ACL has
only per-user ``topic`` lines and no ``pattern`` lines: mosquitto applies a ``pattern`` line to
every user, whatever ``user`` line precedes it (mosquitto.conf(5), acl_file), so a ``%u`` pattern
would hand agent-shaped grants to supervisors and the server too. Per-user lines grant exactly
what is listed to exactly that user, and anything not granted is denied.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import click

from cti.auth.tokens import SUBJECT, TokenRecord, hash_secret

if TYPE_CHECKING:
    from cti.auth.store import TokenStore
    from cti.config import MqttConfig

__all__ = ["Summary", "mqtt_acl_command", "render", "write_files"]


class Summary(TypedDict):
    users: int  # lines in the password file, the server's included
    agents: list[str]
    supervisors: list[str]  # supervisors and admins


def _logins(records: Iterable[TokenRecord], server_user: str) -> dict[str, TokenRecord]:
    """Subject -> its newest record; ValueError for a subject that cannot be a distinct MQTT user."""
    if not server_user or any(c == ":" or c.isspace() or not c.isprintable() for c in server_user):
        raise ValueError(f"MQTT server username {server_user!r} cannot go in a password file (empty, ':' or spaces)")
    newest: dict[str, TokenRecord] = {}
    kinds: dict[str, set[bool]] = {}
    for record in records:
        if not SUBJECT.match(record.subject):
            raise ValueError(f"token {record.id}: subject {record.subject!r} is not a valid MQTT username")
        if record.subject == server_user:
            raise ValueError(f"token {record.id}: subject {record.subject!r} is the MQTT server's own username; "
                             f"revoke it or change mqtt.username")
        kinds.setdefault(record.subject, set()).add(record.role == "agent")
        best = newest.get(record.subject)
        if best is None or (record.created_at, record.id) > (best.created_at, best.id):
            newest[record.subject] = record
    for subject, is_agent in kinds.items():
        if len(is_agent) > 1:
            raise ValueError(f"subject {subject!r} has both agent and supervisor/admin tokens: one MQTT username "
                             f"cannot be both; revoke one kind (cti token revoke)")
    return dict(sorted(newest.items()))


def _acl(logins: dict[str, TokenRecord], *, topic_prefix: str, server_user: str) -> str:
    agents = f"{topic_prefix}/agents"
    lines = ["# Written by `cti mqtt-acl` from the token store: edits are lost when it runs again.",
             "# Nothing before the first `user` line: anonymous clients may do nothing.",
             "# No `pattern` lines: mosquitto applies those to every user.",
             "", f"user {server_user}", f"topic readwrite {topic_prefix}/#"]
    for subject, record in logins.items():
        who = "+" if record.role != "agent" else subject
        lines += ["", f"user {subject}", f"topic read {agents}/{who}/events", f"topic read {agents}/{who}/state",
                  f"topic write {agents}/{who}/commands"]
    return "\n".join(lines) + "\n"


def render(records: Iterable[TokenRecord], *, topic_prefix: str, server_user: str,
           server_password_hash: str) -> tuple[str, str]:
    """(password file, ACL file) text for mosquitto.

    One user per subject: when a subject has several tokens only the newest (``created_at``) is in
    the password file, so an older one stops working for MQTT (it still works for HTTP until
    revoked). The server user may read and write ``{topic_prefix}/#``; an agent may read their own
    ``events`` and ``state`` and write their own ``commands``; supervisors and admins the same for
    every agent (``+``). Only the server may publish events and state. ValueError for a subject
    that has agent and supervisor tokens, or is the server's username.
    """
    logins = _logins(records, server_user)
    passwd = "".join(f"{user}:{hash_}\n" for user, hash_ in
                     [(server_user, server_password_hash), *((s, r.hash) for s, r in logins.items())])
    return passwd, _acl(logins, topic_prefix=topic_prefix, server_user=server_user)


def _write_atomic(path: Path, text: str, mode: int) -> None:
    """Readers (a mosquitto reload) see the old file or the new one, never half of one; an existing file's
    owner and group are kept (as root: mosquitto, which reads it after dropping privileges, still can)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)  # O_CREAT's mode is masked by the umask, and ignored for an old tmp
            with contextlib.suppress(FileNotFoundError, PermissionError):  # a file chowned to mosquitto stays so
                old = path.stat()
                os.fchown(f.fileno(), old.st_uid, old.st_gid)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


async def write_files(store: TokenStore, *, passwd: Path, acl: Path, config: MqttConfig) -> Summary:
    """Write both files from the store's tokens (password file mode 0600); ValueError as for :func:`render`,
    or when ``config`` has no username and password for the server."""
    if not config.username or config.password is None or not config.password.get_secret_value():
        raise ValueError("mqtt.username and mqtt.password must be set: the server logs in to the secured broker "
                         "with them (CTI_MQTT__USERNAME, CTI_MQTT__PASSWORD)")
    records = await store.records()
    logins = _logins(records, config.username)
    passwd_text, acl_text = render(records, topic_prefix=config.topic_prefix, server_user=config.username,
                                   server_password_hash=hash_secret(config.password.get_secret_value()))
    _write_atomic(acl, acl_text, 0o644)  # first: a reload in between denies a user either file lacks
    _write_atomic(passwd, passwd_text, 0o600)
    return Summary(users=len(logins) + 1,
                   agents=[s for s, r in logins.items() if r.role == "agent"],
                   supervisors=[s for s, r in logins.items() if r.role != "agent"])


_PATH = click.Path(path_type=Path, dir_okay=False)


@click.command("mqtt-acl")
@click.option("--passwd", "passwd", type=_PATH, required=True, help="the password file to write (mode 0600)")
@click.option("--acl", "acl", type=_PATH, required=True, help="the ACL file to write")
@click.option("--config", "-c", "config_path", type=_PATH,
              help="YAML configuration (default: config/cti.yaml when present). "
                   "CTI_SECTION__KEY variables override it.")
def mqtt_acl_command(passwd: Path, acl: Path, config_path: Path | None) -> None:
    """Write mosquitto's password file and ACL file from the issued tokens.

    Every token's subject becomes an MQTT user: username = agent id (or login),
    password = the token (the newest one, if they have several). The server
    logs in with mqtt.username and mqtt.password from the config. Agents may
    read only their own events and state and write only their own commands;
    supervisors and admins read every agent's events and state and write every
    agent's commands; only the server publishes events and state.

    \b
    In mosquitto.conf:
      allow_anonymous false
      password_file /etc/mosquitto/cti.passwd
      acl_file /etc/mosquitto/cti.acl

    Run this again after issuing or revoking tokens, then reload mosquitto
    (systemctl reload mosquitto, or kill -HUP its pid): it rereads both files
    and disconnects clients whose password is no longer valid. mosquitto reads
    them as the user it runs as: chown them to it once (a rewrite keeps the
    owner).
    """
    from cti.cli import _load, _redacted

    config = _load(config_path)

    async def _write() -> Summary:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        from cti.auth.store import TokenStore

        client = aioredis.from_url(config.redis.url, socket_connect_timeout=5, socket_timeout=30)
        try:
            store = TokenStore(client, key_prefix=config.redis.key_prefix)
            return await write_files(store, passwd=passwd, acl=acl, config=config.mqtt)
        except RedisError as exc:
            raise click.ClickException(f"cannot read the tokens from Redis at {_redacted(config.redis.url)} "
                                       f"({exc}); nothing written") from None
        except OSError as exc:
            raise click.ClickException(f"cannot write the files: {exc}") from None
        except ValueError as exc:
            raise click.ClickException(f"{exc}; nothing written") from None
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    summary = asyncio.run(_write())
    click.echo(f"wrote {passwd} ({summary['users']} users: the server, {len(summary['agents'])} agents, "
               f"{len(summary['supervisors'])} supervisors/admins) and {acl}; reload mosquitto (SIGHUP) to apply")
