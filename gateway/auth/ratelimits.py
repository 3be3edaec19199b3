"""Rate limits (Litestar's rate-limit middleware), answered with 429 and `Retry-After`:
- login, refresh and sign-up: per client address (`rate_limit_login_per_minute`);
- writes (POST, PUT, PATCH, DELETE): per user (`rate_limit_writes_per_minute`) and per client address
  (`rate_limit_address_writes_per_minute`).
Counts live in the gateway process's memory store: with several gateways, each enforces the limits on what
it serves.
"""

from __future__ import annotations

import time
from typing import Any

from litestar import Request
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.rate_limit import RateLimitConfig, RateLimitMiddleware
from litestar.types import Receive, Scope, Send

from gateway.auth.caller import Caller
from shared.settings import Settings

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOGIN_PATHS = frozenset({"/api/v1/auth/login", "/api/v1/auth/refresh", "/api/v1/auth/signup"})


class RetryAfterRateLimitMiddleware(RateLimitMiddleware):
    """Litestar's middleware, but a refused request also says when to come back (`Retry-After`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["litestar_app"]
        request: Request[Any, Any, Any] = app.request_class(scope)
        if not await self.should_check_request(request=request):
            await self.app(scope, receive, send)
            return
        store = self.config.get_store_from_app(app)
        key = self.cache_key_from_request(request)
        async with self._lock:
            cache_object = await self.retrieve_cached_history(key, store)
            if len(cache_object.history) >= self.max_requests:
                headers = self.create_response_headers(cache_object=cache_object)
                headers["Retry-After"] = str(max(1, cache_object.reset - int(time.time())))
                raise TooManyRequestsException(
                    detail=f"too many requests: at most {self.max_requests} per {self.unit}; "
                           f"retry in {headers['Retry-After']} s", headers=headers)
            await self.set_cached_history(key=key, cache_object=cache_object, store=store)
        await self.app(scope, receive, self.create_send_wrapper(send=send, cache_object=cache_object))


def _address(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "unknown"


def _user(request: Request[Any, Any, Any]) -> str:
    user = request.scope.get("user")
    return f"user:{user.user_id}" if isinstance(user, Caller) else f"addr:{_address(request)}"


def _is_login(request: Request[Any, Any, Any]) -> bool:
    return request.method == "POST" and request.url.path in LOGIN_PATHS


def _is_write(request: Request[Any, Any, Any]) -> bool:
    return request.method in WRITE_METHODS and request.url.path not in LOGIN_PATHS


def rate_limits(settings: Settings) -> list[DefineMiddleware]:
    """The rate-limit middlewares, after authentication (so they know the user). A limit of 0 is off."""
    configs = [
        ("login", settings.rate_limit_login_per_minute, _is_login, lambda r: f"login:{_address(r)}"),
        ("writes-user", settings.rate_limit_writes_per_minute, _is_write, _user),
        ("writes-address", settings.rate_limit_address_writes_per_minute, _is_write,
         lambda r: f"addr:{_address(r)}"),
    ]
    return [
        RateLimitConfig(rate_limit=("minute", limit), check_throttle_handler=check, identifier_for_request=ident,
                        middleware_class=RetryAfterRateLimitMiddleware, store=f"rate_limit_{name}").middleware
        for name, limit, check, ident in configs if limit > 0
    ]
