"""Token records in Redis, shared by every server: ``{prefix}auth:tokens`` maps token id -> JSON.

Checking a token costs one HGET and one PBKDF2 (~0.1 ms); the result is remembered for
``cache_s`` so a console's polling and reconnects cost nothing. A revoke through this server
takes effect at once here and within ``cache_s`` on the others.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from cti.auth.tokens import (
    ROLES,
    SUBJECT,
    Principal,
    Role,
    TokenError,
    TokenRecord,
    hash_secret,
    new_token,
    parse_token,
    verify_secret,
)

__all__ = ["TokenStore"]

CACHE_S = 5.0
_MAX_CACHED = 10_000


class TokenStore:
    def __init__(self, redis: aioredis.Redis, *, key_prefix: str = "cti:", cache_s: float = CACHE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._key = f"{key_prefix}auth:tokens"
        self._cache_s = cache_s
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def issue(self, subject: str, role: Role, *, label: str = "") -> tuple[str, TokenRecord]:
        """A new token for ``subject``; the token itself is returned once and never stored."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if not SUBJECT.match(subject):
            raise ValueError("subject must be 1-64 of A-Z a-z 0-9 _ . - (it is also the MQTT username)")
        token_id, token = new_token()
        record = TokenRecord(id=token_id, subject=subject, role=role, hash=hash_secret(token),
                             created_at=round(time.time(), 3), label=label[:200])
        await self._redis.hset(self._key, token_id, json.dumps(_as_dict(record)))
        return token, record

    async def records(self) -> list[TokenRecord]:
        raw = await self._redis.hgetall(self._key)
        return sorted((_record(v) for v in raw.values()), key=lambda r: (r.created_at, r.id))

    async def revoke(self, token_id: str) -> bool:
        self._cache = {t: v for t, v in self._cache.items() if v[1].token_id != token_id}
        return bool(await self._redis.hdel(self._key, token_id))

    async def revoke_subject(self, subject: str) -> int:
        """Every token of one person (they left, or a token leaked and you do not know which)."""
        ids = [r.id for r in await self.records() if r.subject == subject]
        for token_id in ids:
            await self.revoke(token_id)
        return len(ids)

    async def resolve(self, token: str) -> Principal:
        """Who this token acts as; :class:`TokenError` when it is malformed, unknown, revoked or wrong."""
        now = self._clock()
        hit = self._cache.get(token)
        if hit is not None and hit[0] > now:
            return hit[1]
        token_id = parse_token(token)
        raw = await self._redis.hget(self._key, token_id)
        if raw is None:
            raise TokenError("unknown or revoked token")
        record = _record(raw)
        if not verify_secret(token, record.hash):
            raise TokenError("unknown or revoked token")
        principal = record.principal()
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[token] = (now + self._cache_s, principal)
        return principal


def _as_dict(record: TokenRecord) -> dict[str, Any]:
    return {"id": record.id, "subject": record.subject, "role": record.role, "hash": record.hash,
            "created_at": record.created_at, "label": record.label}


def _record(raw: bytes | str) -> TokenRecord:
    data = json.loads(raw)
    role = data.get("role")
    if role not in ROLES:
        raise TokenError("stored token has an unknown role")
    return TokenRecord(id=data["id"], subject=data["subject"], role=role, hash=data["hash"],
                       created_at=float(data.get("created_at", 0)), label=data.get("label", ""))
