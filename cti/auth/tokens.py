"""Tokens: random secrets handed to a person once, kept only as a salted hash.

A token reads ``cti_<id>_<secret>``: ``id`` (public, 12 hex) names the stored record so a check is one
lookup, ``secret`` is 32 random bytes. The hash is mosquitto's own format (``$7$``: PBKDF2-HMAC-SHA512,
12-byte salt, base64), so :mod:`cti.auth.mqtt_acl` can hand the same hash to the broker and an agent's
MQTT password is their token. A few iterations are enough for a 256-bit random secret: the slow-hash
defence is for guessable passwords.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final, Literal, get_args

__all__ = ["ROLES", "Principal", "Role", "TokenError", "TokenRecord", "hash_secret", "new_token", "parse_token",
           "verify_secret"]

#: ``agent``: their own events, calls and commands; ``supervisor``: every agent's, and may force states;
#: ``admin``: a supervisor who may also issue and revoke tokens (and, later, edit routing).
Role = Literal["agent", "supervisor", "admin"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

ITERATIONS: Final = 101  # mosquitto_passwd's default for $7$
_SALT_BYTES: Final = 12
_TOKEN = re.compile(r"^cti_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
SUBJECT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # an agent id, or a supervisor's login: both MQTT usernames


class TokenError(Exception):
    """Not a token this server issued, or revoked: the message is safe to show the client."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as. ``subject`` is the agent id for role ``agent``, a login name otherwise."""

    subject: str
    role: Role
    token_id: str | None = None

    @property
    def agent_id(self) -> str | None:
        return self.subject if self.role == "agent" else None

    def may_see(self, agent_id: str) -> bool:
        """An agent sees only themselves; supervisors and admins see everyone."""
        return self.role != "agent" or self.subject == agent_id

    @property
    def sees_all(self) -> bool:
        return self.role != "agent"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What is stored for a token: never the secret."""

    id: str
    subject: str
    role: Role
    hash: str
    created_at: float
    label: str = ""

    def principal(self) -> Principal:
        return Principal(self.subject, self.role, self.id)


def hash_secret(token: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """``$7$<iterations>$<salt>$<digest>``, byte for byte what ``mosquitto_passwd`` writes."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", token.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_secret(token: str, stored: str) -> bool:
    """Constant-time check of ``token`` against a :func:`hash_secret` string; False for any malformed hash."""
    try:
        _, kind, iterations, salt, digest = stored.split("$")
        if kind != "7":
            return False
        want = base64.b64decode(digest, validate=True)
        got = hashlib.pbkdf2_hmac("sha512", token.encode(), base64.b64decode(salt, validate=True), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


def new_token() -> tuple[str, str]:
    """A fresh ``(token id, token)``."""
    token_id = secrets.token_hex(6)
    return token_id, f"cti_{token_id}_{secrets.token_urlsafe(32)}"


def parse_token(token: str) -> str:
    """The token's id; :class:`TokenError` if it does not even look like one of ours."""
    match = _TOKEN.match(token)
    if match is None:
        raise TokenError("not a CTI token (cti_<id>_<secret>)")
    return match.group(1)
