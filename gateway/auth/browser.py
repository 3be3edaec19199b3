"""The dashboard's cookie session: how a browser is authenticated without a token in script or URL.

`POST /api/v1/auth/session/login` opens a login session (the same `LoginSession` rows as `/auth/login`) and
sets its opaque session token in the cookie `trainforge_session`: `HttpOnly` (no script reads it),
`SameSite=Strict` (no other site's page makes the browser send it), `Path=/`, `Secure` behind https. The
gateway takes the cookie on every route when no `Authorization` header is sent; the bearer-token API is
unchanged (a request with a header is judged by the header alone).

CSRF: a cookie-authenticated request that changes state (any method but GET, HEAD, OPTIONS) must carry
`X-CSRF-Token: <token>`, the token `GET /api/v1/auth/session` (and the login) return: an HMAC of the session
id under the gateway's secret, so it is worthless for another session and cannot be guessed. A custom header also
forces a CORS preflight, which the gateway never grants with credentials. The login itself must carry
`X-Requested-With: trainforge` (a plain cross-site form cannot set it). Logout (`DELETE /api/v1/auth/session`,
or `POST /api/v1/auth/logout`) revokes the session and clears the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from sqlalchemy import select

from gateway.auth.caller import Caller
from gateway.auth.secrets import token_hash
from gateway.db.models import LoginSession, User
from gateway.state import GatewayState

SESSION_COOKIE = "trainforge_session"
CSRF_HEADER = "X-CSRF-Token"
LOGIN_HEADER = "X-Requested-With"
LOGIN_HEADER_VALUE = "trainforge"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(secret: str, session_id: str) -> str:
    """The CSRF token of a login session: HMAC-SHA256 of its id under the gateway's secret."""
    return hmac.new(secret.encode(), f"csrf:{session_id}".encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: str, session_id: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(csrf_token(secret, session_id), sent or "")


def is_https(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    forwarded = connection.headers.get("X-Forwarded-Proto", "")
    return connection.url.scheme == "https" or forwarded.split(",")[0].strip().lower() == "https"


def session_cookie(value: str, *, max_age: int, secure: bool) -> Cookie:
    return Cookie(key=SESSION_COOKIE, value=value, path="/", max_age=max_age, httponly=True,
                  samesite="strict", secure=secure)


def cleared_cookie(*, secure: bool) -> Cookie:
    return Cookie(key=SESSION_COOKIE, value="", path="/", max_age=0, httponly=True, samesite="strict",
                  secure=secure, expires=0)


async def user_of_session_cookie(gw: GatewayState, value: str, address: str | None) -> Caller | None:
    """The caller of a live cookie session (not revoked, not expired, user not disabled), else None."""
    async with gw.sessionmaker() as session:
        row = (await session.execute(
            select(User.id, User.username, User.is_admin, LoginSession.id.label("session_id"))
            .join(LoginSession, LoginSession.user_id == User.id)
            .where(LoginSession.refresh_hash == token_hash(value), LoginSession.revoked_at.is_(None),
                   LoginSession.expires_at > datetime.now(UTC), User.disabled.is_(False))
        )).first()
    if row is None:
        return None
    return Caller(user_id=row.id, username=row.username, is_admin=row.is_admin, session_id=row.session_id,
                  address=address)
