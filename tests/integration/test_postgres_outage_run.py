"""One live attempt through a Postgres outage (docs/events.md, "One live attempt"): the gateway's database
is stopped, or frozen with SIGSTOP, for twice the job ack wait while a container run runs on a real runner
under a real gateway. The command runs once (no step twice), the run completes, and once the database is back every
event of the run is projected, once. The NATS twin of this test is in test_one_live_attempt.py.

Each test runs its own Postgres (never the session's, which other tests share)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec
import nats
import pytest
from sqlalchemy import select

from gateway.db.models import EventRecord
from shared.settings import Settings
from tests.integration.rest_helpers import api, database, frozen, new_project, postgres_of_own, start_run
from tests.integration.runner_support import TERMINAL, RunEvents, reaped_processes, start_runner_process
from trainforge.embedded import EmbeddedPostgres

pytestmark = pytest.mark.slow

STEPS = 20
STEP_S = 0.3


@contextlib.asynccontextmanager
async def outage(server: EmbeddedPostgres, kind: Literal["stopped", "frozen"]) -> AsyncIterator[None]:
    """Postgres unreachable while the block runs: stopped (started again on the same socket) or frozen."""
    if kind == "frozen":
        with frozen(server.data_dir):
            yield
        return
    await anyio.to_thread.run_sync(server.stop)
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(server.start)


async def _outage_of(server: EmbeddedPostgres, kind: Literal["stopped", "frozen"], seconds: float) -> None:
    """The outage is the thing under test: a fixed length, not a wait."""
    async with outage(server, kind):
        await asyncio.sleep(seconds)


async def _stored_events(settings: Settings, run_id: str) -> list[tuple[int, int]]:
    async with database(settings) as sessions, sessions() as session:
        rows = await session.execute(
            select(EventRecord.attempt, EventRecord.seq).where(EventRecord.run_id == run_id)
        )
        return [(attempt, seq) for attempt, seq in rows]


async def _until_stored(settings: Settings, run_id: str, expected: set[tuple[int, int]],
                        timeout: float) -> list[tuple[int, int]]:
    """The run's stored events once all `expected` are there (the projector catches up by itself)."""
    async with asyncio.timeout(timeout):
        while not expected <= set(stored := await _stored_events(settings, run_id)):
            await asyncio.sleep(0.2)
    return stored


async def _run_view(client: Any, run_id: str, statuses: set[str], timeout: float) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            response = await client.get(f"/api/v1/runs/{run_id}")
            if response.status_code == 200 and response.json()["status"] in statuses:
                return response.json()
            await asyncio.sleep(0.2)


@pytest.mark.parametrize("kind", ["stopped", "frozen"])
async def test_postgres_down_for_twice_the_ack_wait_during_a_container_run_runs_it_once_and_projects_it_all(
    settings: Settings, tmp_path: Path, kind: Literal["stopped", "frozen"]
) -> None:
    steps_file = tmp_path / "steps.txt"
    command = (f'for i in $(seq 1 {STEPS}); do echo "step $i attempt $TRAINFORGE_ATTEMPT" >> {steps_file}; '
               f'echo "step $i"; sleep {STEP_S}; done')
    async with postgres_of_own(tmp_path / "pg") as (server, url):
        settings = msgspec.structs.replace(settings, database_url=url, database_timeout_s=2.0)
        nc = await nats.connect(settings.nats_url)
        try:
            js = nc.jetstream()
            with reaped_processes() as runners:
                for name in ("r1", "r2"):
                    runners.append(start_runner_process(settings, f"pg-{name}", tmp_path / f"{name}.log"))
                async with api(settings) as client:
                    await new_project(client, "outage")
                    body = {"kind": "container", "start_command": command}
                    response = await start_run(client, "outage", body)
                    assert response.status_code == 201, response.text
                    run = response.json()
                    ids = (run["project_id"], run["id"])
                    async with RunEvents(js, settings, ids) as events:
                        await events.wait_for(lambda e: e.type == "run.log" and len(events.log_lines()) >= 3,
                                              timeout=60)
                    before = len(steps_file.read_text().splitlines())
                    await _outage_of(server, kind, 2 * settings.job_ack_wait_s)
                    assert len(steps_file.read_text().splitlines()) > before  # the run went on meanwhile
                    async with RunEvents(js, settings, ids) as events:
                        done = await events.wait_for_type(*TERMINAL, timeout=STEPS * STEP_S + 60)
                    final = await _run_view(client, run["id"], {"completed", "failed", "canceled"}, 60)
                    async with RunEvents(js, settings, ids) as events:
                        published = await events.read_all()
                    expected = {(e.attempt, e.seq) for e in published}
                    stored = await _until_stored(settings, run["id"], expected, timeout=60)
                    logs = (await client.get(f"/api/v1/runs/{run['id']}/logs", params={"limit": 1000})).json()
        finally:
            await nc.close()
    lines = steps_file.read_text().splitlines()
    assert lines == [f"step {i} attempt 1" for i in range(1, STEPS + 1)], lines
    assert (done.type, done.attempt) == ("run.completed", 1), done
    assert final["status"] == "completed", final
    assert [e.attempt for e in published if e.type in ("run.claimed", "run.started")] == [1, 1]
    assert [e.type for e in published if e.type in TERMINAL] == ["run.completed"]
    assert sorted(stored) == sorted(expected)  # every published event stored, once (and nothing else)
    stdout = [line["text"] for line in logs["items"] if line["stream"] == "stdout"]
    assert stdout == [f"step {i}" for i in range(1, STEPS + 1)], stdout
