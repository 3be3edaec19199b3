"""The gateway's pool pings a connection only when it has been idle (`gateway.db.session.PING_IDLE_S`): a
connection the server dropped while it sat idle is replaced before use, without an error; one dropped while
the pool was busy costs one failed statement, after which the pool is renewed."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gateway.db import session as db_session
from gateway.db.session import create_engine


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
