"""Request ids: every HTTP request gets one, taken from `X-Request-ID` when the client (or a proxy) sent a
usable one, else generated. It is returned in the response's `X-Request-ID`, bound to the log context for the
request (`shared.logsetup`: every log line of the request, uvicorn's access line included, carries it), and
stored with a run the request creates, whose job carries it to the runner (`Job.request_id`)."""

from __future__ import annotations

import re
import uuid

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from shared import logsetup

HEADER = "x-request-id"
USABLE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
"""What is taken as given: printable, no spaces or quotes, at most 128 characters; anything else is replaced."""


def request_id_from(sent: str | None) -> str:
    return sent if sent is not None and USABLE.fullmatch(sent) else uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request being handled, if any (the log context's)."""
    value = logsetup.context().get("request_id")
    return value if isinstance(value, str) else None


class RequestIdMiddleware(ASGIMiddleware):
    """Binds the request's id to the log context (see `add_request_id_header` for the response header)."""

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        sent = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == HEADER.encode()), None)
        token = logsetup.bind(request_id=request_id_from(sent))
        await next_app(scope, receive, send)
        # Unbound only on success: an exception raised by a middleware (401, 429) becomes its response outside
        # this one, and that response, its access-log line and the error's log line must carry the id too.
        # Each request runs in a task of its own (uvicorn, httpx's ASGI transport), so the binding ends with it.
        logsetup.unbind(token)


async def add_request_id_header(message: Message, scope: Scope) -> None:
    """Litestar `before_send` hook (the outermost send, so error responses of middlewares too): the response
    carries the request's id as `X-Request-ID`."""
    if message["type"] != "http.response.start":
        return
    request_id = current_request_id()
    if request_id is None:
        return
    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != HEADER.encode()]
    message["headers"] = [*headers, (HEADER.encode(), request_id.encode())]  # type: ignore[typeddict-unknown-key]
