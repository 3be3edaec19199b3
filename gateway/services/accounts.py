"""Users, login sessions and API tokens.

- The first admin is created when the database has no user (`ensure_first_admin`, at gateway start).
- Login checks the password (argon2id) and opens a session: an access token (JWT, `access_token_ttl_s`) and a
  refresh token (opaque, stored hashed, `refresh_token_ttl_h`). A refresh rotates the refresh token; logout
  revokes the session, which also ends its access tokens at once (the gateway checks the session on every
  request).
- API tokens (`tfp_...`) are long-lived bearer tokens for services and the CLI, shown once, stored hashed.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import msgspec
from litestar.security.jwt import Token
from msgspec import UNSET, Meta, UnsetType
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from gateway.auth.caller import Caller
from gateway.auth.secrets import (
    API_TOKEN_PREFIX,
    REFRESH_TOKEN_PREFIX,
    hash_password,
    new_token,
    read_or_create_secret,
    token_hash,
    verify_password,
)
from gateway.db.models import ApiToken, LoginSession, User
from gateway.errors import Conflict, Forbidden, NotFound, Unauthorized
from gateway.schemas import Request
from gateway.services import audit
from gateway.state import GatewayState
from shared import names
from shared.contracts.common import new_id
from shared.secretfiles import secret_file

log = logging.getLogger(__name__)

USERNAME_RE = names.USERNAME
Username = Annotated[str, Meta(pattern=USERNAME_RE, description="2-64 of a-z, 0-9, '.', '_', '-'")]
Password = Annotated[str, Meta(min_length=8, max_length=1024, description="At least 8 characters")]
TokenName = Annotated[str, Meta(min_length=1, max_length=128)]
_USERNAME = re.compile(USERNAME_RE)


# -- what the API takes and gives -------------------------------------------------------------------------


class LoginRequest(Request):
    username: Annotated[str, Meta(max_length=64)]
    password: Annotated[str, Meta(max_length=1024)]


class RefreshRequest(Request):
    refresh_token: Annotated[str, Meta(max_length=256)]


class LogoutRequest(Request):
    everywhere: bool = False
    """End every session of the user, not only this one."""


class SignupRequest(Request):
    username: Username
    password: Password


class UserCreate(Request):
    username: Username
    password: Password
    is_admin: bool = False


class UserUpdate(Request):
    """Only the fields present change. Changing the password or disabling ends the user's sessions."""

    password: Password | UnsetType = UNSET
    is_admin: bool | UnsetType = UNSET
    disabled: bool | UnsetType = UNSET


class PasswordChange(Request):
    current_password: Annotated[str, Meta(max_length=1024)]
    new_password: Password


class UserView(msgspec.Struct, kw_only=True):
    id: str
    username: str
    is_admin: bool
    disabled: bool
    created_at: datetime


class UserPage(msgspec.Struct, kw_only=True):
    items: list[UserView]
    total: int
    limit: int
    offset: int


class TokenPair(msgspec.Struct, kw_only=True):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    """Seconds the access token is valid."""
    refresh_expires_at: datetime
    user: UserView


class ApiTokenCreate(Request):
    name: TokenName
    expires_in_days: Annotated[int, Meta(ge=1, le=3650)] | None = None
    """None: until revoked."""


class ApiTokenView(msgspec.Struct, kw_only=True):
    id: str
    name: str
    prefix: str
    user_id: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiTokenCreated(ApiTokenView, kw_only=True):
    token: str
    """The token itself; shown only now."""


def user_view(row: User) -> UserView:
    return UserView(id=row.id, username=row.username, is_admin=row.is_admin, disabled=row.disabled,
                    created_at=row.created_at)


def token_view(row: ApiToken) -> ApiTokenView:
    return ApiTokenView(id=row.id, name=row.name, prefix=row.prefix, user_id=row.user_id, created_at=row.created_at,
                        expires_at=row.expires_at, last_used_at=row.last_used_at, revoked_at=row.revoked_at)


# -- users ----------------------------------------------------------------------------------------------


async def ensure_first_admin(gw: GatewayState) -> None:
    """With no user at all, create the admin `admin_username` with `admin_password`, or with a random password
    written to `<state_dir>/secrets/admin-password` (mode 0600) when none is configured."""
    settings = gw.settings
    async with gw.sessionmaker() as session:
        if (await session.execute(select(User.id).limit(1))).first() is not None:
            return
    password = settings.admin_password or read_or_create_secret(
        secret_file(settings.state_dir, "admin-password"), lambda: secrets.token_urlsafe(15))
    try:
        await create_user(gw, UserCreate(username=settings.admin_username, password=password, is_admin=True), None)
        log.info("created the first admin %r", settings.admin_username)
    except Conflict:
        pass  # another gateway created it first


