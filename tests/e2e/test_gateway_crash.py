"""A gateway killed with -9 in the middle of a 100,000-line burst loses nothing and reorders nothing: at
completion every line is there, in order, over SSE (the client that saw the kill resumes with Last-Event-ID
and stops at the terminal event) and over `/logs`.

Real processes: one `trainforge gateway` (killed and started again) and one runner, on the test's NATS and
Postgres. The kill points are random (seeded: TRAINFORGE_CRASH_SEED; trials: TRAINFORGE_CRASH_TRIALS)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from httpx_sse import connect_sse

from shared.settings import Settings
from tests.auth_support import ADMIN_PASSWORD
from tests.e2e.stackctl import REPO, free_port
from tests.integration.runner_support import settings_env, start_runner_process

pytestmark = pytest.mark.slow

LINES = 100_000
TRIALS = int(os.environ.get("TRAINFORGE_CRASH_TRIALS", "10"))
SEED = int(os.environ.get("TRAINFORGE_CRASH_SEED", "44"))  # kill points spread over the whole burst
BUDGET_S = 900.0
"""The whole test, all trials: it fails rather than run on."""
TRIAL_TIMEOUT_S = 120.0


class GatewayProcess:
    """One `trainforge gateway` process on a fixed port; `kill()` is kill -9."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**settings_env(settings), "TRAINFORGE_ACCESS_TOKEN_TTL_S": "3600",
                    "TRAINFORGE_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 90.0) -> float:
        """Start it and wait until it is ready; returns how long that took."""
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trainforge.cli", "gateway", "--port", str(self.port)],
            env=self.env, cwd=REPO, stdout=open(self.log_path, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        self.starts += 1
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"the gateway was not ready within {timeout:.0f}s:\n{self.log()}")
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def _token(url: str) -> str:
    with httpx.Client(base_url=url + "/api/v1", timeout=30) as client:
        login = client.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        created = client.post("/tokens", json={"name": "crash-test"}, headers=headers)
        assert created.status_code == 201, created.text
        return created.json()["token"]


def follow_with_a_kill(gateway: GatewayProcess, headers: dict[str, str], run_id: str,
                       kill_after_lines: int) -> tuple[list[str], list[str], float]:
    """Follow the run's SSE stream; once it has shown `kill_after_lines` lines, kill -9 the gateway, start
    it again and resume with Last-Event-ID until the stream ends. Returns (lines, event types, restart s)."""
    lines: list[str] = []
    types: list[str] = []
    last_id: str | None = None
    restart_s = 0.0
    killed = False
    deadline = time.monotonic() + TRIAL_TIMEOUT_S
    while True:
        assert time.monotonic() < deadline, f"run {run_id}: its stream did not end in {TRIAL_TIMEOUT_S:.0f}s"
        request_headers = {**headers, **({"Last-Event-ID": last_id} if last_id else {})}
        try:
            timeout = httpx.Timeout(60, connect=5)
            with httpx.Client(base_url=gateway.url + "/api/v1", timeout=timeout) as client:
                # keep-alives keep a stream open for ever: at the deadline the watchdog ends it (kill -9)
                assert gateway.process is not None
                watchdog = threading.Timer(max(deadline - time.monotonic(), 0.1), gateway.process.kill)
                watchdog.daemon = True
                watchdog.start()
                with connect_sse(client, "GET", f"/runs/{run_id}/events", headers=request_headers) as source:
                    assert source.response.status_code == 200, source.response.text
                    for event in source.iter_sse():
                        last_id = event.id
                        types.append(event.event)
                        if event.event == "run.log":
                            lines.extend(line["text"] for line in json.loads(event.data)["lines"]
                                         if line["stream"] == "stdout")
                        if not killed and len(lines) >= kill_after_lines:
                            killed = True
                            gateway.kill()
                            restart_s = gateway.start()
                            break
                    else:
                        return lines, types, restart_s  # the server ended the stream
        except httpx.HTTPError:
            if not killed and time.monotonic() < deadline:
                raise
        finally:
            watchdog.cancel()


