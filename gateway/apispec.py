"""The OpenAPI document says what the gateway really answers: the error statuses of every operation (as
`application/problem+json`, schema `ProblemDetails`), Server-Sent Events as `text/event-stream`, downloads with
their media types.

Litestar documents a handler's success response and little else. `document_responses(app)` walks the app's
routes once, before the schema is first built, and adds to each handler's `responses` the errors its route
can answer, by rule (what the middleware and the handler's options imply):

| answered | when |
| --- | --- |
| 400 | every operation with parameters or a body (malformed JSON, a bad query, path or header value) |
| 401 | behind authentication (all but `PUBLIC_PATHS`); and login / refresh, whose credentials may be wrong |
| 403 | behind authentication: a guard (admins only) or a project role below the one needed |
| 404 | a path parameter names something that does not exist (or the caller may not see); a write that names another resource (a dataset, a model, a project) |
| 409 | writes (POST, PUT, PATCH, DELETE): a name taken, a state that does not allow it |
| 413 | a request body beyond its limit (`TRAINFORGE_MAX_JSON_KB`, upload limits) |
| 415 | a request body of a media type the operation does not take |
| 422 | a body (or, for writes, a combination of values) that is invalid; field errors in `errors` |
| 429 | writes (per user and per address) and login, refresh, sign-up (per address); `Retry-After` |
| 503 | everything that needs the database or NATS while it is away; `Retry-After` |

A handler adds statuses the rules miss with `opt={ERRORS_OPT: {...}}`, and names its success media type with
`opt={MEDIA_TYPE_OPT: "..."}` (a `File` whose type depends on the file, for one). A handler that returns a
`ServerSentEvent` is documented as `text/event-stream` by itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.response import ServerSentEvent
from litestar.routes import HTTPRoute

from gateway.auth.middleware import PUBLIC_PATHS
from gateway.auth.ratelimits import LOGIN_PATHS, WRITE_METHODS
from gateway.routeopts import ERRORS_OPT, MEDIA_TYPE_OPT

PROBLEM_MEDIA_TYPE = "application/problem+json"
EVENT_STREAM = "text/event-stream"

_PUBLIC = [re.compile(pattern) for pattern in PUBLIC_PATHS]
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


class FieldError(msgspec.Struct, kw_only=True):
    field: str
    """Where: `$.epochs` (a JSON path into the body), or a parameter's name."""
    message: str
    source: str | None = None
    """body, query, path, header (validation by the framework)."""


class ProblemDetails(msgspec.Struct, kw_only=True):
    """RFC 9457 problem details: every error the gateway answers has this shape (gateway/errors.py)."""

    type: str
    """`https://trainforge.dev/problems/<code>`"""
    title: str
    status: int
    detail: str
    code: str
    """Stable, for programs: bad_request, unauthorized, forbidden, not_found, conflict, payload_too_large,
    unsupported_media_type, validation_error, rate_limited, unavailable, ..."""
    errors: list[FieldError] | None = None
    """Validation errors only: one per field."""


_DESCRIPTIONS = {
    400: "The request is malformed: JSON that does not parse, a bad query, path or header value.",
    401: "No credentials, or credentials that are not valid (expired, revoked, wrong password).",
    403: "Authenticated, but not allowed: admins only, or your role in the project is below the one needed.",
    404: "No such resource, or one you may not see.",
    409: "The resource's state does not allow this (a name already taken, a run already ended, ...).",
    413: "The request body is too large.",
    415: "The request body's media type is not one this operation takes.",
    422: "The request is well-formed but invalid; `errors` names the fields.",
    429: "Too many requests; `Retry-After` says when to try again.",
    503: "A service the gateway needs (the database, NATS) is not reachable; `Retry-After` says when to retry.",
}


def error_statuses(path: str, method: str, handler: HTTPRouteHandler, *, path_params: bool) -> set[int]:
    """The error statuses the operation `method path` can answer (see the module's table)."""
    public = any(p.search(path) for p in _PUBLIC)
    write = method in WRITE_METHODS
    body = method not in _NO_BODY_METHODS
    has_params = path_params or bool(_query_parameters(handler)) or body
    statuses: set[int] = set()
    if has_params:
        statuses.add(400)
    if not public:
        statuses |= {401, 403}
    if path_params or (write and not public):
        statuses.add(404)
    if write:
        statuses.add(409)
    if body:
        statuses |= {413, 415, 422}
    if write or path in LOGIN_PATHS:
        statuses.add(429)
    if path in LOGIN_PATHS and path.endswith(("/login", "/refresh")):
        statuses.add(401)
    if path != "/health":
        statuses.add(503)
    statuses |= set(handler.opt.get(ERRORS_OPT, ()))
    return statuses


def _query_parameters(handler: HTTPRouteHandler) -> list[str]:
    reserved = {"self", "data", "request", "socket", "state", "scope", "headers", "cookies", "query", "body"}
    dependencies = set(handler.resolve_dependencies())
    return [name for name in handler.parsed_fn_signature.parameters
            if name not in reserved and name not in dependencies]


def _returns_event_stream(handler: HTTPRouteHandler) -> bool:
    annotation: Any = handler.parsed_fn_signature.return_type.annotation
    return isinstance(annotation, type) and issubclass(annotation, ServerSentEvent)


def document_responses(app: Litestar) -> None:
    """Add the error responses (and the event-stream and download media types) to every documented handler
    of `app`. Call it once, right after the app is made: the schema is built on its first request."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path_params = bool(route.path_parameters)
        for handler in _unique(route.route_handlers):
            if not handler.resolve_include_in_schema():
                continue
            responses: dict[int, ResponseSpec] = dict(handler.responses or {})
            statuses: set[int] = set()
            for method in handler.http_methods:
                statuses |= error_statuses(route.path, method, handler, path_params=path_params)
            for status in sorted(statuses):
                responses.setdefault(status, ResponseSpec(
                    data_container=ProblemDetails, generate_examples=False, media_type=PROBLEM_MEDIA_TYPE,
                    description=_DESCRIPTIONS.get(status, HTTPStatus(status).phrase)))
            if handler.status_code == 204:  # no body, whatever the annotation (`Response[None]` to set a cookie)
                responses[204] = ResponseSpec(data_container=None, generate_examples=False,
                                              description="Done; nothing follows.")
            media_type = EVENT_STREAM if _returns_event_stream(handler) else handler.opt.get(MEDIA_TYPE_OPT)
            if media_type == EVENT_STREAM:
                responses.setdefault(handler.status_code, ResponseSpec(
                    data_container=str, generate_examples=False, media_type=EVENT_STREAM,
                    description="Server-Sent Events (`id`, `event`, `data` lines); resume with `Last-Event-ID`."))
            elif media_type:
                responses.setdefault(handler.status_code, ResponseSpec(
                    data_container=bytes, generate_examples=False, media_type=media_type, description="The file."))
            handler.responses = responses


def _unique(handlers: Iterable[HTTPRouteHandler]) -> list[HTTPRouteHandler]:
    seen: dict[int, HTTPRouteHandler] = {}
    for handler in handlers:
        seen.setdefault(id(handler), handler)
    return list(seen.values())
