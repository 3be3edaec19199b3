"""Rate limits (Litestar's rate-limit middleware), answered with 429 and `Retry-After`:
- login, refresh and sign-up: per client address (`rate_limit_login_per_minute`);
- writes (POST, PUT, PATCH, DELETE): per user (`rate_limit_writes_per_minute`) and per client address
  (`rate_limit_address_writes_per_minute`).
Counts live in a JetStream KV bucket (`{prefix}_rate_limits`, in memory, keys lapse 2 minutes after their last
write) shared by every gateway, so behind several gateways a limit holds for all of them together. If NATS
cannot answer, a request is let through (a limit is a guard, not a reason to fail the API).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import nats.errors
import nats.js.errors
from litestar import Request
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.rate_limit import RateLimitConfig, RateLimitMiddleware
from litestar.stores.base import Store
from litestar.types import Receive, Scope, Send
from nats.js.kv import KeyValue

from gateway.auth.caller import Caller
from gateway.state import GatewayState
from shared.bus import ensure_rate_limits_bucket
from shared.settings import Settings

log = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOGIN_PATHS = frozenset({"/api/v1/auth/login", "/api/v1/auth/refresh", "/api/v1/auth/signup",
                         "/api/v1/auth/session/login"})


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
                metrics = getattr(app.state, "metrics", None)
                if metrics is not None:
                    metrics.rate_limited.labels(limit=self.config.store.removeprefix("rate_limit_")).inc()
                raise TooManyRequestsException(
                    detail=f"too many requests: at most {self.max_requests} per {self.unit}; "
                           f"retry in {headers['Retry-After']} s", headers=headers)
            await self.set_cached_history(key=key, cache_object=cache_object, store=store)
        await self.app(scope, receive, self.create_send_wrapper(send=send, cache_object=cache_object))


class KeyValueStore(Store):
    """A Litestar store on the gateways' shared JetStream KV bucket, one key namespace per store. Entries lapse
    with the bucket's TTL (`expires_in` is not per key): enough for windows of a minute."""

    def __init__(self, gateway: Callable[[], GatewayState], namespace: str) -> None:
        self._gateway = gateway
        self._namespace = namespace
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            gw = self._gateway()
            self._kv = await ensure_rate_limits_bucket(gw.js, gw.settings)
        return self._kv

    def _lost(self, exc: Exception) -> None:
        """After a NATS restart the in-memory bucket is gone: look it up (or make it) again next time."""
        if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.js.errors.NotFoundError
                      | nats.js.errors.ServiceUnavailableError | nats.js.errors.BucketNotFoundError):
            self._kv = None

    def _key(self, key: str) -> str:
        return f"{self._namespace}.{hashlib.sha256(key.encode()).hexdigest()[:40]}"

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        try:
            await (await self._bucket()).put(self._key(key), value.encode() if isinstance(value, str) else value)
        except nats.errors.Error as exc:
            self._lost(exc)
            log.warning("rate limits: could not record a request (%r)", exc)

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        try:
            entry = await (await self._bucket()).get(self._key(key))
        except nats.js.errors.KeyNotFoundError:  # never written, lapsed, or deleted
            return None
        except nats.errors.Error as exc:
            self._lost(exc)
            log.warning("rate limits: could not read a count (%r); letting the request through", exc)
            return None
        return entry.value

    async def delete(self, key: str) -> None:
        try:
            await (await self._bucket()).delete(self._key(key))
        except nats.errors.Error:
            pass

    async def delete_all(self) -> None:
        kv = await self._bucket()
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return
        for key in keys:
            if key.startswith(self._namespace + "."):
                await kv.delete(key)

    async def exists(self, key: str) -> bool:
        return await self.get(key) is not None

    async def expires_in(self, key: str) -> int | None:
        return None


def rate_limit_stores(gateway: Callable[[], GatewayState]) -> dict[str, Store]:
    """The stores the rate-limit middlewares count in (Litestar's `stores=`)."""
    return {f"rate_limit_{name}": KeyValueStore(gateway, name) for name in LIMITS}


def _address(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "unknown"


def _user(request: Request[Any, Any, Any]) -> str:
    user = request.scope.get("user")
    return f"user:{user.user_id}" if isinstance(user, Caller) else f"addr:{_address(request)}"


# The checks are coroutines: Litestar runs a plain function given as `check_throttle_handler` in a worker
# thread: a thread hop per limit on every request (about 0.15 ms of CPU each on the 2-core machine).
async def _is_login(request: Request[Any, Any, Any]) -> bool:
    return request.method == "POST" and request.url.path in LOGIN_PATHS


async def _is_write(request: Request[Any, Any, Any]) -> bool:
    return request.method in WRITE_METHODS and request.url.path not in LOGIN_PATHS


Check = Callable[[Request[Any, Any, Any]], Awaitable[bool]]
LIMITS: dict[str, tuple[str, Check, Callable[[Request[Any, Any, Any]], str]]] = {
    "login": ("rate_limit_login_per_minute", _is_login, lambda r: f"login:{_address(r)}"),
    "writes-user": ("rate_limit_writes_per_minute", _is_write, _user),
    "writes-address": ("rate_limit_address_writes_per_minute", _is_write, lambda r: f"addr:{_address(r)}"),
}
"""Name -> (the setting of its limit per minute, which requests it counts, whose count a request adds to)."""


def rate_limits(settings: Settings) -> list[DefineMiddleware]:
    """The rate-limit middlewares, after authentication (so they know the user). A limit of 0 is off."""
    return [
        RateLimitConfig(rate_limit=("minute", limit), check_throttle_handler=check, identifier_for_request=ident,
                        middleware_class=RetryAfterRateLimitMiddleware, store=f"rate_limit_{name}").middleware
        for name, (setting, check, ident) in LIMITS.items() if (limit := getattr(settings, setting)) > 0
    ]