async def create_user(gw: GatewayState, data: UserCreate | SignupRequest, by: Caller | None) -> User:
    """A new user, created by an admin (`by`) or by themselves (sign-up, the first admin: None)."""
    row = User(id=new_id(), username=data.username, password_hash=await hash_password(data.password),
               is_admin=getattr(data, "is_admin", False), disabled=False)
    async with gw.sessionmaker() as session:
        session.add(row)
        try:
            await session.flush()
        except IntegrityError:
            raise Conflict(f"the username {data.username!r} is taken") from None
        audit.record(session, by, "user.create", "user", row.id, username=row.username, is_admin=row.is_admin)
        await session.commit()
        await session.refresh(row)
    return row


async def get_user(gw: GatewayState, ref: str) -> User:
    """A user by id or username."""
    async with gw.sessionmaker() as session:
        row = (await session.execute(select(User).where(or_(User.id == ref, User.username == ref))
                                     .order_by((User.id == ref).desc()).limit(1))).scalar_one_or_none()
    if row is None:
        raise NotFound(f"user {ref!r} not found")
    return row


async def list_users(gw: GatewayState, *, limit: int, offset: int) -> UserPage:
    async with gw.sessionmaker() as session:
        total = (await session.execute(select(func.count()).select_from(User))).scalar_one()
        rows = (await session.execute(select(User).order_by(User.username).limit(limit).offset(offset))).scalars()
        return UserPage(items=[user_view(r) for r in rows], total=total, limit=limit, offset=offset)


async def update_user(gw: GatewayState, ref: str, data: UserUpdate, *, by: Caller) -> User:
    target = await get_user(gw, ref)
    values: dict[str, object] = {}
    if data.password is not UNSET:
        values["password_hash"] = await hash_password(data.password)
    if data.is_admin is not UNSET:
        values["is_admin"] = data.is_admin
    if data.disabled is not UNSET:
        values["disabled"] = data.disabled
    if target.id == by.user_id and (values.get("is_admin") is False or values.get("disabled") is True):
        raise Conflict("you cannot remove your own admin role or disable yourself; ask another admin")
    if values:
        async with gw.sessionmaker() as session, session.begin():
            await session.execute(update(User).where(User.id == target.id).values(**values, updated_at=func.now()))
            if "password_hash" in values or values.get("disabled") is True:
                await _revoke_sessions(session, target.id)
            changed = ["password" if k == "password_hash" else k for k in values]
            audit.record(session, by, "user.update", "user", target.id, username=target.username, changed=changed)
        gw.callers.clear()  # a role or a disabled user counts at once here (elsewhere within auth_cache_s)
    return await get_user(gw, target.id)


async def change_password(gw: GatewayState, caller: Caller, data: PasswordChange) -> None:
    """The caller's own password; ends every other session of theirs."""
    user = await get_user(gw, caller.user_id)
    if not await verify_password(user.password_hash, data.current_password):
        raise Forbidden("the current password is wrong")
    async with gw.sessionmaker() as session, session.begin():
        await session.execute(update(User).where(User.id == user.id).values(
            password_hash=await hash_password(data.new_password), updated_at=func.now()))
        await _revoke_sessions(session, user.id, keep=caller.session_id)
    gw.callers.clear()


async def _revoke_sessions(session: object, user_id: str, keep: str | None = None) -> None:
    query = update(LoginSession).where(LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None))
    if keep is not None:
        query = query.where(LoginSession.id != keep)
    await session.execute(query.values(revoked_at=func.now()))  # type: ignore[attr-defined]


# -- login sessions -------------------------------------------------------------------------------------


def _access_token(gw: GatewayState, user_id: str, session_id: str) -> tuple[str, int]:
    ttl = int(gw.settings.access_token_ttl_s)
    token = Token(sub=user_id, exp=datetime.now(UTC) + timedelta(seconds=ttl), jti=new_id(),
                  extras={"sid": session_id})
    return token.encode(gw.jwt_secret, "HS256"), ttl


@dataclass(frozen=True)
class OpenedSession:
    """A login session just opened: its id, its secret (refresh or cookie token), when it ends, its user."""

    session_id: str
    secret: str
    expires_at: datetime
    user: User


