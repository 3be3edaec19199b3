"""Start a throwaway `trainforge up` for a benchmark and find its parts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_stack(runners: int = 1, extra_env: dict[str, str] | None = None) -> Iterator[dict]:
    """Yield {"url", "state_dir", "info", "headers"} of a fresh embedded stack (`headers`: the admin's API
    token); stop it afterwards. Rate limits are off: a benchmark is one client sending as fast as it can."""
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        state = Path(tmp) / "state"
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO), "TRAINFORGE_LOG_LEVEL": "WARNING",
               "TRAINFORGE_RATE_LIMIT_WRITES_PER_MINUTE": "0", "TRAINFORGE_RATE_LIMIT_ADDRESS_WRITES_PER_MINUTE": "0",
               **(extra_env or {})}
        env.pop("TRAINFORGE_NATS_URL", None)
        env.pop("TRAINFORGE_DATABASE_URL", None)
        log = open(Path(tmp) / "up.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "trainforge.cli", "up", "--state-dir", str(state), "--port", str(port),
             "--runners", str(runners)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"trainforge up exited: {(Path(tmp) / 'up.log').read_text()[-3000:]}")
                try:
                    if httpx.get(url + "/ready", timeout=2).status_code == 200:
                        info = json.loads((state / "stack.json").read_text())
                        runners_up = [c for c in info.get("children", []) if c["name"].startswith("runner")]
                        if len(runners_up) >= runners and info.get("status") == "running":
                            break
                except (httpx.HTTPError, OSError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("stack did not become ready")
                time.sleep(0.3)
            token = (state / "secrets" / "cli-token").read_text().strip()
            yield {"url": url, "state_dir": state, "info": info, "headers": {"Authorization": f"Bearer {token}"}}
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
