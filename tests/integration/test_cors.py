"""CORS (`TRAINFORGE_CORS_ORIGINS`): pages of the allowed origins may call the API and the event streams with
a bearer token and `Last-Event-ID`; other origins get no CORS headers; by default nobody does. The real
browser case (a page on another origin following a stream) is tests/e2e/test_browser_sse.py."""

from __future__ import annotations

import msgspec
import pytest

from shared.settings import Settings
from tests.integration.rest_helpers import api, new_project

APP = "http://app.example.test:3000"
OTHER = "http://evil.example.test"


def preflight(origin: str) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, last-event-id"}


@pytest.fixture
def cors_settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, cors_origins=[APP, "https://other.example.test"])


async def test_a_preflight_from_an_allowed_origin_may_send_the_token_and_last_event_id(
    cors_settings: Settings,
) -> None:
    async with api(cors_settings) as client:
        project = await new_project(client, "cors")
        for path in (f"/api/v1/projects/{project['id']}/events", "/api/v1/runs/" + "0" * 32 + "/events",
                     "/api/v1/projects"):
            response = await client.options(path, headers=preflight(APP))
            assert response.status_code in (200, 204), (path, response.text)
            assert response.headers["access-control-allow-origin"] == APP
            allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
            assert {"authorization", "last-event-id"} <= allowed, allowed
            assert "GET" in response.headers["access-control-allow-methods"] or \
                response.headers["access-control-allow-methods"] == "*"
        listed = await client.get("/api/v1/projects", headers={"Origin": APP})
        assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == APP
        assert "access-control-allow-credentials" not in listed.headers  # bearer tokens, never cookies


async def test_another_origin_gets_no_cors_headers(cors_settings: Settings) -> None:
    async with api(cors_settings) as client:
        project = await new_project(client, "cors")
        response = await client.options(f"/api/v1/projects/{project['id']}/events", headers=preflight(OTHER))
        assert "access-control-allow-origin" not in response.headers
        assert response.status_code >= 400
        listed = await client.get("/api/v1/projects", headers={"Origin": OTHER})
        assert "access-control-allow-origin" not in listed.headers


async def test_by_default_no_origin_gets_cors_headers(settings: Settings) -> None:
    assert settings.cors_origins == []
    async with api(settings) as client:
        response = await client.options("/api/v1/projects", headers=preflight(APP))
        assert "access-control-allow-origin" not in response.headers
        listed = await client.get("/api/v1/projects", headers={"Origin": APP})
        assert "access-control-allow-origin" not in listed.headers