async def open_session(gw: GatewayState, data: LoginRequest, address: str | None) -> OpenedSession:
    """A new login session for a user with the right password. The same 401 for an unknown user, a wrong
    password and a disabled user, in about the same time."""
    async with gw.sessionmaker() as session:
        user = (await session.execute(select(User).where(User.username == data.username))).scalar_one_or_none()
    ok = await verify_password(user.password_hash if user else None, data.password)
    if user is None or not ok or user.disabled:
        raise Unauthorized("wrong username or password")
    secret = new_token(REFRESH_TOKEN_PREFIX)
    expires = datetime.now(UTC) + timedelta(hours=gw.settings.refresh_token_ttl_h)
    row = LoginSession(id=new_id(), user_id=user.id, refresh_hash=token_hash(secret), expires_at=expires,
                       client_address=address)
    async with gw.sessionmaker() as session, session.begin():
        session.add(row)
    return OpenedSession(session_id=row.id, secret=secret, expires_at=expires, user=user)


async def login(gw: GatewayState, data: LoginRequest, address: str | None) -> TokenPair:
    """A new session (`open_session`): an access token and its refresh token."""
    opened = await open_session(gw, data, address)
    access, ttl = _access_token(gw, opened.user.id, opened.session_id)
    return TokenPair(access_token=access, refresh_token=opened.secret, expires_in=ttl,
                     refresh_expires_at=opened.expires_at, user=user_view(opened.user))


async def refresh(gw: GatewayState, data: RefreshRequest) -> TokenPair:
    """A new access token and a new refresh token for a live session; the old refresh token stops working."""
    new_refresh = new_token(REFRESH_TOKEN_PREFIX)
    async with gw.sessionmaker() as session, session.begin():
        found = (await session.execute(
            select(LoginSession, User).join(User, User.id == LoginSession.user_id)
            .where(LoginSession.refresh_hash == token_hash(data.refresh_token), LoginSession.revoked_at.is_(None),
                   LoginSession.expires_at > datetime.now(UTC), User.disabled.is_(False))
            .with_for_update(of=LoginSession))).first()
        if found is None:
            raise Unauthorized("the refresh token is not valid (unknown, used, expired or logged out); log in again")
        login_session, user = found
        login_session.refresh_hash = token_hash(new_refresh)
        login_session.refreshed_at = datetime.now(UTC)
    access, ttl = _access_token(gw, user.id, login_session.id)
    return TokenPair(access_token=access, refresh_token=new_refresh, expires_in=ttl,
                     refresh_expires_at=login_session.expires_at, user=user_view(user))


async def logout(gw: GatewayState, caller: Caller, *, everywhere: bool) -> None:
    """End the caller's session (or all of them): its refresh token and access tokens stop working."""
    async with gw.sessionmaker() as session, session.begin():
        if everywhere:
            await _revoke_sessions(session, caller.user_id)
        elif caller.session_id is not None:
            await session.execute(update(LoginSession).where(LoginSession.id == caller.session_id)
                                  .values(revoked_at=func.now()))
        elif caller.token_id is not None:
            await session.execute(update(ApiToken).where(ApiToken.id == caller.token_id)
                                  .values(revoked_at=func.now()))
    gw.callers.clear()


# -- API tokens -----------------------------------------------------------------------------------------


async def create_api_token(gw: GatewayState, caller: Caller, data: ApiTokenCreate) -> ApiTokenCreated:
    token = new_token(API_TOKEN_PREFIX)
    expires = datetime.now(UTC) + timedelta(days=data.expires_in_days) if data.expires_in_days else None
    row = ApiToken(id=new_id(), user_id=caller.user_id, name=data.name, token_hash=token_hash(token),
                   prefix=token[:10], expires_at=expires)
    async with gw.sessionmaker() as session:
        session.add(row)
        audit.record(session, caller, "token.create", "api_token", row.id, name=row.name)
        await session.commit()
        await session.refresh(row)
    return ApiTokenCreated(**msgspec.structs.asdict(token_view(row)), token=token)


async def list_api_tokens(gw: GatewayState, caller: Caller, *, include_revoked: bool) -> list[ApiTokenView]:
    query = select(ApiToken).where(ApiToken.user_id == caller.user_id)
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    async with gw.sessionmaker() as session:
        rows = (await session.execute(query.order_by(ApiToken.created_at.desc()))).scalars()
        return [token_view(r) for r in rows]


async def revoke_api_token(gw: GatewayState, caller: Caller, token_id: str) -> ApiToken:
    """Revoke one of the caller's tokens (an admin: anyone's). Repeating it is harmless."""
    async with gw.sessionmaker() as session, session.begin():
        row = await session.get(ApiToken, token_id) if _is_id(token_id) else None
        if row is None or not (caller.is_admin or row.user_id == caller.user_id):
            raise NotFound(f"API token {token_id!r} not found")
        if row.revoked_at is None:
            row.revoked_at = datetime.now(UTC)
            audit.record(session, caller, "token.revoke", "api_token", row.id, name=row.name)
    gw.callers.clear()
    return row


def _is_id(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{32}", value))
