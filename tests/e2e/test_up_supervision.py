"""`trainforge up` supervises its embedded servers: a nats-server or a postmaster killed with -9 is started
again on the same data, port and socket, and the gateway and the runner reconnect by themselves (a run
submitted afterwards completes). One `up` for the whole story, to keep the suite fast."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.test_up import Up, _postmaster_pid, _still_alive, trainforge_up

pytestmark = pytest.mark.slow

RECOVER_WITHIN_S = 60.0
CONTAINER = {"kind": "container", "start_command": "echo supervised"}


async def _until(what: str, up: Up, probe: Callable[[], Any], within: float = RECOVER_WITHIN_S) -> Any:
    """Poll `probe` (sync or async) until it returns something truthy; fail with `up`'s output after `within`."""
    deadline = time.monotonic() + within
    while True:
        try:
            result = probe()
            if asyncio.iscoroutine(result):
                result = await result
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within:.0f}s\n{up.output()[-8000:]}")
        await asyncio.sleep(0.1)


async def _run_completes(up: Up, client: httpx.AsyncClient, project: str) -> dict[str, Any]:
    """Submit a container run (retried while the gateway still reconnects: 503) and wait for it to complete."""

    async def submit() -> dict[str, Any] | None:
        response = await client.post(f"/projects/{project}/runs", json=CONTAINER)
        assert response.status_code in (201, 503), response.text  # 503: a part is still reconnecting
        return response.json() if response.status_code == 201 else None

    run = await _until("a run is accepted", up, submit)

    async def completed() -> dict[str, Any] | None:
        response = await client.get(f"/runs/{run['id']}")
        body = response.json() if response.status_code == 200 else {}
        assert body.get("status") not in ("failed", "cancelled"), body
        return body if body.get("status") == "completed" else None

    return await _until(f"run {run['id']} completes", up, completed)


async def test_up_restarts_killed_nats_and_postgres_with_their_data_and_the_parts_reconnect(tmp_path: Any) -> None:
    state_dir = tmp_path / "state"
    async with trainforge_up(state_dir, "--runners", "1") as up:
        manifest = await up.wait_running()
        token = open(manifest["cli_token_file"]).read().strip()
        async with httpx.AsyncClient(base_url=up.url + "/api/v1", timeout=30.0,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            assert (await client.post("/projects", json={"name": "kept"})).status_code == 201
            first = await _run_completes(up, client, "kept")

            # NATS: killed, started again on the same port with the same users and JetStream store
            old_nats, nats_url = manifest["nats_pid"], manifest["nats_url"]
            os.kill(old_nats, signal.SIGKILL)
            restarted = await _until("nats-server restarted", up, lambda: (
                (m := up.manifest())["nats_pid"] not in (None, old_nats) and m["server_restarts"]["nats-server"] == 1
                and m))
            assert restarted["nats_url"] == nats_url
            assert "nats-server exited with SIGKILL; restarting in" in up.output()
            await _until("ready again after NATS", up, lambda: _ready(up))
            await _run_completes(up, client, "kept")  # the gateway and the runner reconnected

            # Postgres: the postmaster killed, started again on the same data folder and socket
            old_postmaster = _postmaster_pid(state_dir)
            assert old_postmaster and manifest["postgres_pid"] == old_postmaster
            os.kill(old_postmaster, signal.SIGKILL)
            await _until("postgres restarted", up, lambda: (
                (m := up.manifest())["postgres_pid"] not in (None, old_postmaster)
                and m["server_restarts"]["postgres"] == 1))
            assert f"postgres (postmaster pid {old_postmaster}) exited; restarting in" in up.output()
            await _until("ready again after Postgres", up, lambda: _ready(up))
            kept = await client.get(f"/runs/{first['id']}")
            assert kept.status_code == 200 and kept.json()["status"] == "completed"  # the data survived
            await _run_completes(up, client, "kept")

        final = up.manifest()
        took = await up.interrupt()
        assert took < 15.0, up.output()
        assert "did not stop in time" not in up.output()
        assert await _still_alive([final["nats_pid"], final["postgres_pid"]]) == []


async def _ready(up: Up) -> bool:
    async with httpx.AsyncClient(base_url=up.url, timeout=5.0) as client:
        return (await client.get("/ready")).status_code == 200
