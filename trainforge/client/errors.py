"""The client's exceptions: one root, `TrainforgeError`, and one class per kind of answer.

An error answer of the API is RFC 9457 problem details (`{"status", "title", "detail", "code", "errors"}`);
`error_for` turns it into the matching exception, with the status, the detail, the problem code, the field
errors (`Invalid.errors`) and the `Retry-After` seconds (`RateLimited`, `Unavailable`).
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    """One invalid field of a request: `field` as the API names it (`$.epochs`, `extra.lr`, `name`)."""

    field: str
    message: str


class TrainforgeError(Exception):
    """The Trainforge API could not do what was asked."""

    status: int | None = None

    def __init__(self, message: str | None = None, *, status: int | None = None, detail: str | None = None,
                 code: str | None = None, errors: list[FieldError] | None = None,
                 retry_after: float | None = None) -> None:
        self.detail = detail or message or (self.__doc__ or "").strip()
        self.status = status if status is not None else type(self).status
        self.code = code
        self.errors: list[FieldError] = errors or []
        self.retry_after = retry_after
        super().__init__(message or self._text())

    def _text(self) -> str:
        extra = "; ".join(f"{e.field}: {e.message}" for e in self.errors)
        head = f"HTTP {self.status}: {self.detail}" if self.status else self.detail
        return head + (f" ({extra})" if extra else "")

    @property
    def fields(self) -> dict[str, str]:
        """Field errors by field name (the `$.` prefix of a JSON path dropped)."""
        return {e.field.removeprefix("$.").removeprefix("$"): e.message for e in self.errors}


class ConnectionFailed(TrainforgeError):
    """The gateway could not be reached (is `trainforge up` running?)."""


class Timeout(TrainforgeError):
    """The gateway did not answer in time, or a wait ran out."""


class BadRequest(TrainforgeError):
    """The request is malformed."""

    status = 400


class Unauthorized(TrainforgeError):
    """No valid credentials: log in (`Client.login`, `trainforge login`) or set TRAINFORGE_API_TOKEN."""

    status = 401


class Forbidden(TrainforgeError):
    """The credentials are valid but may not do this."""

    status = 403


class NotFound(TrainforgeError):
    """No such resource (or not one the caller may see)."""

    status = 404


class Conflict(TrainforgeError):
    """The resource is not in a state that allows this (a name taken, a run still active, ...)."""

    status = 409


class PayloadTooLarge(TrainforgeError):
    """The upload is larger than the server takes."""

    status = 413


class UnsupportedMediaType(TrainforgeError):
    """The server does not take this kind of body."""

    status = 415


class Invalid(TrainforgeError):
    """The request's content is invalid; `errors` (and `fields`) name each bad field."""

    status = 422


class RateLimited(TrainforgeError):
    """Too many requests; `retry_after` says how many seconds to wait."""

    status = 429


class ServerError(TrainforgeError):
    """The server failed (5xx)."""

    status = 500


class Unavailable(ServerError):
    """A part of the platform is away for now (503); `retry_after` when the server says."""

    status = 503


class GatewayTimeout(ServerError):
    """The server gave up waiting (504), e.g. a synchronous prediction; the run it started goes on."""

    status = 504


class RunError(TrainforgeError):
    """A run the client waited on for a result (validate, export) failed or was canceled."""


_BY_STATUS: dict[int, type[TrainforgeError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    415: UnsupportedMediaType, 422: Invalid, 429: RateLimited, 503: Unavailable, 504: GatewayTimeout,
}


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def error_for(response: httpx.Response) -> TrainforgeError:
    """The exception for an error response (its problem details, or its text when it has none)."""
    status = response.status_code
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else TrainforgeError)
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return cls(status=status, detail=response.text[:300] or response.reason_phrase,
                   retry_after=retry_after(response))
    errors = [FieldError(field=str(e.get("field", "")), message=str(e.get("message", "")))
              for e in body.get("errors") or [] if isinstance(e, dict)]
    detail = body.get("detail") or body.get("title") or response.reason_phrase
    return cls(status=status, detail=str(detail), code=body.get("code"), errors=errors,
               retry_after=retry_after(response))
