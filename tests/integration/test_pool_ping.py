"""The gateway's pool pings a connection only when it has been idle (`gateway.db.session.PING_IDLE_S`): a
connection the server dropped while it sat idle is replaced before use, without an error; one dropped while
the pool was busy costs one failed statement, after which the pool is renewed."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gateway.db import session as db_session
from gateway.db.session import create_engine
from shared.settings import Settings
from tests.integration.rest_helpers import api


async def _backend_pid(engine) -> int:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _drop(database_url: str, pid: int) -> None:
    """End the server side of the pooled connection `pid`, as a server restart would (from outside the pool)."""
    other = create_engine(database_url, pool_size=1)
    try:
        async with other.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        await other.dispose()


async def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_engine(database_url, pool_size=2)
    try:
        first = await _backend_pid(engine)
        await _drop(database_url, first)
        monkeypatch.setattr(db_session, "PING_IDLE_S", 0.0)  # every pooled connection counts as idle
        assert await _backend_pid(engine) != first  # pinged, found dropped, replaced: no error
    finally:
        await engine.dispose()


async def test_a_connection_dropped_while_in_recent_use_fails_one_statement_then_the_pool_is_renewed(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_session, "PING_IDLE_S", 3600.0)  # nothing counts as idle: no ping
    engine = create_engine(database_url, pool_size=2)
    try:
        first = await _backend_pid(engine)
        await _drop(database_url, first)
        with pytest.raises(DBAPIError) as failed:
            await _backend_pid(engine)
        assert failed.value.connection_invalidated
        assert await _backend_pid(engine) != first
    finally:
        await engine.dispose()


async def test_readiness_is_not_fooled_by_a_pooled_connection_the_server_dropped(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart inside the ping window leaves dead connections in the pool; `/ready` meets one, the pool is
    renewed, and the probe's second try, on a new connection, says `ok`: no false "not ready"."""
    monkeypatch.setattr(db_session, "PING_IDLE_S", 3600.0)  # no ping: /ready takes the dead connection as is
    async with api(settings) as client:
        assert (await client.get("/ready")).status_code == 200
        other = create_engine(settings.database_url, pool_size=1)
        try:
            async with other.connect() as conn:
                ended = (await conn.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"))).scalar_one()
        finally:
            await other.dispose()
        assert ended > 0
        ready = await client.get("/ready")
        assert ready.status_code == 200, ready.text
