"""Authentication: Litestar's JWT auth, extended to accept API tokens.

Every request needs `Authorization: Bearer <token>`, except the health checks, the OpenAPI schema and the
login, refresh and sign-up endpoints. The token is either
- an access token (a JWT from `POST /api/v1/auth/login` or `/refresh`): its `sub` is the user, its `sid` the
  login session, which must not be revoked (logout) or expired, nor its user disabled; or
- an API token (`tfp_...`, `POST /api/v1/tokens`), which must not be revoked or expired.
Browsers' EventSource cannot send headers: the SSE routes, and only they (handlers marked with
`opt={QUERY_TOKEN_OPT: True}`, matched by route, not by path), also take `?access_token=`. Logs never show it
(`shared.logredact` cuts query strings out of every log line).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token
from sqlalchemy import select, update

from gateway.auth.caller import Caller
from gateway.auth.secrets import API_TOKEN_PREFIX, jwt_secret, token_hash
from gateway.db.models import ApiToken, LoginSession, User
from gateway.state import GatewayState
from shared.settings import Settings

QUERY_TOKEN_OPT = "query_token"
"""Route handler option: this route (an SSE stream) also takes the token as `?access_token=`."""

PUBLIC_PATHS = ["^/health$", "^/ready$", "^/schema", "^/api/v1/auth/(login|refresh|signup)$"]
"""Reached without a token (regular expressions on the path)."""


def _gw(connection: ASGIConnection[Any, Any, Any, Any]) -> GatewayState:
    return connection.app.state.gw  # type: ignore[no-any-return]


def _address(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    return connection.client.host if connection.client else None


async def user_of_access_token(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> Caller | None:
    session_id = token.extras.get("sid")
    if not isinstance(session_id, str):
        return None
    gw = _gw(connection)
    async with gw.sessionmaker() as session:
        row = (await session.execute(
            select(User.id, User.username, User.is_admin).join(LoginSession, LoginSession.user_id == User.id)
            .where(User.id == token.sub, LoginSession.id == session_id, LoginSession.revoked_at.is_(None),
                   LoginSession.expires_at > datetime.now(UTC), User.disabled.is_(False))
        )).first()
    if row is None:
        return None
    return Caller(user_id=row.id, username=row.username, is_admin=row.is_admin, session_id=session_id,
                  address=_address(connection))


async def user_of_api_token(gw: GatewayState, token: str, address: str | None) -> Caller | None:
    now = datetime.now(UTC)
    async with gw.sessionmaker() as session:
        row = (await session.execute(
            select(ApiToken.id, ApiToken.last_used_at, User.id.label("user_id"), User.username, User.is_admin)
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
    return Caller(user_id=row.user_id, username=row.username, is_admin=row.is_admin, token_id=row.id,
                  address=address)


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
