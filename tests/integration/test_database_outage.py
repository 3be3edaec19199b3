"""A gateway whose Postgres is frozen (SIGSTOP) or stopped answers quickly and clearly: `/ready` 503 naming the
database within 2 s, requests that need the database 503 `unavailable` (with Retry-After) within
`database_timeout_s`, never 500 and never a hang; once the database is back, 200 again with no restart.

Each test runs its own Postgres (never the session's, which other tests share)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from httpx import Response

from shared.settings import Settings
from tests.integration.rest_helpers import api, frozen, new_project, postgres_of_own, problem, start_run
from trainforge.embedded import EmbeddedPostgres

pytestmark = pytest.mark.slow

TIMEOUT_S = 2.0
"""The gateway's `database_timeout_s` here."""
READY_WITHIN_S = 2.0
READY_AGAIN_S = 15.0


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    """A Postgres of this test's own, migrated: (server, URL)."""
    async with postgres_of_own(tmp_path / "pg") as (server, url):
        yield server, url


async def timed(request: Awaitable[Response]) -> tuple[Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


def _unavailable(response: Response, took: float) -> dict[str, Any]:
    body = problem(response, 503)
    assert body["code"] == "unavailable", body
    assert int(response.headers["Retry-After"]) > 0
    assert took < TIMEOUT_S + 1.0, f"answered after {took:.1f}s"
    return body


async def _not_ready(client: Any) -> dict[str, Any]:
    """`/ready` answers 503 within READY_WITHIN_S; its checks."""
    ready, took = await timed(client.get("/ready"))
    assert ready.status_code == 503 and took < READY_WITHIN_S, (ready.text, took)
    assert ready.json()["status"] == "not ready"
    return ready.json()["checks"]


async def _ready_again(client: Any) -> None:
    """`/ready` says 200 again by itself, within READY_AGAIN_S of the database being back (a background service
    that met the outage mid-way may take its next turn first); what it said meanwhile is in the message."""
    seen = []
    with anyio.move_on_after(READY_AGAIN_S):
        while (ready := await client.get("/ready")).status_code != 200:
            seen.append(ready.text)
            await anyio.sleep(0.2)
        return
    raise AssertionError(f"not ready {READY_AGAIN_S} s after the database came back: {seen[-3:]}")


async def test_frozen_postgres_is_a_quick_503_and_reads_work_again_once_it_continues(
    settings: Settings, own_postgres: tuple[EmbeddedPostgres, str]
) -> None:
    server, url = own_postgres
    settings = msgspec.structs.replace(settings, database_url=url, database_timeout_s=TIMEOUT_S)
    async with api(settings) as client:
        await new_project(client, "outage")
        run = (await start_run(client, "outage")).json()
        path = f"/api/v1/runs/{run['id']}"
        assert (await client.get(path)).status_code == 200

        with frozen(server.data_dir):
            checks = await _not_ready(client)
            assert (checks["database"], checks["nats"]) == ("unreachable: timeout", "ok"), checks
            _unavailable(*await timed(client.get(path)))
            _unavailable(*await timed(client.get(path)))  # a second request is as quick, not queued behind
            await _not_ready(client)

        response = await client.get(path)
        assert response.status_code == 200, response.text
        assert response.json()["id"] == run["id"]
        await _ready_again(client)


async def test_stopped_postgres_is_a_503_not_a_500_and_a_restarted_one_serves_again(
    settings: Settings, own_postgres: tuple[EmbeddedPostgres, str]
) -> None:
    server, url = own_postgres
    settings = msgspec.structs.replace(settings, database_url=url, database_timeout_s=TIMEOUT_S)
    async with api(settings) as client:
        await new_project(client, "outage")
        run = (await start_run(client, "outage")).json()
        path = f"/api/v1/runs/{run['id']}"
        assert (await client.get(path)).status_code == 200

        await anyio.to_thread.run_sync(server.stop)
        body = _unavailable(*await timed(client.get(path)))
        assert "database" in body["detail"]
        checks = await _not_ready(client)
        assert checks["database"].startswith("unreachable: ") and checks["nats"] == "ok"
        _unavailable(*await timed(client.post("/api/v1/projects", json={"name": "later"})))

        assert await anyio.to_thread.run_sync(server.start) == url  # same socket: the pool reconnects by itself
        response = await client.get(path)
        assert response.status_code == 200, response.text
        await _ready_again(client)
