"""Authentication: Litestar's JWT auth, extended to accept API tokens.

Every request needs `Authorization: Bearer <token>`, except the health checks, the OpenAPI schema and the
login, refresh and sign-up endpoints. The token is either
- an access token (a JWT from `POST /api/v1/auth/login` or `/refresh`): its `sub` is the user, its `sid` the
  login session, which must not be revoked (logout) or expired, nor its user disabled; or
- an API token (`tfp_...`, `POST /api/v1/tokens`), which must not be revoked or expired.
Browsers' EventSource cannot send headers: the SSE routes, and only they (handlers marked with
`opt={QUERY_TOKEN_OPT: True}`, matched by route, not by path), also take `?access_token=`. Logs never show it
(`shared.logredact` cuts query strings out of every log line).

Without a header, the dashboard's session cookie authenticates any route (`gateway.auth.browser`); a request
so authenticated that changes state must carry its session's `X-CSRF-Token` (else 403).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token
from sqlalchemy import select, update

from gateway.auth.browser import CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE, csrf_ok, user_of_session_cookie
from gateway.auth.caller import Caller
from gateway.auth.secrets import API_TOKEN_PREFIX, jwt_secret, token_hash
from gateway.dashboard import DASHBOARD_PATHS
from gateway.db.models import ApiToken, LoginSession, User
from gateway.state import GatewayState
from shared.settings import Settings

QUERY_TOKEN_OPT = "query_token"
"""Route handler option: this route (an SSE stream) also takes the token as `?access_token=`."""

PUBLIC_PATHS = ["^/health$", "^/ready$", "^/metrics$", "^/schema", "^/api/v1/fleet/datasets/",
                "^/api/v1/auth/(login|refresh|signup|session/login)$", DASHBOARD_PATHS]
"""Reached without a user's token (regular expressions on the path); `/api/v1/fleet/datasets/` checks a runner
credential itself (`gateway.dataset_archives`)."""


def _gw(connection: ASGIConnection[Any, Any, Any, Any]) -> GatewayState:
    return connection.app.state.gw  # type: ignore[no-any-return]


def _address(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    return connection.client.host if connection.client else None


async def user_of_access_token(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> Caller | None:
    session_id = token.extras.get("sid")
    if not isinstance(session_id, str):
        return None
    gw = _gw(connection)
    key = ("session", token.sub, session_id)
    if (cached := gw.callers.get(key, _address(connection))) is not None:
        return cached  # the JWT's signature and `exp` were checked before this
    async with gw.sessionmaker() as session:
        row = (await session.execute(
            select(User.id, User.username, User.is_admin, LoginSession.expires_at)
            .join(LoginSession, LoginSession.user_id == User.id)
            .where(User.id == token.sub, LoginSession.id == session_id, LoginSession.revoked_at.is_(None),
                   LoginSession.expires_at > datetime.now(UTC), User.disabled.is_(False))
        )).first()
    if row is None:
        return None
    caller = Caller(user_id=row.id, username=row.username, is_admin=row.is_admin, session_id=session_id,
                    address=_address(connection))
    gw.callers.put(key, caller, expires_at=row.expires_at)
    return caller


async def user_of_api_token(gw: GatewayState, token: str, address: str | None) -> Caller | None:
    key = ("api", token_hash(token))
    if (cached := gw.callers.get(key, address)) is not None:
        return cached
    now = datetime.now(UTC)
    async with gw.sessionmaker() as session:
        row = (await session.execute(
            select(ApiToken.id, ApiToken.last_used_at, ApiToken.expires_at, User.id.label("user_id"),
                   User.username, User.is_admin)
            .join(User, ApiToken.user_id == User.id)
            .where(ApiToken.token_hash == token_hash(token), ApiToken.revoked_at.is_(None), User.disabled.is_(False))
            .where((ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > now))
        )).first()
        if row is None:
            return None
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
            # noted at most once a minute: no write on every request
            await session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
            await session.commit()
    caller = Caller(user_id=row.user_id, username=row.username, is_admin=row.is_admin, token_id=row.id,
                    address=address)
    gw.callers.put(key, caller, expires_at=row.expires_at)
    return caller


def _takes_query_token(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    handler = connection.scope.get("route_handler")
    return bool(handler is not None and handler.opt.get(QUERY_TOKEN_OPT))


class BearerAuthMiddleware(JWTAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        header = connection.headers.get("Authorization")
        if header:
            scheme, _, credential = header.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise NotAuthorizedException("send the token as `Authorization: Bearer <token>`")
            credential = credential.strip()
        else:
            credential = connection.query_params.get("access_token", "") if _takes_query_token(connection) else ""
            cookie = connection.cookies.get(SESSION_COOKIE)
            if not credential and cookie:
                return await self._authenticate_cookie(connection, cookie)
            if not credential:
                raise NotAuthorizedException(
                    "authentication required: log in (POST /api/v1/auth/login) and send "
                    "`Authorization: Bearer <access token>`, or use an API token")
        if credential.startswith(API_TOKEN_PREFIX):
            caller = await user_of_api_token(_gw(connection), credential, _address(connection))
            if caller is None:
                raise NotAuthorizedException("the API token is not valid (unknown, revoked or expired)")
            return AuthenticationResult(user=caller, auth=credential)
        try:
            return await self.authenticate_token(encoded_token=credential, connection=connection)
        except NotAuthorizedException:
            raise NotAuthorizedException(
                "the access token is not valid (expired, malformed, or its session was logged out); "
                "refresh it (POST /api/v1/auth/refresh) or log in again") from None


    async def _authenticate_cookie(self, connection: ASGIConnection[Any, Any, Any, Any],
                                   cookie: str) -> AuthenticationResult:
        gw = _gw(connection)
        caller = await user_of_session_cookie(gw, cookie, _address(connection))
        if caller is None or caller.session_id is None:
            raise NotAuthorizedException("the session has ended (logged out or expired); log in again")
        if connection.scope["method"] not in SAFE_METHODS and not csrf_ok(
                gw.jwt_secret, caller.session_id, connection.headers.get(CSRF_HEADER)):
            raise PermissionDeniedException(
                f"a request with the session cookie that changes something must carry the session's "
                f"{CSRF_HEADER} header (GET /api/v1/auth/session gives it)")
        return AuthenticationResult(user=caller, auth=cookie)


def jwt_auth(settings: Settings) -> JWTAuth[Caller, Token]:
    return JWTAuth[Caller, Token](
        retrieve_user_handler=user_of_access_token,
        token_secret=jwt_secret(settings.jwt_secret, settings.state_dir),
        exclude=PUBLIC_PATHS,
        exclude_http_methods=["OPTIONS"],
        default_token_expiration=timedelta(seconds=settings.access_token_ttl_s),
        authentication_middleware_class=BearerAuthMiddleware,
        description="An access token (JWT) from POST /api/v1/auth/login, or an API token (tfp_...).",
    )
