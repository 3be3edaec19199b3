"""The dashboard's cookie session: `/api/v1/auth/session` (log in, who am I with the CSRF token, log out).
How the cookie and the CSRF token work: `gateway.auth.browser`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post

from gateway.auth.browser import (
    LOGIN_HEADER,
    LOGIN_HEADER_VALUE,
    SESSION_COOKIE,
    cleared_cookie,
    csrf_token,
    is_https,
    session_cookie,
)
from gateway.auth.caller import Me
from gateway.errors import Forbidden, NotFound
from gateway.routeopts import ERRORS_OPT
from gateway.services import accounts
from gateway.services.accounts import LoginRequest, UserView
from gateway.state import Gateway


class BrowserSession(msgspec.Struct, kw_only=True):
    user: UserView
    csrf_token: str
    """Send it as `X-CSRF-Token` with every request that changes something."""
    expires_at: datetime | None = None


def _address(request: Request[Any, Any, Any]) -> str | None:
    return request.client.host if request.client else None


def _with_cookie(request: Request[Any, Any, Any]) -> bool:
    """The request was authenticated by the session cookie (not by an Authorization header)."""
    return "Authorization" not in request.headers and bool(request.cookies.get(SESSION_COOKIE))


class BrowserSessionController(Controller):
    path = "/auth/session"
    tags = ["auth"]

    @post("/login", status_code=200, security=[], opt={ERRORS_OPT: {403}},
          summary="Log in a browser: sets the httpOnly session cookie (send `X-Requested-With: trainforge`)")
    async def login(self, gw: Gateway, request: Request[Any, Any, Any],
                    data: LoginRequest) -> Response[BrowserSession]:
        if request.headers.get(LOGIN_HEADER) != LOGIN_HEADER_VALUE:
            raise Forbidden(f"a browser login must carry `{LOGIN_HEADER}: {LOGIN_HEADER_VALUE}`")
        opened = await accounts.open_session(gw, data, _address(request))
        max_age = int(gw.settings.refresh_token_ttl_h * 3600)
        body = BrowserSession(user=accounts.user_view(opened.user), expires_at=opened.expires_at,
                              csrf_token=csrf_token(gw.jwt_secret, opened.session_id))
        cookie = session_cookie(opened.secret, max_age=max_age, secure=is_https(request))
        return Response(body, cookies=[cookie], headers={"Cache-Control": "no-store"})

    @get("/", summary="The browser's session: who you are and the CSRF token (cookie sessions only)",
         opt={ERRORS_OPT: {404}})
    async def read(self, gw: Gateway, me: Me, request: Request[Any, Any, Any]) -> Response[BrowserSession]:
        if not _with_cookie(request) or me.session_id is None:
            raise NotFound("no browser session: this request was not authenticated by the session cookie")
        body = BrowserSession(user=accounts.user_view(await accounts.get_user(gw, me.user_id)),
                              csrf_token=csrf_token(gw.jwt_secret, me.session_id))
        return Response(body, headers={"Cache-Control": "no-store"})

    @delete("/", status_code=204, summary="Log the browser out: ends the session and clears its cookie")
    async def logout(self, gw: Gateway, me: Me, request: Request[Any, Any, Any]) -> Response[None]:
        await accounts.logout(gw, me, everywhere=False)
        return Response(None, status_code=204, cookies=[cleared_cookie(secure=is_https(request))])
