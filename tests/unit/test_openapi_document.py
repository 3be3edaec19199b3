"""The OpenAPI document lists what each operation answers (gateway/apispec.py): its error statuses as problem
details, event streams as `text/event-stream`, downloads with their media types. The answers themselves are
checked against it by tests/integration/test_openapi_fuzz.py."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.app import create_app
from shared.settings import Settings

METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    settings = msgspec.structs.replace(Settings(), database_url="postgresql+asyncpg://nobody@localhost/none")
    return create_app(settings).openapi_schema.to_schema()  # building it connects to nothing


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in document["paths"].items()
            for method, op in item.items() if method in METHODS]


def test_every_error_response_is_problem_details(document: dict[str, Any]) -> None:
    assert "ProblemDetails" in document["components"]["schemas"]
    for method, path, op in _operations(document):
        for status, response in op["responses"].items():
            if int(status) < 400 or path == "/ready":
                continue
            content = response.get("content", {})
            assert list(content) == ["application/problem+json"], (method, path, status)
            assert content["application/problem+json"]["schema"]["$ref"].endswith("/ProblemDetails")


def test_the_statuses_follow_authentication_writes_and_path_parameters(document: dict[str, Any]) -> None:
    for method, path, op in _operations(document):
        statuses = {int(s) for s in op["responses"]}
        public = path in ("/health", "/ready") or path.endswith(("/auth/login", "/auth/refresh", "/auth/signup"))
        runner_credential = path.startswith("/api/v1/fleet/datasets/")  # a runner's credential: no roles, no 403
        if runner_credential:
            assert 401 in statuses, (method, path)
        elif not public:
            assert {401, 403} <= statuses, (method, path)
        if "{" in path:
            assert 404 in statuses, (method, path)
        if method != "GET":
            assert {409, 429} <= statuses, (method, path)
        if method in ("POST", "PUT", "PATCH"):
            assert {413, 415, 422} <= statuses, (method, path)
        if path != "/health":
            assert 503 in statuses, (method, path)
    signup = document["paths"]["/api/v1/auth/signup"]["post"]["responses"]
    assert "403" in signup and "401" not in signup  # closed sign-up; no credentials to get wrong
    assert "401" in document["paths"]["/api/v1/auth/login"]["post"]["responses"]


def test_event_streams_and_downloads_have_their_media_types(document: dict[str, Any]) -> None:
    def success(path: str) -> list[str]:
        return list(document["paths"][path]["get"]["responses"]["200"]["content"])

    for path in ("/api/v1/runs/{run_id}/events", "/api/v1/projects/{ref}/events", "/api/v1/system/resources/events"):
        assert success(path) == ["text/event-stream"], path
    assert success("/api/v1/datasets/{ref}/images/{split}/{index}/file") == ["image/*"]
    assert success("/api/v1/artifacts/{artifact_id}/download") == ["application/octet-stream"]
    assert success("/api/v1/models/{ref}/versions/{version}/download") == ["application/octet-stream"]
    ready = document["paths"]["/ready"]["get"]["responses"]
    assert list(ready["503"]["content"]) == ["application/json"]  # readiness names its checks, not a problem


def test_run_requests_carry_the_specs_defaults_descriptions_and_bounds(document: dict[str, Any]) -> None:
    """The dashboard builds its New-run form from these (dashboard/src/schemaform.js): a field added to a
    spec shows in the form with its type, bounds, default and docstring."""
    schemas = document["components"]["schemas"]
    train = schemas["CreateYoloTrainSpec"]["properties"]
    assert (train["epochs"]["default"], train["epochs"]["minimum"], train["epochs"]["maximum"]) == (100, 1, 10_000)
    assert train["lr0"]["exclusiveMinimum"] == 0 and train["seed"]["minimum"] == 0
    assert train["optimizer"]["default"] == "auto" and "AdamW" in train["optimizer"]["oneOf"][0]["enum"]
    assert train["save_period"]["description"].startswith("Keep a numbered checkpoint")
    assert train["pool"]["default"] == "cpu" and train["priority"]["default"] == 50
    export = schemas["CreateYoloExportSpec"]["properties"]
    assert export["simplify"]["default"] is True and export["opset"]["minimum"] == 7
    container = schemas["CreateContainerSpec"]["properties"]
    assert container["backend"]["enum"] == ["local", "docker"] and container["backend"]["default"] == "local"
    assert "container target" in container["target"]["description"]
    assert schemas["CreateContainerSpec"]["required"] == ["kind", "start_command"]
    # bounds of optional fields, which Litestar alone leaves out
    assert container["timeout_s"]["exclusiveMinimum"] == 0 and train["model_yaml"]["maxLength"] == 65_536
