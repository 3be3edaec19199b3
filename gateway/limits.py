"""Bounded requests: a body size per route and a maximum JSON nesting depth, answered 413 / 400, never 500.

- Size: every route has Litestar's `request_max_body_size`; the app's default is `max_json_kb` (command bodies
  are small). Upload routes set `None` and stream their body through `gateway.uploads` under their own limits.
- Depth: msgspec (like every recursive decoder) gives up on deeply nested input with a `RecursionError`, and a
  body nested ~1,000 levels deep cost a 500 on any route, before authentication. `RequestLimitsMiddleware`
  reads the (size-bounded) body of every request that has one, refuses JSON nested deeper than
  `max_json_depth` before anything decodes it, and hands the body on unchanged. It checks bodies whatever their
  `Content-Type` says, since Litestar decodes a route's `data` as JSON either way. `gateway.uploads.read_json`
  applies the same check to the JSON bodies of upload routes.
"""

from __future__ import annotations

import re

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import BadRequest, PayloadTooLarge

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_OPENERS = frozenset(b"[{")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth_exceeds(body: bytes, max_depth: int) -> bool:
    """Whether the JSON text `body` opens arrays/objects more than `max_depth` deep (malformed text is left to
    the decoder: this only counts brackets outside strings, and stops at the first one too deep).

    Strings and escapes are cut out and everything but brackets dropped by C-speed passes first; the count
    then runs over brackets only (about 20 ms for a 1 MB body of brackets, microseconds for a deep attack).
    """
    if b"[" not in body and b"{" not in body:
        return False
    skeleton = _STRING.sub(b"", _ESCAPE.sub(b"", body)).translate(None, _NOT_BRACKET)
    depth = 0
    for char in skeleton:
        if char in _OPENERS:
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False


def check_json_depth(body: bytes, max_depth: int) -> None:
    if json_depth_exceeds(body, max_depth):
        raise BadRequest(f"the JSON body is nested more than {max_depth} levels deep")


def too_large(limit: int) -> PayloadTooLarge:
    if limit >= 1024 * 1024:
        return PayloadTooLarge(f"the request body is larger than {-(-limit // (1024 * 1024))} MB")
    return PayloadTooLarge(f"the request body is larger than {-(-limit // 1024)} KB")


class RequestLimitsMiddleware(ASGIMiddleware):
    """Reads a request's body under its route's size limit and checks its JSON depth before the route sees it.

    Routes without a limit (`request_max_body_size=None`: streamed uploads) are passed through untouched.
    """

    scopes = (ScopeType.HTTP,)

    def __init__(self, max_json_depth: int) -> None:
        self.max_json_depth = max_json_depth

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        handler = scope.get("route_handler")
        limit = handler.resolve_request_max_body_size() if handler is not None else None  # type: ignore[union-attr]
        if scope.get("method") not in _BODY_METHODS or limit is None:
            await next_app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise too_large(limit)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: nothing to answer
                return
            body += message.get("body", b"")
            if len(body) > limit:
                raise too_large(limit)
            if not message.get("more_body", False):
                break
        data = bytes(body)
        check_json_depth(data, self.max_json_depth)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": data, "more_body": False}

        await next_app(scope, replay, send)