async def _diagnose(database_url: str, run_id: str) -> str:
    """What Postgres holds of the run, for a failure message."""
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        status = await conn.fetchval("SELECT status FROM runs WHERE id = $1", run_id)
        rows = await conn.fetch("SELECT attempt, seq, type, position FROM events WHERE run_id = $1 "
                                "ORDER BY position", run_id)
    finally:
        await conn.close()
    seqs = [(r["attempt"], r["seq"]) for r in rows]
    disorder = next((i for i in range(1, len(seqs)) if seqs[i] < seqs[i - 1]), None)
    runner = [s for a, s in seqs if a == 1]
    missing = sorted(set(range(1, max(runner, default=0) + 1)) - set(runner))
    return (f"run {run_id}: status {status}, {len(rows)} events, last {rows[-1]['type'] if rows else None}; "
            f"first out of seq order at index {disorder}; missing runner seqs {missing[:20]}")


def logs_over_rest(gateway: GatewayProcess, headers: dict[str, str], run_id: str) -> list[str]:
    lines: list[str] = []
    after = 0
    with httpx.Client(base_url=gateway.url + "/api/v1", timeout=60, headers=headers) as client:
        while True:
            page = client.get(f"/runs/{run_id}/logs", params={"after": after, "limit": 5000})
            assert page.status_code == 200, page.text
            body: dict[str, Any] = page.json()
            if not body["items"]:
                return lines
            lines.extend(item["text"] for item in body["items"] if item["stream"] == "stdout")
            after = body["next_after"]


def test_gateway_killed_mid_burst_loses_and_reorders_no_line(settings: Settings, tmp_path: Path) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    gateway = GatewayProcess(settings, tmp_path / "gateway.log")
    runner = start_runner_process(settings, "crash-runner", tmp_path / "runner.log")
    try:
        gateway.start()
        headers = {"Authorization": f"Bearer {_token(gateway.url)}"}
        with httpx.Client(base_url=gateway.url + "/api/v1", timeout=30, headers=headers) as api:
            assert api.post("/projects", json={"name": "crash", "description": ""}).status_code == 201
        expected = [str(i) for i in range(1, LINES + 1)]
        for trial in range(TRIALS):
            assert time.monotonic() - began < BUDGET_S, f"{trial} trials took over {BUDGET_S:.0f}s"
            kill_after = rng.randrange(1, LINES)
            started = time.monotonic()
            with httpx.Client(base_url=gateway.url + "/api/v1", timeout=30, headers=headers) as api:
                created = api.post("/projects/crash/runs", json={
                    "kind": "container", "backend": "local", "start_command": f"seq 1 {LINES}"})
                assert created.status_code == 201, created.text
            run_id = created.json()["id"]
            try:
                lines, types, restart_s = follow_with_a_kill(gateway, headers, run_id, kill_after)
            except AssertionError as exc:
                diagnosis = anyio.run(_diagnose, settings.database_url, run_id)
                raise AssertionError(f"trial {trial} (kill after {kill_after}): {exc}\n{diagnosis}\n"
                                     f"{gateway.log()}") from None
            assert types[-1] == "run.completed", types[-5:]
            wrong = next((i for i, (a, b) in enumerate(zip(lines, expected, strict=False)) if a != b), None)
            assert len(lines) == LINES and lines == expected, (
                f"trial {trial} (kill after {kill_after} lines): SSE gave {len(lines)} lines, "
                f"first wrong at {wrong}")
            with httpx.Client(base_url=gateway.url + "/api/v1", timeout=30, headers=headers) as api:
                assert api.get(f"/runs/{run_id}").json()["status"] == "completed"
            assert logs_over_rest(gateway, headers, run_id) == expected, f"trial {trial}: /logs differ"
            print(f"trial {trial}: killed after {kill_after} lines, gateway ready again in {restart_s:.1f}s, "
                  f"run done in {time.monotonic() - started:.1f}s")
        print(f"{TRIALS} trials in {time.monotonic() - began:.0f}s (seed {SEED})")
    finally:
        gateway.stop()
        runner.terminate()
        try:
            runner.wait(15)
        except subprocess.TimeoutExpired:
            runner.kill()
            runner.wait()
