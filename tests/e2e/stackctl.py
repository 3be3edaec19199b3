"""Drive a real `trainforge up` in a subprocess: start it, talk to its API and SSE streams, poke its children."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

REPO = Path(__file__).resolve().parents[2]


def ok(response: httpx.Response, status: int = 200) -> Any:
    """The answer's JSON (None when empty), after checking its status; the body is the assertion's message."""
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    state_dir: Path
    env: dict[str, str]
    runners: int = 1
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> Stack:
        env = {**os.environ, **self.env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.log_path = self.state_dir.parent / "up.log"
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trainforge.cli", "up", "--state-dir", str(self.state_dir),
             "--port", str(self.port), "--runners", str(self.runners)],
            env=env, cwd=REPO, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"trainforge up exited {self.process.returncode}:\n{self.log()}")
            try:
                if (httpx.get(self.url + "/ready", timeout=2).status_code == 200 and self._runners_up()
                        and self.info().get("status") == "running"):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"stack not ready in {timeout}s:\n{self.log()}")

    def _runners_up(self) -> bool:
        info = self.info()
        return len([c for c in info.get("children", []) if c.get("name", "").startswith("runner")]) >= self.runners

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def info(self) -> dict[str, Any]:
        path = self.state_dir / "stack.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def child(self, name_prefix: str, *, runner_id: str | None = None) -> dict[str, Any]:
        for child in self.info().get("children", []):
            if runner_id is not None and child.get("runner_id") == runner_id:
                return child
            if runner_id is None and child.get("name", "").startswith(name_prefix):
                return child
        raise LookupError(f"no child {name_prefix or runner_id} in {self.info()}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise

    # -- API helpers ----------------------------------------------------------------------------------
    @property
    def token(self) -> str:
        """The admin's API token `trainforge up` left for the CLI."""
        return (self.state_dir / "secrets" / "cli-token").read_text().strip()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/api/v1", timeout=30, headers=self.headers)

    def wait_run(self, run_id: str, statuses: set[str], timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.api() as api:
            while True:
                run = api.get(f"/runs/{run_id}").json()
                if run.get("status") in statuses:
                    return run
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run {run_id} still {run.get('status')} after {timeout}s:\n{self.log()}")
                time.sleep(0.2)

    def sse(self, path: str, *, last_event_id: str | None = None, timeout: float = 60.0) -> Iterator[Any]:
        """Yield ServerSentEvents (keep-alive comments are not events) until the server ends the stream."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        with httpx.Client(base_url=self.url + "/api/v1", timeout=httpx.Timeout(timeout, connect=5),
                          headers=self.headers) as client:
            with connect_sse(client, "GET", path, headers=headers) as source:
                yield from source.iter_sse()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
