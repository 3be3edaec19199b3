"""A small synchronous client of the Trainforge REST/SSE API, for the command line."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, SSEError, connect_sse

TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.canceled"})


class ApiError(Exception):
    """The API answered with an error (its problem-details text), or could not be reached."""


class ApiClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url + "/api/v1", headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plain calls ---------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach {self.base_url}: {exc} (is `trainforge up` running?)") from exc
        if response.status_code >= 400:
            raise ApiError(_problem_text(response))
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=json, **kwargs)

    def ensure_project(self, name: str) -> dict[str, Any]:
        try:
            return self.get(f"/projects/{name}")
        except ApiError:
            return self.post("/projects", {"name": name})

    def upload_dataset(self, name: str, archive: Path) -> dict[str, Any]:
        with archive.open("rb") as f:
            return self.request("POST", "/datasets", data={"name": name},
                                files={"file": (archive.name, f, "application/octet-stream")}, timeout=None)

    # -- live events ------------------------------------------------------------------------------------
    def follow(self, path: str, last_event_id: str | None = None, retries: int = 30) -> Iterator[ServerSentEvent]:
        """Events of an SSE stream, reconnecting with `Last-Event-ID` after a dropped connection (a gateway
        restart), until the server ends the stream (a run's stream ends after its terminal event)."""
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                with connect_sse(self._http, "GET", path, headers=headers,
                                 timeout=httpx.Timeout(30.0, read=None)) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        raise ApiError(_problem_text(source.response))
                    failures = 0
                    ended = False
                    for event in source.iter_sse():
                        if event.id:
                            last_event_id = event.id
                        yield event
                        ended = event.event in TERMINAL_EVENTS
                    if ended:
                        return
            except (httpx.HTTPError, SSEError) as exc:
                failures += 1
                if failures > retries:
                    raise ApiError(f"lost the event stream: {exc}") from exc
                time.sleep(min(0.5 * failures, 5.0))
                continue
            # The server closed the stream without a terminal event (shutting down): reconnect.
            time.sleep(0.5)


def _problem_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    detail = body.get("detail") or body.get("title") or response.reason_phrase
    errors = body.get("errors") or []
    extra = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors if isinstance(e, dict))
    return f"HTTP {response.status_code}: {detail}" + (f" ({extra})" if extra else "")
