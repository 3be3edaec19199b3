"""The test fixtures give every test real, isolated servers."""

import asyncpg
import nats
from nats.js.api import StorageType

from shared.bus import ensure_topology
from shared.settings import Settings
from shared.subjects import Subjects
from tests.conftest import _asyncpg_dsn


async def test_each_test_gets_a_migrated_database(settings: Settings) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(settings.database_url))
    try:
        tables = {r["tablename"] for r in await conn.fetch("select tablename from pg_tables")}
    finally:
        await conn.close()
    assert {"projects", "runs", "events", "checkpoints", "artifacts", "idempotency_keys"} <= tables


async def test_topology_is_declared_idempotently(settings: Settings) -> None:
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings)
        await ensure_topology(js, settings)
        names = Subjects(settings.bus_prefix)
        info = await js.stream_info(names.jobs_stream)
        assert info.config.subjects == [names.jobs_all]
        await js.stream_info(names.events_stream)
        rate_limits = await js.stream_info(f"KV_{names.rate_limits_bucket}")  # counts need not survive NATS
        assert rate_limits.config.storage == StorageType.MEMORY and rate_limits.config.max_age == 120
    finally:
        await nc.close()
