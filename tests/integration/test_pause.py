"""Pause and unpause in place, on a real gateway, NATS, Postgres and runner: a local command's whole process
group is stopped (SIGSTOP) and continued (SIGCONT); a run paused too long is canceled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from shared.settings import Settings
from tests.auth_support import authorize
from tests.integration.rest_helpers import bus, new_project, problem, served_gateway, start_run
from tests.integration.runner_support import RunEvents, running_agent
from trainforge import cli


def ticking(pid_file: Path) -> dict[str, Any]:
    """A run whose shell writes its pid (its process group's id) and starts a child that ticks."""
    return {"kind": "container", "start_command": f"echo $$ > {pid_file}; (while true; do echo tick; sleep 0.1; "
                                                  "done) & wait"}


def member_states(pgid: int) -> list[str]:
    """The state (R, S, T, ...) of each process of group `pgid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            found.append(fields[0])
    return found


def states(pgid: int) -> set[str]:
    """The states its live processes are in. A zombie ("Z") is left out: a `sleep` that exits as the group is
    stopped stays a zombie until its stopped parent runs again and reaps it."""
    return set(member_states(pgid)) - {"Z"}


@asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A real gateway served on this loop, logged in: the runner (on this loop too) answers its requests while
    one is waiting (the test client would block this loop for the whole request)."""
    async with served_gateway(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield await authorize(client)


async def until(check: Any, timeout: float, what: str) -> Any:
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(0.1)
    return result


async def status_is(client: Any, run_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        run = (await client.get(f"/api/v1/runs/{run_id}")).json()
        return run if run["status"] == status else None

    return await until(check, timeout, f"run {status}")  # type: ignore[no-any-return]


async def test_pause_stops_the_process_group_in_place_and_unpause_continues_it(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    pid_file = tmp_path / "pid"
    async with running_agent(settings, runner_id="pausing"), api(settings) as client, bus(settings) as nc:
        project = await new_project(client, "pauses")
        run = (await start_run(client, "pauses", ticking(pid_file))).json()
        problem(await client.post(f"/api/v1/runs/{run['id']}/unpause"), 409)  # queued or running: not paused
        async with RunEvents(nc.jetstream(), settings, (project["id"], run["id"])) as events:
            await status_is(client, run["id"], "running")
            await until(lambda: asyncio.sleep(0, pid_file.exists() and pid_file.read_text().strip()), 20, "pid")
            pgid = int(pid_file.read_text())
            await until(lambda: asyncio.sleep(0, len(member_states(pgid)) >= 2), 10, "the shell and its child")

            paused = await client.post(f"/api/v1/runs/{run['id']}/pause")
            assert paused.status_code == 200, paused.text
            assert paused.json()["status"] == "paused"
            await until(lambda: asyncio.sleep(0, states(pgid) == {"T"}), 30, "every process stopped")
            event = await events.wait_for_type("run.paused", timeout=10)
            assert event.requested_by == "admin" and event.runner_id == "pausing"
            problem(await client.post(f"/api/v1/runs/{run['id']}/pause"), 409)  # paused already
            assert (await client.get(f"/api/v1/runs/{run['id']}")).json()["status"] == "paused"

            unpaused = await client.post(f"/api/v1/runs/{run['id']}/unpause")
            assert unpaused.status_code == 200, unpaused.text
            assert unpaused.json()["status"] == "running"
            await until(lambda: asyncio.sleep(0, "T" not in states(pgid) and states(pgid)), 30, "continued")
            event = await events.wait_for_type("run.unpaused", timeout=10)
            assert event.paused_s is not None and event.paused_s >= 0
            problem(await client.post(f"/api/v1/runs/{run['id']}/unpause"), 409)  # running: not paused

            # paused again, from the command line; then canceled: the stopped group still gets its SIGTERM
            monkeypatch.setenv("TRAINFORGE_API_TOKEN", client.headers["Authorization"].removeprefix("Bearer "))
            argv = ["runs", "--api", str(client.base_url), "pause", run["id"]]
            assert await asyncio.to_thread(cli.main, argv) == 0
            assert capsys.readouterr().out.strip() == f"run {run['id']}: paused"
            await until(lambda: asyncio.sleep(0, states(pgid) == {"T"}), 30, "stopped again")
            assert (await client.post(f"/api/v1/runs/{run['id']}/cancel")).status_code == 202
            canceled = await events.wait_for_type("run.canceled", timeout=30)
            assert canceled.reason == "requested"
            assert not states(pgid)  # every process ended (a zombie, left out, waits for its reaper)
        await status_is(client, run["id"], "canceled")
        problem(await client.post(f"/api/v1/runs/{run['id']}/pause"), 409)


async def test_a_run_paused_longer_than_pause_max_s_is_canceled_with_its_reason(settings: Settings,
                                                                               tmp_path: Path) -> None:
    settings = msgspec.structs.replace(settings, pause_max_s=1.0)
    pid_file = tmp_path / "pid"
    async with running_agent(settings), api(settings) as client, bus(settings) as nc:
        project = await new_project(client, "forgotten")
        run = (await start_run(client, "forgotten", ticking(pid_file))).json()
        async with RunEvents(nc.jetstream(), settings, (project["id"], run["id"])) as events:
            await status_is(client, run["id"], "running")
            assert (await client.post(f"/api/v1/runs/{run['id']}/pause")).status_code == 200
            await events.wait_for_type("run.paused", timeout=10)
            canceled = await events.wait_for_type("run.canceled", timeout=30)
        assert canceled.reason == "pause_timeout"
        await status_is(client, run["id"], "canceled")
