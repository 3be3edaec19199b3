"""The Python client's parts that need no stack: its answer types mirror the gateway's views, problem details
become the matching exception, retries keep one Idempotency-Key (against a real local HTTP server that fails
the first tries), the defaults come from the CLI's settings, and `mypy --strict` passes on the tour."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import msgspec
import pytest

from gateway import schemas
from gateway.services import augment, curation, dataset_stats, datasets, models
from trainforge import Client, credentials
from trainforge.client import types
from trainforge.client.config import default_token, default_url
from trainforge.client.errors import (
    Conflict,
    ConnectionFailed,
    Invalid,
    NotFound,
    RateLimited,
    ServerError,
    Unavailable,
    error_for,
)
from trainforge.client.transport import Transport

REPO = Path(__file__).resolve().parents[2]

MIRRORS = [
    (types.Project, schemas.ProjectView), (types.Run, schemas.RunView), (types.RunDetail, schemas.RunDetail),
    (types.Checkpoint, schemas.CheckpointView), (types.Artifact, schemas.ArtifactView),
    (types.LogLine, schemas.LogLineView), (types.MetricsPoint, schemas.MetricsView), (types.QueueInfo, schemas.QueueInfo),
    (types.Dataset, datasets.DatasetSummary), (types.DatasetDetail, datasets.DatasetDetail),
    (types.ModelVersion, models.ModelVersionView), (types.Model, models.ModelView),
    (types.ModelDetail, models.ModelDetail),
    (types.Sample, curation.SampleView), (types.DatasetVersion, curation.VersionView),
]
MIRRORS += [
    (types.DatasetStats, dataset_stats.DatasetStatsView), (types.AugmentPreview, augment.AugmentPreviewView),
    (types.AugmentedImage, augment.AugmentedImage), (types.AugmentedBox, augment.AugmentedBox),
]


@pytest.mark.parametrize(("ours", "view"), MIRRORS, ids=[m[0].__name__ for m in MIRRORS])
def test_client_types_have_the_fields_of_the_gateway_views(ours: type, view: type) -> None:
    assert set(ours.__struct_fields__) == set(view.__struct_fields__)


def _response(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers=headers,
                          request=httpx.Request("GET", "http://x/api/v1/runs"))


def test_problem_details_become_the_matching_exception() -> None:
    invalid = error_for(_response(422, {"status": 422, "title": "Unprocessable Content", "code": "validation_error",
                                        "detail": "The request body is invalid",
                                        "errors": [{"field": "$.epochs", "message": "Expected `int` >= 1"}]}))
    assert isinstance(invalid, Invalid) and invalid.fields == {"epochs": "Expected `int` >= 1"}
    assert str(invalid) == "HTTP 422: The request body is invalid ($.epochs: Expected `int` >= 1)"
    limited = error_for(_response(429, {"status": 429, "detail": "slow down"}, {"Retry-After": "7"}))
    assert isinstance(limited, RateLimited) and limited.retry_after == 7.0
    assert isinstance(error_for(_response(404, {"detail": "no run"})), NotFound)
    assert isinstance(error_for(_response(409, {"detail": "taken"})), Conflict)
    away = error_for(_response(503, {"detail": "db away"}, {"Retry-After": "5"}))
    assert isinstance(away, Unavailable) and isinstance(away, ServerError) and away.retry_after == 5
    plain = error_for(_response(502, b"<html>bad gateway</html>"))
    assert isinstance(plain, ServerError) and plain.status == 502 and "bad gateway" in plain.detail


class FlakyGateway(BaseHTTPRequestHandler):
    """Answers 503 to the first `fail` requests, then 201; records each request's Idempotency-Key."""

    fail = 2
    keys: list[str | None] = []

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        FlakyGateway.keys.append(self.headers.get("Idempotency-Key"))
        if len(FlakyGateway.keys) <= FlakyGateway.fail:
            self._answer(503, {"status": 503, "detail": "away for now"}, {"Retry-After": "0"})
        else:
            self._answer(201, {"id": "r1"})

    def _answer(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[str]:
    FlakyGateway.keys = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Created(msgspec.Struct):
    id: str


def test_a_post_with_an_idempotency_key_is_retried_with_the_same_key(flaky: str) -> None:
    with Transport(flaky, retries=3) as http:
        assert http.post_once("/projects/p/runs", Created, {"kind": "yolo.train"}).id == "r1"
    assert len(FlakyGateway.keys) == 3 and len(set(FlakyGateway.keys)) == 1 and FlakyGateway.keys[0]


def test_a_post_without_an_idempotency_key_is_sent_once(flaky: str) -> None:
    with Transport(flaky, retries=3) as http, pytest.raises(Unavailable):
        http.send("POST", "/auth/login", json={})
    assert FlakyGateway.keys == [None]


def test_an_unreachable_gateway_is_a_connection_error() -> None:
    with Transport("http://127.0.0.1:9", retries=1) as http, pytest.raises(ConnectionFailed) as caught:
        http.send("GET", "/projects")
    assert "trainforge up" in str(caught.value)


def test_the_defaults_are_the_command_lines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("TRAINFORGE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("TRAINFORGE_API_TOKEN", raising=False)
    monkeypatch.setenv("TRAINFORGE_API_URL", "http://gw.example:9000")
    assert default_url() == "http://gw.example:9000"
    assert default_token("http://gw.example:9000") is None
    credentials.save("http://gw.example:9000", "tf_saved", "id1", "alice")
    assert default_token("http://gw.example:9000") == "tf_saved"
    monkeypatch.setenv("TRAINFORGE_API_TOKEN", "tf_env")
    assert default_token("http://gw.example:9000") == "tf_env"
    with Client() as client:
        assert client.url == "http://gw.example:9000"
        assert client.http._http.headers["Authorization"] == "Bearer tf_env"


@pytest.mark.slow
def test_mypy_strict_passes_on_the_tour_of_every_verb(tmp_path: Path) -> None:
    """As a user's program sees it: every module the client imports is checked too (shared's contracts and
    settings, trainforge.credentials)."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "examples/client_tour.py", "trainforge/client", "trainforge/__init__.py", "trainforge/api_client.py"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
