"""The HTTP core of the Python client and of the command line: one `httpx.Client` with the API's base URL and
credentials, problem details turned into exceptions, retries of the calls that are safe to repeat, typed
decoding, paging, and Server-Sent Event streams that reconnect with `Last-Event-ID`.

Retried (connection errors, timeouts, 429, 502, 503, 504; `Retry-After` respected, backoff otherwise): GET,
HEAD, PUT, DELETE, and a POST that carries an `Idempotency-Key` (the server answers a repeat with the first
answer, so nothing is created twice). Any request whose connection could not even be opened is retried too:
nothing reached the server. Uploads (file bodies) are sent once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
from httpx_sse import ServerSentEvent, SSEError, connect_sse

from trainforge.client.errors import (
    Conflict,
    ConnectionFailed,
    Timeout,
    TrainforgeError,
    error_for,
    retry_after,
)

T = TypeVar("T")
TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.canceled"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_BACKOFF_S = 30.0


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


class SessionAuth(httpx.Auth):
    """A login session's access token (JWT), refreshed with its refresh token when the server answers 401.
    (Bodies are read only for the refresh: an event stream must not be read to its end here.)"""

    def __init__(self, access_token: str, refresh_token: str, refresh_url: str) -> None:
        self.access_token = access_token
        self.refresh_token = refresh_token
        self.refresh_url = refresh_url

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.access_token}"
        response = yield request
        if response.status_code != 401 or request.url.path.endswith("/auth/refresh"):
            return
        refreshed = yield httpx.Request("POST", self.refresh_url, json={"refresh_token": self.refresh_token})
        refreshed.read()
        if refreshed.status_code != 200:
            return
        pair = refreshed.json()
        self.access_token, self.refresh_token = pair["access_token"], pair["refresh_token"]
        request.headers["Authorization"] = f"Bearer {self.access_token}"
        yield request


class Transport:
    """Calls to one gateway's `/api/v1`. `token`: an API token or access token, sent as a bearer token."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0, retries: int = 4,
                 auth: httpx.Auth | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token and auth is None else {}
        headers["User-Agent"] = "trainforge-python-client"
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self._http = httpx.Client(base_url=self.base_url + "/api/v1", headers=headers, timeout=timeout, auth=auth)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one call ------------------------------------------------------------------------------------
    def send(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
             data: dict[str, Any] | None = None, files: Any = None, headers: dict[str, str] | None = None,
             timeout: float | None | httpx.Timeout = -1.0, retry: bool | None = None) -> httpx.Response:
        """The response of a call (2xx), after the retries it may have; the mapped exception otherwise.
        `retry`: None decides by the method and an Idempotency-Key header; False sends once."""
        method = method.upper()
        headers = dict(headers or {})
        if retry is None:
            retry = files is None and (method in SAFE_METHODS or "Idempotency-Key" in headers)
        if params:
            params = {k: v for k, v in params.items() if v is not None}
        extra: dict[str, Any] = {} if timeout == -1.0 else {"timeout": timeout}
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, params=params, json=json, data=data, files=files,
                                              headers=headers, **extra)
            except httpx.ConnectError as exc:
                if files is None and attempt < self.retries:
                    attempt += 1
                    time.sleep(_backoff(attempt, None))
                    continue
                raise ConnectionFailed(f"cannot reach {self.base_url}: {exc} (is `trainforge up` running?)"
                                       ) from exc
            except httpx.TimeoutException as exc:
                if retry and attempt < self.retries:
                    attempt += 1
                    time.sleep(_backoff(attempt, None))
                    continue
                raise Timeout(f"{method} {path}: no answer from {self.base_url} in time ({exc})") from exc
            except httpx.TransportError as exc:
                if retry and attempt < self.retries:
                    attempt += 1
                    time.sleep(_backoff(attempt, None))
                    continue
                raise ConnectionFailed(f"{method} {path}: the connection to {self.base_url} failed: {exc}"
                                       ) from exc
            if response.status_code < 400:
                return response
            error = error_for(response)
            in_flight = isinstance(error, Conflict) and attempt > 0 and "in progress" in error.detail
            if retry and attempt < self.retries and (response.status_code in RETRY_STATUSES or in_flight):
                attempt += 1
                time.sleep(_backoff(attempt, retry_after(response)))
                continue
            raise error

    def call(self, method: str, path: str, type: type[T], **kwargs: Any) -> T:
        """A call whose JSON answer is decoded into `type`."""
        return msgspec.json.decode(self.send(method, path, **kwargs).content, type=type)

    def post_once(self, path: str, type: type[T], json: Any = None, key: str | None = None) -> T:
        """A POST with an Idempotency-Key (generated unless given), so that its retries create nothing twice."""
        headers = {"Idempotency-Key": key or new_idempotency_key()}
        return self.call("POST", path, type, json=json, headers=headers)

    def pages(self, path: str, type: type[T], params: dict[str, Any] | None = None,
              page_size: int = 100) -> Iterator[T]:
        """Every item of a paged listing (`items`, `total`, `limit`, `offset`), fetched a page at a time."""
        page_type = msgspec.defstruct("Page", [("items", list[type]), ("total", int)])  # type: ignore[valid-type]
        offset = 0
        while True:
            page: Any = self.call("GET", path, page_type, params={**(params or {}), "limit": page_size,
                                                                  "offset": offset})
            yield from page.items
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    def cursor(self, path: str, type: type[T], params: dict[str, Any] | None = None,
               page_size: int = 500) -> Iterator[T]:
        """Every item of a listing read on with `after` (`items`, `next_after`), until nothing new comes."""
        page_type = msgspec.defstruct("CursorPage", [("items", list[type]), ("next_after", int)])  # type: ignore[valid-type]
        after = 0
        while True:
            page: Any = self.call("GET", path, page_type, params={**(params or {}), "limit": page_size,
                                                                  "after": after})
            yield from page.items
            if not page.items or page.next_after == after:
                return
            after = page.next_after

    def download(self, path: str, dest: Path) -> Path:
        """Stream a file to `dest` (written to a temporary name, then renamed)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".part")
        try:
            with self._http.stream("GET", path, timeout=httpx.Timeout(self.timeout, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_for(response)
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
        except httpx.HTTPError as exc:
            partial.unlink(missing_ok=True)
            raise ConnectionFailed(f"download of {path} from {self.base_url} failed: {exc}") from exc
        partial.replace(dest)
        return dest

    # -- the command line's calls (JSON in, JSON out) ------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.send(method, path, **kwargs)
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=json, **kwargs)

    def ensure_project(self, name: str) -> dict[str, Any]:
        try:
            return self.get(f"/projects/{name}")  # type: ignore[no-any-return]
        except TrainforgeError:
            return self.post("/projects", {"name": name}, headers={"Idempotency-Key": new_idempotency_key()})  # type: ignore[no-any-return]

    def upload_dataset(self, name: str, archive: Path) -> dict[str, Any]:
        with archive.open("rb") as f:
            return self.request("POST", "/datasets", data={"name": name},  # type: ignore[no-any-return]
                                files={"file": (archive.name, f, "application/octet-stream")}, timeout=None)

    # -- live events ---------------------------------------------------------------------------------
    def follow(self, path: str, last_event_id: str | None = None, retries: int = 30) -> Iterator[ServerSentEvent]:
        """Events of an SSE stream, reconnecting with `Last-Event-ID` after a dropped connection (a gateway
        restart), until the server ends the stream (a run's stream ends after its terminal event; a 204 says
        nothing follows the given id of a finished run)."""
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                with connect_sse(self._http, "GET", path, headers=headers,
                                 timeout=httpx.Timeout(self.timeout, read=None)) as source:
                    status = source.response.status_code
                    if status == 204:
                        return
                    if status >= 400:
                        source.response.read()
                        error = error_for(source.response)
                        if status in RETRY_STATUSES and failures < retries:
                            failures += 1
                            time.sleep(_backoff(failures, error.retry_after))
                            continue
                        raise error
                    failures = 0
                    ended = False
                    for event in source.iter_sse():
                        if event.id:
                            last_event_id = event.id
                        if not event.event and not event.data:
                            continue
                        yield event
                        ended = event.event in TERMINAL_EVENTS
                    if ended:
                        return
            except (httpx.HTTPError, SSEError) as exc:
                failures += 1
                if failures > retries:
                    raise ConnectionFailed(f"lost the event stream {path}: {exc}") from exc
                time.sleep(min(0.5 * failures, 5.0))
                continue
            # The server closed the stream without a terminal event (shutting down): reconnect.
            time.sleep(0.5)


def _backoff(attempt: int, server_says: float | None) -> float:
    if server_says is not None:
        return min(server_says, MAX_BACKOFF_S)
    return float(min(0.25 * 2 ** (attempt - 1), MAX_BACKOFF_S))
