"""Users and access: `/api/v1/auth` (login, refresh, logout, sign-up, me), `/api/v1/users` (admins manage
users), `/api/v1/tokens` (your API tokens), `/api/v1/audit` (admins read the audit log)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Controller, Request, delete, get, patch, post
from litestar.params import Parameter

from gateway.auth.access import admin_only
from gateway.auth.caller import Me
from gateway.controllers.common import Limit, Offset, page_limit
from gateway.errors import Forbidden
from gateway.routeopts import ERRORS_OPT
from gateway.services import accounts, audit
from gateway.services.accounts import (
    ApiTokenCreate,
    ApiTokenCreated,
    ApiTokenView,
    LoginRequest,
    LogoutRequest,
    PasswordChange,
    RefreshRequest,
    SignupRequest,
    TokenPair,
    UserCreate,
    UserPage,
    UserUpdate,
    UserView,
)
from gateway.services.audit import ACTION_PATTERN, AuditPage
from gateway.state import Gateway


def _address(request: Request[Any, Any, Any]) -> str | None:
    return request.client.host if request.client else None


class AuthController(Controller):
    path = "/auth"
    tags = ["auth"]

    @post("/login", summary="Log in: an access token (JWT) and a refresh token", status_code=200, security=[])
    async def login(self, gw: Gateway, request: Request[Any, Any, Any], data: LoginRequest) -> TokenPair:
        return await accounts.login(gw, data, _address(request))

    @post("/refresh", summary="A new access token (and refresh token) for a refresh token", status_code=200,
          security=[])
    async def refresh(self, gw: Gateway, data: RefreshRequest) -> TokenPair:
        return await accounts.refresh(gw, data)

    @post("/logout", summary="End this session (or all of yours): its tokens stop working", status_code=204)
    async def logout(self, gw: Gateway, me: Me, data: LogoutRequest | None = None) -> None:
        await accounts.logout(gw, me, everywhere=(data or LogoutRequest()).everywhere)

    @post("/signup", summary="Create an account (only when open sign-up is enabled)", status_code=201,
          security=[], opt={ERRORS_OPT: {403}})
    async def signup(self, gw: Gateway, data: SignupRequest) -> UserView:
        if not gw.settings.open_signup:
            raise Forbidden("sign-up is closed on this server; ask an admin for an account")
        return accounts.user_view(await accounts.create_user(gw, data, None))

    @get("/me", summary="Who you are")
    async def me(self, gw: Gateway, me: Me) -> UserView:
        return accounts.user_view(await accounts.get_user(gw, me.user_id))

    @post("/password", summary="Change your password (ends your other sessions)", status_code=204)
    async def password(self, gw: Gateway, me: Me, data: PasswordChange) -> None:
        await accounts.change_password(gw, me, data)


class UsersController(Controller):
    path = "/users"
    tags = ["users"]
    guards = [admin_only]

    @post("/", summary="Create a user (admins)", status_code=201)
    async def create(self, gw: Gateway, me: Me, data: UserCreate) -> UserView:
        return accounts.user_view(await accounts.create_user(gw, data, me))

    @get("/", summary="List users (admins)")
    async def index(self, gw: Gateway, limit: Limit = 50, offset: Offset = 0) -> UserPage:
        return await accounts.list_users(gw, limit=page_limit(gw, limit), offset=offset)

    @get("/{ref:str}", summary="A user, by id or username (admins)")
    async def read(self, gw: Gateway, ref: str) -> UserView:
        return accounts.user_view(await accounts.get_user(gw, ref))

    @patch("/{ref:str}", summary="Change a user's password, admin role or disabled flag (admins)")
    async def update(self, gw: Gateway, me: Me, ref: str, data: UserUpdate) -> UserView:
        return accounts.user_view(await accounts.update_user(gw, ref, data, by=me))


class TokensController(Controller):
    path = "/tokens"
    tags = ["auth"]

    @post("/", summary="Create an API token for yourself (the token is shown only in this answer)",
          status_code=201)
    async def create(self, gw: Gateway, me: Me, data: ApiTokenCreate) -> ApiTokenCreated:
        return await accounts.create_api_token(gw, me, data)

    @get("/", summary="Your API tokens (never the tokens themselves)")
    async def index(self, gw: Gateway, me: Me, include_revoked: bool = False) -> list[ApiTokenView]:
        return await accounts.list_api_tokens(gw, me, include_revoked=include_revoked)

    @delete("/{token_id:str}", summary="Revoke an API token", status_code=204)
    async def revoke(self, gw: Gateway, me: Me, token_id: str) -> None:
        await accounts.revoke_api_token(gw, me, token_id)


class AuditController(Controller):
    path = "/audit"
    tags = ["audit"]
    guards = [admin_only]

    @get("/", summary="The audit log, newest first (admins)")
    async def index(
        self, gw: Gateway,
        actor: str | None = Parameter(default=None, max_length=64, description="Username or user id"),
        action: str | None = Parameter(default=None, pattern=ACTION_PATTERN,
                                       description="e.g. run.cancel, or run for all"),
        resource_type: str | None = Parameter(default=None, max_length=32),
        resource_id: str | None = Parameter(default=None, max_length=128),
        project_id: str | None = Parameter(default=None, max_length=32),
        since: datetime | None = None, until: datetime | None = None,
        limit: Limit = 50, offset: Offset = 0,
    ) -> AuditPage:
        return await audit.query(gw, actor=actor, action=action, resource_type=resource_type,
                                 resource_id=resource_id, project_id=project_id, since=since, until=until,
                                 limit=page_limit(gw, limit), offset=offset)
