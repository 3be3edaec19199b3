"""`trainforge up` end to end: a real process tree (NATS, Postgres, gateway, runner) started, supervised,
stopped with Ctrl-C, and started again on the same data."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import nats.errors
import pytest
from sqlalchemy.engine import make_url

from shared.settings import Settings

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 45.0
"""Beyond the longest `up` itself waits for its parts (a runner's grace, then the gateway's): a stop that takes
that long fails with `up`'s own account of which part was slow, not a bare timeout."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """Running: not gone, and not a zombie (exited, waiting for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def _still_alive(pids: list[int], within: float = 5.0) -> list[int]:
    """The pids still alive after `within` seconds (an exiting process may linger until it is reaped)."""
    deadline = time.monotonic() + within
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return alive


def _manifest(state_dir: Path) -> dict[str, Any]:
    return json.loads((state_dir / "stack.json").read_text())


class Up:
    def __init__(self, process: asyncio.subprocess.Process, state_dir: Path, port: int, log: Path) -> None:
        self.process, self.state_dir, self.port, self.log = process, state_dir, port, log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def manifest(self) -> dict[str, Any]:
        return _manifest(self.state_dir)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_running(self) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                pytest.fail(f"`trainforge up` exited with {self.process.returncode}:\n{self.output()}")
            try:
                manifest = self.manifest()
                if manifest["pid"] == self.process.pid and manifest["status"] == "running":
                    return manifest
            except (FileNotFoundError, ValueError):
                pass  # not written yet
            await asyncio.sleep(0.1)
        pytest.fail(f"`trainforge up` was not running after {START_TIMEOUT_S}s:\n{self.output()}")

    async def interrupt(self) -> float:
        """Ctrl-C; returns how long the stack took to stop."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        try:
            code = await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            pytest.fail(f"`trainforge up` did not stop within {STOP_TIMEOUT_S}s:\n{self.output()}")
        assert code == 0, self.output()
        return time.monotonic() - started


@asynccontextmanager
async def trainforge_up(state_dir: Path, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[Up]:
    port = _free_port()
    environment = {**_environment_without_settings(), **(env or {})}
    log = state_dir.parent / f"up-{port}.log"
    with open(log, "wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "trainforge.cli", "up", "--state-dir", str(state_dir), "--port", str(port), *args,
            env=environment, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )
    up = Up(process, state_dir, port, log)
    try:
        yield up
    finally:
        if process.returncode is None:  # the test failed half-way: leave nothing behind
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()


def _environment_without_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRAINFORGE_")}


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _postmaster_pid(state_dir: Path) -> int | None:
    pid_file = state_dir / "postgres" / "data" / "postmaster.pid"
    return int(pid_file.read_text().split()[0]) if pid_file.exists() else None


async def test_up_serves_stops_on_ctrl_c_and_the_next_up_keeps_the_data(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    async with trainforge_up(state_dir, "--runners", "1") as up:
        manifest = await up.wait_running()
        async with httpx.AsyncClient(base_url=up.url, timeout=5.0) as client:
            assert (await client.get("/health")).json() == {"status": "ok"}
            assert (await client.get("/ready")).status_code == 200
            # the first admin logs in with the password `up` wrote (and printed where); the CLI has a token
            assert (await client.get("/api/v1/projects")).status_code == 401
            password = (state_dir / "secrets" / "admin-password").read_text().strip()
            login = await client.post("/api/v1/auth/login", json={"username": "admin", "password": password})
            assert login.status_code == 200, login.text
            cli_token = (state_dir / "secrets" / "cli-token").read_text().strip()
            me = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {cli_token}"})
            assert me.json()["username"] == "admin" and me.json()["is_admin"]
        assert str(state_dir / "secrets" / "admin-password") in up.output()
        assert manifest["nats_embedded"] and manifest["database_embedded"]
        assert [c["name"] for c in manifest["children"]] == ["gateway", "runner-cpu0"]
        await _assert_bus_requires_credentials(manifest, state_dir)
        assert manifest["children"][1]["runner_id"]
        gateway_pid = manifest["children"][0]["pid"]
        assert gateway_pid and _alive(gateway_pid)
        pids = [c["pid"] for c in manifest["children"] if c["pid"]] + [manifest["nats_pid"]]
        postmaster = _postmaster_pid(state_dir)
        assert postmaster and _alive(postmaster)

        conn = await asyncpg.connect(_asyncpg_dsn(manifest["database_url"]))
        try:
            await conn.execute("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('survives restarts')")
        finally:
            await conn.close()

        assert await up.interrupt() < 15.0
        assert "did not stop in time" not in up.output()  # every part stopped on SIGTERM, none was killed
        assert await _still_alive([*pids, postmaster]) == []
        assert up.manifest()["status"] == "stopped"
        assert "Trainforge is up" in up.output()

    async with trainforge_up(state_dir, "--runners", "0") as up:
        manifest = await up.wait_running()
        assert (state_dir / "secrets" / "cli-token").read_text().strip() == cli_token  # still valid: kept
        conn = await asyncpg.connect(_asyncpg_dsn(manifest["database_url"]))
        try:
            assert await conn.fetchval("SELECT note FROM kept") == "survives restarts"
        finally:
            await conn.close()
        await up.interrupt()


async def _assert_bus_requires_credentials(manifest: dict[str, Any], state_dir: Path) -> None:
    """The embedded NATS refuses a client without credentials; its users are kept 0600 in secrets/ (0700)."""
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(manifest["nats_url"], allow_reconnect=False, connect_timeout=5)
    secrets = state_dir / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    for name in ("nats-users.json", "nats-server.conf", "job-signing.key"):
        assert stat.S_IMODE((secrets / name).stat().st_mode) == 0o600, name
    users = json.loads(Path(manifest["nats_users_file"]).read_text())
    reader = await nats.connect(manifest["nats_url"], user="reader", password=users["reader"],
                                inbox_prefix=manifest["nats_reader_inbox_prefix"], allow_reconnect=False)
    try:
        info = await reader.jetstream().stream_info(f"{manifest['bus_prefix'].upper()}_EVENTS")
        assert info.config.name
    finally:
        await reader.close()


async def test_up_uses_external_nats_and_postgres_when_their_urls_are_set(settings: Settings, tmp_path: Path) -> None:
    env = {
        "TRAINFORGE_NATS_URL": settings.nats_url or "",
        "TRAINFORGE_DATABASE_URL": settings.database_url or "",
        "TRAINFORGE_BUS_PREFIX": settings.bus_prefix,
    }
    state_dir = tmp_path / "state"
    async with trainforge_up(state_dir, "--runners", "1", env=env) as up:
        manifest = await up.wait_running()
        assert not manifest["nats_embedded"] and not manifest["database_embedded"]
        assert manifest["nats_url"] == settings.nats_url
        assert manifest["database_url"] == settings.database_url
        async with httpx.AsyncClient(base_url=up.url, timeout=5.0) as client:
            ready = await client.get("/ready")
        assert {"database": "ok", "nats": "ok", "projector": "ok", "dispatcher": "ok"}.items() <= ready.json()["checks"].items()
        assert not (state_dir / "nats").exists() and not (state_dir / "postgres").exists()
        await up.interrupt()


async def test_up_restarts_a_gateway_that_was_killed(settings: Settings, tmp_path: Path) -> None:
    env = {
        "TRAINFORGE_NATS_URL": settings.nats_url or "",
        "TRAINFORGE_DATABASE_URL": settings.database_url or "",
        "TRAINFORGE_BUS_PREFIX": settings.bus_prefix,
    }
    async with trainforge_up(tmp_path / "state", "--runners", "0", env=env) as up:
        first = (await up.wait_running())["children"][0]
        os.kill(first["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30.0
        async with httpx.AsyncClient(base_url=up.url, timeout=2.0) as client:
            while True:
                gateway = up.manifest()["children"][0]
                if gateway["restarts"] == 1 and gateway["pid"] and gateway["pid"] != first["pid"]:
                    try:
                        if (await client.get("/ready")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                assert time.monotonic() < deadline, up.output()
                await asyncio.sleep(0.2)
        assert "gateway exited unexpectedly" in up.output()
        await up.interrupt()


async def test_a_second_up_on_the_same_state_dir_is_refused(settings: Settings, tmp_path: Path) -> None:
    env = {
        "TRAINFORGE_NATS_URL": settings.nats_url or "",
        "TRAINFORGE_DATABASE_URL": settings.database_url or "",
        "TRAINFORGE_BUS_PREFIX": settings.bus_prefix,
    }
    state_dir = tmp_path / "state"
    async with trainforge_up(state_dir, "--runners", "0", env=env) as up:
        await up.wait_running()
        async with trainforge_up(state_dir, "--runners", "0", env=env) as second:
            assert await asyncio.wait_for(second.process.wait(), 30.0) == 1
            assert "another `trainforge up`" in second.output()
        await up.interrupt()


async def test_after_up_is_killed_its_children_stop_and_the_next_up_takes_over_the_data(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    async with trainforge_up(state_dir, "--runners", "0") as up:
        manifest = await up.wait_running()
        conn = await asyncpg.connect(_asyncpg_dsn(manifest["database_url"]))
        try:
            await conn.execute("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('survives kill -9')")
        finally:
            await conn.close()
        up.process.kill()
        await up.process.wait()
        assert await _still_alive([manifest["children"][0]["pid"]], within=10.0) == []  # the gateway followed
        old_nats = manifest["nats_pid"]

    async with trainforge_up(state_dir, "--runners", "0") as up:
        manifest = await up.wait_running()
        assert await _still_alive([old_nats]) == []  # two servers must never share one JetStream store
        conn = await asyncpg.connect(_asyncpg_dsn(manifest["database_url"]))
        try:
            assert await conn.fetchval("SELECT note FROM kept") == "survives kill -9"
        finally:
            await conn.close()
        postmaster = _postmaster_pid(state_dir)
        await up.interrupt()
        assert await _still_alive([manifest["nats_pid"], postmaster]) == []


async def test_up_refuses_a_taken_port_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "trainforge.cli", "up", "--state-dir", str(tmp_path / "state"), "--port", str(port),
            env=_environment_without_settings(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 30.0)
    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in output.decode()
    assert not (tmp_path / "state" / "nats").exists()
