"""Domain errors and their one JSON shape on the wire (RFC 9457 problem details).

Every error response is `application/problem+json`:
    {"type": "https://trainforge.dev/problems/<code>", "title": ..., "status": ..., "detail": ...,
     "code": "<code>", "errors": [{"field": "$.epochs", "message": "..."}]}   # errors: validation only
Domain code raises `GatewayError` subclasses; Litestar's problem-details plugin (`problem_details_plugin()`)
maps them, Litestar's own HTTP and validation errors and anything unexpected (500, logged with a traceback,
no internals in the body) to that shape. The OpenAPI document describes it (`gateway.apispec.ProblemDetails`)
and lists, per operation, the statuses it can answer.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import asyncpg
import msgspec
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsException, ProblemDetailsPlugin
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SATimeoutError

log = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "https://trainforge.dev/problems/"

CONNECTION_LOST: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, or no socket file (the server is stopped)
    TimeoutError,  # no answer within the timeout (frozen or overloaded)
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.CannotConnectNowError,  # starting up, shutting down, recovering
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
)
"""What the driver raises when the database server, not the request, is at fault (connecting, or a statement)."""


class GatewayError(Exception):
    """Something went wrong handling a request."""

    status_code = 500
    code = "internal_error"
    title = "Internal Server Error"

    def __init__(self, detail: str | None = None, *, errors: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.detail = detail or (self.__doc__ or self.title).strip()
        self.errors = errors
        self.headers = headers
        super().__init__(self.detail)


class BadRequest(GatewayError):
    """The request is malformed."""

    status_code, code, title = 400, "bad_request", "Bad Request"


class Unauthorized(GatewayError):
    """Authentication is required, or the credentials are not valid."""

    status_code, code, title = 401, "unauthorized", "Unauthorized"


class Forbidden(GatewayError):
    """You may see this resource but not do this to it."""

    status_code, code, title = 403, "forbidden", "Forbidden"


class NotFound(GatewayError):
    """No such resource."""

    status_code, code, title = 404, "not_found", "Not Found"


class Conflict(GatewayError):
    """The resource is not in a state that allows this."""

    status_code, code, title = 409, "conflict", "Conflict"


class Unprocessable(GatewayError):
    """The request is well-formed but its content is invalid."""

    status_code, code, title = 422, "validation_error", "Unprocessable Content"


class PayloadTooLarge(GatewayError):
    """The request body is too large."""

    status_code, code, title = 413, "payload_too_large", "Payload Too Large"


class Unavailable(GatewayError):
    """A dependency of the gateway is not reachable."""

    status_code, code, title = 503, "unavailable", "Service Unavailable"


RETRY_AFTER_S = 5
"""`Retry-After` of a 503 for a database or bus that is away (`up` restarts its servers within seconds)."""


class DatabaseUnavailable(Unavailable):
    """The database is unreachable or did not answer in time; try again shortly."""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(RETRY_AFTER_S)})


def problem(
    status: int, code: str, title: str, detail: str, *, errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> ProblemDetailsException:
    extra: dict[str, Any] = {"code": code}
    if errors:
        extra["errors"] = errors
    return ProblemDetailsException(detail=detail, status_code=status, headers=headers, extra=extra,
                                   type_=PROBLEM_TYPE_BASE + code, title=title)


def validation_errors(exc: msgspec.ValidationError) -> list[dict[str, str]]:
    """msgspec's message ends with `- at `$.path``; split it into field and message."""
    message = str(exc)
    field = "$"
    if " - at `" in message:
        message, _, rest = message.rpartition(" - at `")
        field = rest.rstrip("`")
    return [{"field": field, "message": message}]


def _gateway_error(exc: GatewayError) -> ProblemDetailsException:
    return problem(exc.status_code, exc.code, exc.title, exc.detail, errors=exc.errors, headers=exc.headers)


def _validation(exc: ValidationException) -> ProblemDetailsException:
    """Litestar's own validation: malformed JSON → 400; a bad body → 422; bad query/path/header → 400."""
    detail = str(exc.detail)
    if detail.startswith("JSON is malformed"):
        return problem(400, "bad_request", "Bad Request", f"Request body is not valid JSON ({detail})")
    items = [i for i in (exc.extra if isinstance(exc.extra, list) else []) if isinstance(i, dict)]
    errors = [
        {"field": str(i.get("key") or "$"), "message": str(i.get("message", "")), "source": str(i.get("source", ""))}
        for i in items
    ]
    if any(e["source"] == "body" for e in errors):
        return problem(422, "validation_error", "Unprocessable Content", "The request body is invalid",
                       errors=errors)
    return problem(400, "bad_request", "Bad Request", "Invalid request parameters", errors=errors or None)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
               415: "unsupported_media_type", 429: "rate_limited", 503: "unavailable"}


def _http(exc: HTTPException) -> ProblemDetailsException:
    status = exc.status_code
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return problem(status, _HTTP_CODES.get(status, "http_error"), title, str(exc.detail), headers=exc.headers)


def _too_deep(exc: RecursionError) -> ProblemDetailsException:
    """A safety net behind `gateway.limits`: input nested deeply enough to exhaust a recursive decoder is the
    client's, not a server error."""
    return problem(400, "bad_request", "Bad Request", "the request is nested too deeply to be read")


def _database_error(exc: DBAPIError) -> ProblemDetailsException:
    """A lost connection is the database's absence (503); any other database error is a bug (500). Errors a
    request can cause (unique violations, ...) are caught and mapped where they happen."""
    driver_error = getattr(exc.orig, "__cause__", None) or getattr(exc.orig, "orig", None)
    if exc.connection_invalidated or isinstance(exc.orig, CONNECTION_LOST) or isinstance(driver_error, CONNECTION_LOST):
        return _unavailable(exc)
    return _unexpected(exc)


def _unavailable(exc: Exception) -> ProblemDetailsException:
    """Postgres (or NATS) did not answer within its timeout, or the connection to it was lost."""
    log.warning("answering 503: %s: %s", type(exc).__name__, exc)
    error = exc if isinstance(exc, DatabaseUnavailable) else DatabaseUnavailable(
        "a service the gateway needs did not answer in time; try again shortly"
        if isinstance(exc, TimeoutError | SATimeoutError) else None)
    return _gateway_error(error)


def _unexpected(exc: Exception) -> ProblemDetailsException:
    log.error("unhandled error", exc_info=exc)
    return problem(500, "internal_error", "Internal Server Error",
                   "An unexpected error occurred; it has been logged.")


def problem_details_plugin() -> ProblemDetailsPlugin:
    """Every error, ours, Litestar's and unexpected ones, as one problem-details shape."""
    return ProblemDetailsPlugin(
        ProblemDetailsConfig(
            exception_to_problem_detail_map={
                GatewayError: _gateway_error,
                ValidationException: _validation,
                HTTPException: _http,
                RecursionError: _too_deep,
                DBAPIError: _database_error,
                SATimeoutError: _unavailable,  # no free pooled connection within the timeout
                TimeoutError: _unavailable,  # a statement (or a bus request) past its timeout
                Exception: _unexpected,
            }
        )
    )
