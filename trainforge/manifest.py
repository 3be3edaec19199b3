"""`<state_dir>/stack.json`: what a `trainforge up` runs where. `up` writes it (atomically: a temporary file
renamed over it) on every change; `status`, `down`, `logs`, tests and scripts read it.

A manifest outlives its `up` when that was killed: `alive_pid` tells a live stack from a stale file (the pid
is gone, or is now some other program's).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

MANIFEST_FILE = "stack.json"
LOG_DIR = "logs"
LOG_FILE = "up.log"
"""`up --detach` writes the stack's output (its own log lines and every part's, prefixed) to `logs/up.log`."""


class ChildEntry(msgspec.Struct, kw_only=True):
    name: str
    pid: int | None = None
    """None while it is not running (backoff, failed, stopped)."""
    runner_id: str | None = None
    args: list[str] = []
    state: str = "starting"
    """starting | running | backoff | failed | stopped"""
    restarts: int = 0
    started_at: float | None = None
    """Epoch seconds its current process started."""


class StackManifest(msgspec.Struct, kw_only=True):
    status: str
    """starting | running | stopping | stopped"""
    pid: int
    """The `trainforge up` process."""
    state_dir: str
    api_url: str
    started_at: float | None = None
    updated_at: float | None = None
    host: str = ""
    port: int = 0
    nats_url: str = ""
    bus_prefix: str = ""
    admin_username: str = ""
    admin_password_file: str | None = None
    cli_token_file: str | None = None
    nats_embedded: bool = False
    nats_users_file: str | None = None
    nats_reader_inbox_prefix: str | None = None
    job_verify_key: str | None = None
    nats_pid: int | None = None
    database_url: str = ""
    database_embedded: bool = False
    postgres_pid: int | None = None
    server_restarts: dict[str, int] = {}
    server_started_at: dict[str, float] = {}
    children: list[ChildEntry] = []
    log_file: str | None = None
    """Where the output goes when `up` runs detached; None in the foreground (the terminal has it)."""


def manifest_path(state_dir: Path) -> Path:
    return state_dir / MANIFEST_FILE


def log_path(state_dir: Path) -> Path:
    return state_dir / LOG_DIR / LOG_FILE


def write(state_dir: Path, manifest: StackManifest) -> None:
    """Atomically: a reader sees the old manifest or the new one, never half of one. Mode 0600: it holds the
    database URL."""
    path = manifest_path(state_dir)
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(msgspec.json.format(msgspec.json.encode(manifest), indent=2))
    os.replace(tmp, path)


def read(state_dir: Path) -> StackManifest | None:
    """The manifest, or None when there is none (or it cannot be read)."""
    try:
        return msgspec.json.decode(manifest_path(state_dir).read_bytes(), type=StackManifest)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def pid_alive(pid: int | None) -> bool:
    """Running: not gone, and not a zombie (exited, waiting to be reaped)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def is_trainforge_up(pid: int) -> bool:
    """Whether `pid` is a `trainforge up` (a pid the system handed to another program since is not)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)  # no /proc: trust the pid
    args = [a.decode(errors="replace") for a in argv if a]
    return "up" in args and any(a.endswith(("trainforge", "trainforge.cli")) for a in args)


def alive_pid(manifest: StackManifest | None) -> int | None:
    """The pid of the `up` the manifest describes while it runs; None when it is gone (a stale manifest)."""
    if manifest is None or manifest.status == "stopped":
        return None
    return manifest.pid if pid_alive(manifest.pid) and is_trainforge_up(manifest.pid) else None
