"""The HTTP and WebSocket edge of auth: who a request is, whether they may, and CORS for embedded clients.

Clients send ``Authorization: Bearer <token>``. A browser cannot set headers on a WebSocket, so
``/ws/`` also takes ``?token=``; the server keeps no access log, but a proxy in front may: prefer the
header where the client can send one. There are no cookies, so a page on another site cannot act
with an agent's session (no CSRF); a CRM page that embeds the client is let in by the
``http.allowed_origins`` list (CORS), never by a wildcard.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from cti.auth.tokens import Principal, Role, TokenError

__all__ = ["ANONYMOUS", "AUTH", "Authenticator", "cors_middleware", "forbidden", "principal", "require",
           "require_agent"]

log = structlog.get_logger(__name__)

#: Who every request is when auth is switched off (``auth.enabled: false``, development only).
ANONYMOUS = Principal("anonymous", "admin")


class Authenticator(Protocol):
    """:class:`cti.auth.store.TokenStore` is one."""

    async def resolve(self, token: str) -> Principal: ...


AUTH = web.AppKey("auth", Authenticator)
_PRINCIPAL = web.RequestKey("principal", Principal)


def http_error(status: type[web.HTTPException], error_id: str, message: str, **headers: str) -> web.HTTPException:
    """The API's error shape (``error_id``, ``message``, ``details``) as an exception to raise."""
    return status(text=json.dumps({"error_id": error_id, "message": message, "details": {}}),
                  content_type="application/json", headers=headers or None)


def forbidden(message: str) -> web.HTTPException:
    return http_error(web.HTTPForbidden, "forbidden", message)


def _token_of(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if request.path.startswith("/ws/"):
        return request.query.get("token") or None
    return None


async def principal(request: web.Request) -> Principal:
    """The caller, once per request; 401 (JSON, ``WWW-Authenticate: Bearer``) without a good token."""
    if _PRINCIPAL in request:
        return request[_PRINCIPAL]
    auth = request.app.get(AUTH)
    if auth is None:
        who = ANONYMOUS
    else:
        token = _token_of(request)
        if token is None:
            raise http_error(web.HTTPUnauthorized, "unauthenticated", "a token is required (Authorization: Bearer ...)",
                         **{"WWW-Authenticate": 'Bearer realm="cti"'})
        try:
            who = await auth.resolve(token)
        except TokenError as exc:
            log.warning("auth.refused", path=request.path, peer=request.remote, why=str(exc))
            raise http_error(web.HTTPUnauthorized, "bad-token", str(exc),
                         **{"WWW-Authenticate": 'Bearer realm="cti", error="invalid_token"'}) from None
        except (RedisError, OSError) as exc:
            raise http_error(web.HTTPServiceUnavailable, "auth-unavailable",
                         "tokens cannot be checked: Redis does not answer") from exc
    request[_PRINCIPAL] = who
    return who


async def require(request: web.Request, *roles: Role) -> Principal:
    """The caller, who must hold one of ``roles`` (any role when none are named)."""
    who = await principal(request)
    if roles and who.role not in roles:
        raise forbidden(f"this needs the {' or '.join(roles)} role; the token is a {who.role}'s")
    return who


async def require_agent(request: web.Request, agent_id: str) -> Principal:
    """The caller, who must be this agent, or a supervisor or admin."""
    who = await principal(request)
    if not who.may_see(agent_id):
        raise forbidden("an agent's token reaches only that agent's events, calls and commands")
    return who


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def cors_middleware(allowed_origins: Collection[str]) -> Middleware:
    """CORS for the listed origins only: their pages may call the API with a bearer token."""
    origins = frozenset(o.rstrip("/") for o in allowed_origins)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = (request.headers.get("Origin") or "").rstrip("/")
        allowed = origin in origins
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            if not allowed:
                raise forbidden("origin not allowed (http.allowed_origins)")
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if allowed:  # the page must be able to read the error too
                    exc.headers["Access-Control-Allow-Origin"] = origin
                    exc.headers["Vary"] = "Origin"
                raise
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    return cors
