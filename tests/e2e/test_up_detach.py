"""`trainforge up --detach`, `status`, `logs` and `down` end to end, the way a user runs them from a shell: a
real stack (embedded NATS and Postgres, the gateway, a runner) started in the background, looked at, and
stopped with nothing left behind (checked by pid and by session: every part runs in a session of its own)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.stackctl import REPO, free_port, pid_alive

pytestmark = pytest.mark.slow

WAIT_S = 180.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINFORGE_")}
    env.update({"PYTHONPATH": str(REPO), "TRAINFORGE_RUNNER_HEARTBEAT_S": "1", "TRAINFORGE_SHUTDOWN_GRACE_S": "2",
                "TRAINFORGE_CANCEL_GRACE_S": "2", **extra})
    return env


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = WAIT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trainforge.cli", *args], env=env or _env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _sessions_of(pids: list[int]) -> set[int]:
    sessions = set()
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        sessions.add(int(fields[3]))  # state ppid pgrp session ...
    return sessions


def _members(sessions: set[int]) -> list[str]:
    """Live processes of these sessions, as `pid command`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) in sessions:
            found.append(f"{entry.name} {cmd[:120]}")
    return found


def _wait_for(predicate: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if value := predicate():
            return value
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.3)


def test_up_detach_status_logs_and_down_leave_nothing_behind(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port()
    flags = ("--state-dir", str(state))
    started = cli("up", "--detach", *flags, "--port", str(port), "--runners", "1")
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"API        http://127.0.0.1:{port}/api/v1" in started.stdout
    assert f"trainforge down --state-dir {state}" in started.stdout
    assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200  # it outlived its starter
    try:
        _check_running_stack(state, port, flags)
    finally:
        manifest = json.loads((state / "stack.json").read_text())
        pids = [manifest["pid"], *(c["pid"] for c in manifest["children"] if c["pid"]), manifest["nats_pid"],
                manifest["postgres_pid"]]
        sessions = _sessions_of(pids)
        follower = subprocess.Popen([sys.executable, "-m", "trainforge.cli", "logs", "-f", "gateway", *flags],
                                    env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stopped = cli("down", *flags)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped" in stopped.stdout
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert len(sessions) >= 3  # up (with nats-server), gateway, runner: sessions of their own
    assert _members(sessions) == []
    log = (state / "logs" / "up.log").read_text()
    assert "did not stop in time" not in log and "embedded Postgres stopped" in log
    # `logs -f` ends by itself once the stack is gone, having shown the gateway's lines without their prefix
    followed, _ = follower.communicate(timeout=60)
    assert follower.returncode == 0 and followed.strip(), followed
    assert "gateway     |" not in followed

    after = cli("status", *flags)
    assert after.returncode == 3 and "no stack runs" in after.stdout and "stopped" in after.stdout
    assert cli("down", *flags).returncode == 0  # nothing to stop is no error


def _check_running_stack(state: Path, port: int, flags: tuple[str, ...]) -> None:
    again = cli("up", "--detach", *flags, "--port", str(free_port()))
    assert again.returncode == 1 and "already runs" in again.stderr

    # a job on the runner, so that `status` has a current run to show
    token = (state / "secrets" / "cli-token").read_text().strip()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"Authorization": f"Bearer {token}"},
                      timeout=30) as api:
        project = api.post("/projects", json={"name": "detach"}).json()
        run = api.post(f"/projects/{project['id']}/runs",
                       json={"kind": "container", "backend": "local", "start_command": "sleep 600"}).json()
        assert "id" in run, run

    def busy() -> dict[str, Any] | None:
        report = json.loads(cli("status", "--json", *flags).stdout)
        return next((r for r in report["runners"] if r["current_run"] == run["id"]), None)

    runner = _wait_for(busy, "runner busy with the run")
    shown = cli("status", *flags)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    out = shown.stdout
    assert f"in {state}" in out and f"http://127.0.0.1:{port}/api/v1" in out
    for part in ("nats-server", "postgres", "gateway", "runner-cpu0"):
        assert part in out, out
    assert runner["id"] in out and run["id"] in out
    assert "HTTP Request" not in shown.stdout + shown.stderr  # no library chatter on the CLI ...
    debug = cli("--log-level", "DEBUG", "status", *flags)
    assert "HTTP Request" in debug.stderr  # ... unless asked for

    listed = cli("runs", "list", "--project", "detach", env=_env(TRAINFORGE_API_URL=f"http://127.0.0.1:{port}",
                                                                  TRAINFORGE_STATE_DIR=str(state)))
    assert listed.returncode == 0 and run["id"] in listed.stdout, listed.stdout + listed.stderr
    assert "HTTP Request" not in listed.stderr

    every = cli("logs", *flags)
    assert every.returncode == 0 and "Trainforge is up" in every.stdout and "gateway     |" in every.stdout
    gateway = cli("logs", "--tail", "3", "gateway", *flags)
    assert gateway.returncode == 0 and len(gateway.stdout.splitlines()) == 3
    assert "gateway     |" not in gateway.stdout
    assert cli("logs", "nosuchpart", *flags).returncode == 2


def test_up_detach_reports_a_stack_that_cannot_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = cli("up", "--detach", "--state-dir", str(tmp_path / "state"), "--port", str(port))
    assert started.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in started.stderr  # the log's last lines, shown to the user
    assert cli("status", "--state-dir", str(tmp_path / "state")).returncode == 3


def test_down_stops_a_stack_started_in_the_foreground(tmp_path: Path) -> None:
    """`down` is SIGTERM to `up`, which stops like Ctrl-C: the foreground `up` exits 0."""
    state = tmp_path / "state"
    up = subprocess.Popen([sys.executable, "-m", "trainforge.cli", "up", "--state-dir", str(state), "--port",
                           str(free_port()), "--runners", "0"], env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(lambda: cli("status", "--state-dir", str(state)).returncode == 0
                  and json.loads((state / "stack.json").read_text())["status"] == "running", "running stack",
                  timeout=WAIT_S)
        logs = cli("logs", "--state-dir", str(state))
        assert logs.returncode == 1 and "terminal" in logs.stderr
        assert cli("down", "--state-dir", str(state)).returncode == 0
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
