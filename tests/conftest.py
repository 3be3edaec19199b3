"""Real servers for the tests: a nats-server with JetStream and a Postgres, started here on loopback
(or taken from TRAINFORGE_TEST_NATS_URL / TRAINFORGE_TEST_DATABASE_URL). Never a mock of either.

Postgres: the schema is migrated once into a template database; each test gets a fresh clone of it.
NATS: each test gets its own bus prefix, so its streams and subjects are its own; they are deleted after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest
from sqlalchemy.engine import make_url

from shared.jobsign import ensure_key_pair
from shared.secretfiles import secrets_dir
from shared.settings import Settings
from tests.auth_support import ADMIN_PASSWORD
from tests.docker_engine import DockerEngine, EngineUnavailable
from trainforge.busauth import BusCredentials
from trainforge.embedded import EmbeddedNats, EmbeddedPostgres

# Ultralytics and matplotlib must never write to ~ or reach the network in tests.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL carrying the credentials of a user allowed everything (the embedded server requires them, as
    `trainforge up`'s does: `trainforge.busauth`). TRAINFORGE_TEST_NATS_URL: an external server, with
    whatever credentials that URL carries."""
    if url := os.environ.get("TRAINFORGE_TEST_NATS_URL"):
        yield url
        return
    folder = secrets_dir(tmp_path_factory.mktemp("nats-secrets"))
    credentials = BusCredentials.ensure(folder)
    config = credentials.write_server_config(folder, "tf")
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), config_file=config)
    yield credentials.url_for(server.start(), "gateway")
    server.stop()


@pytest.fixture(scope="session")
def job_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private, public) key files of a job signing key pair, made once per session: the tests' gateways
    sign with it and their runners check with it, as `trainforge up` sets them up."""
    folder = tmp_path_factory.mktemp("job-keys")
    private, public = folder / "job-signing.key", folder / "job-verify.pub"
    ensure_key_pair(private, public)
    return private, public


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin URL (postgresql+asyncpg://...) of a server the tests may create databases on."""
    if url := os.environ.get("TRAINFORGE_TEST_DATABASE_URL"):
        yield url
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    yield server.start()
    server.stop()


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
async def template_database(postgres_url: str) -> AsyncIterator[str]:
    """Name of a database holding the migrated schema, cloned by every test."""
    from migrations import upgrade

    name = f"tf_template_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(_asyncpg_dsn(postgres_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    await anyio.to_thread.run_sync(upgrade, with_database(postgres_url, name))
    yield name
    conn = await asyncpg.connect(_asyncpg_dsn(postgres_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def database_url(postgres_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh database with the current schema, dropped after the test."""
    name = f"tf_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_asyncpg_dsn(postgres_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    finally:
        await conn.close()
    yield with_database(postgres_url, name)
    conn = await asyncpg.connect(_asyncpg_dsn(postgres_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def bus_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def settings(
    nats_url: str, database_url: str, bus_prefix: str, tmp_path: Path, job_keys: tuple[Path, Path]
) -> AsyncIterator[Settings]:
    """Settings for one test: its own database, bus prefix and state folder; short timeouts; jobs signed and
    checked with the session's key pair."""
    yield Settings.from_mapping(
        {
            "nats_url": nats_url,
            "job_signing_key_file": job_keys[0],
            "job_verify_key": str(job_keys[1]),
            "database_url": database_url,
            "bus_prefix": bus_prefix,
            "state_dir": tmp_path / "state",
            "job_ack_wait_s": 3.0,
            "attempt_hold_s": 8.0,
            "runner_heartbeat_s": 1.0,
            "runner_local_backend": True,
            "shutdown_grace_s": 2.0,
            "cancel_grace_s": 2.0,
            "sse_keepalive_s": 1.0,
            "admin_password": ADMIN_PASSWORD,
            "rate_limit_login_per_minute": 0,
            "rate_limit_writes_per_minute": 0,
            "rate_limit_address_writes_per_minute": 0,
        }
    )
    await _delete_streams(nats_url, bus_prefix)


async def _delete_streams(nats_url: str, prefix: str) -> None:
    import nats

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for stream in await js.streams_info():
            name = stream.config.name or ""
            if name.lower().startswith(prefix.lower() + "_") or name.startswith(f"KV_{prefix}_"):
                await js.delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A private Docker engine and the test image (tests/docker_engine.py), started once per session when the
    machine allows (root, Debian's docker.io installed or installable with apt); stopped at the end, with every
    container the tests made. Skipped only when impossible."""
    try:
        engine = DockerEngine.start()
    except EngineUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")
    yield engine
    engine.stop()
