"""What the REST controllers share: paging parameters and answering a POST once per Idempotency-Key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Request
from litestar.params import Parameter, QueryParameter
from litestar.response import Response

from gateway.errors import BadRequest, GatewayError
from gateway.services import idempotency
from gateway.state import Gateway

MAX_OFFSET = 10**12
MAX_POSITION = 2**63 - 1

IdempotencyKey = Annotated[
    str | None,
    Parameter(
        header="Idempotency-Key",
        min_length=1,
        max_length=idempotency.MAX_KEY_LENGTH,
        description="Repeat the POST with the same key and body to get the first response again; "
        "nothing is created twice.",
    ),
]
Limit = Annotated[int, Parameter(ge=1, description="Page size (at most the server's page_size_max)")]
Offset = Annotated[int, Parameter(ge=0, le=MAX_OFFSET, description="Items to skip")]
After = Annotated[int, Parameter(ge=0, le=MAX_POSITION, description="Return what came after this position")]
Attempt = Annotated[int | None, Parameter(ge=0, le=1_000_000, description="Only this attempt")]


def page_limit(gw: Gateway, limit: int) -> int:
    if limit > gw.settings.page_size_max:
        raise BadRequest(f"limit must be at most {gw.settings.page_size_max}")
    return limit


@dataclass(frozen=True)
class Reply:
    """A POST's answer. With `error`, the caller gets the error, but a repeat of the request gets this reply
    (the work was done, only a later step failed)."""

    status_code: int
    body: msgspec.Struct
    error: GatewayError | None = None


async def respond_once(
    gw: Gateway,
    request: Request[Any, Any, Any],
    key: str | None,
    payload: msgspec.Struct | None,
    work: Callable[[], Awaitable[Reply]],
) -> Response[Any]:
    """Do `work` and answer with its reply, or, for a repeat of an Idempotency-Key, the first reply again."""
    if key is None:
        reply = await work()
        if reply.error is not None:
            raise reply.error
        return Response(reply.body, status_code=reply.status_code)
    scope = idempotency_scope(request)
    request_hash = idempotency.fingerprint(msgspec.json.encode(payload))
    stored = await idempotency.begin(gw, scope, key, request_hash)
    if stored is not None:
        return Response(stored.body, status_code=stored.status_code, headers={"Idempotent-Replayed": "true"})
    try:
        reply = await work()
    except BaseException:
        await asyncio.shield(idempotency.release(gw, scope, key))
        raise
    await idempotency.complete(gw, scope, key, reply.status_code, msgspec.to_builtins(reply.body))
    if reply.error is not None:
        raise reply.error
    return Response(reply.body, status_code=reply.status_code)


def idempotency_scope(request: Request[Any, Any, Any]) -> str:
    """What an Idempotency-Key is unique within: the caller, method and path (two users' keys never meet)."""
    user = request.scope.get("user")
    return f"{getattr(user, 'user_id', '-')} {request.method} {request.url.path}"


AccessTokenQuery = Annotated[
    str | None,
    QueryParameter(name="access_token", required=False, max_length=4096,
                   description="For clients that cannot send headers (EventSource): the bearer token. Taken on the "
                               "Server-Sent Events routes only."),
]
