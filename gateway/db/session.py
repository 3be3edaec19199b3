"""Engine and session factory. Built by the app's lifespan from settings, never at import time.

Every wait on Postgres is bounded by `timeout_s` (`TRAINFORGE_DATABASE_TIMEOUT_S`): making a connection
(asyncpg's connect timeout), each statement and the ping of an idle pooled connection (asyncpg's `command_timeout`), and waiting
for a free pooled connection (`pool_timeout`). A server that is down or frozen so fails fast instead of hanging
a request: connection failures are raised as `DatabaseUnavailable`, and a statement that timed out or lost its
connection invalidates that connection (`gateway.errors` answers all of these with 503). A pooled connection
idle for `PING_IDLE_S` or more is pinged when taken from the pool, and the pool renewed when the ping fails,
so the gateway reconnects by itself after a server restart. One used within the last `PING_IDLE_S` is not
pinged (SQLAlchemy's `pool_pre_ping` pings on every checkout: one more round trip per session); a restart inside that window costs the one statement that meets the dropped
connection a 503, and the pool is renewed as after a failed ping. The pool lends the connection returned
last first (LIFO): a steady flow of work (the projector's transaction per batch) keeps reusing the same warm
connections, which are never pinged, where first-in-first-out would hand out ones idle for a second or more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import event, exc, make_url
from sqlalchemy.engine import Dialect, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from gateway.errors import CONNECTION_LOST, DatabaseUnavailable

DEFAULT_TIMEOUT_S = 5.0
PING_IDLE_S = 1.0
"""A pooled connection idle this long is pinged before use."""


def create_engine(database_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, pool_size: int = 10) -> AsyncEngine:
    engine = create_async_engine(
        database_url, pool_size=pool_size, max_overflow=20, pool_timeout=timeout_s,
        pool_use_lifo=True,  # the connection used last goes out first: the busy ones stay warm, unpinged
        connect_args={"timeout": timeout_s, "command_timeout": timeout_s},
    )
    dialect = engine.sync_engine.dialect

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is not None:
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)  # None: a new connection
        if idle_since is None or time.monotonic() - idle_since < PING_IDLE_S:
            return
        if not dialect._do_ping_w_event(dbapi_connection):  # False: the server dropped it (what pre-ping does)
            raise exc.InvalidatePoolError()

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Dialect, record: ConnectionPoolEntry, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except CONNECTION_LOST as exc:
            raise DatabaseUnavailable(_describe(exc)) from exc

    @event.listens_for(engine.sync_engine, "handle_error")
    def _lost(context: ExceptionContext) -> None:
        if isinstance(context.original_exception, TimeoutError | asyncio.CancelledError):
            context.is_disconnect = True  # mid-statement: the connection's state is unknown; never reuse it

    def _terminate(dbapi_connection: Any) -> None:
        """Invalidating a connection: drop it at once. SQLAlchemy's own way first says goodbye to the server
        and waits up to 2 s for it, which a frozen server never answers."""
        dbapi_connection.driver_connection.terminate()

    dialect.do_terminate = _terminate  # type: ignore[method-assign]
    return engine


@dataclass(slots=True)
class DriverTransaction:
    conn: asyncpg.Connection
    closing: str = ""
    """Statements without parameters that go out with the COMMIT, in the same message (set by the block)."""


@contextlib.asynccontextmanager
async def driver_transaction(engine: AsyncEngine, *, opening: str = "") -> AsyncIterator[DriverTransaction]:
    """A pooled connection's own asyncpg connection, in one transaction: for a hot path where SQLAlchemy's
    cost per statement counts (compiling, result objects, a greenlet switch: about 0.2 ms of CPU each). BEGIN
    goes out with `opening` and COMMIT with the block's `closing` (statements without parameters, such as an
    advisory lock or a NOTIFY), each pair in one message: one round trip, where each message is a write to
    the server's socket that costs about as much CPU as a statement. The pool's rules still apply (the idle
    ping on checkout, the return on exit); a block that fails is rolled back, and a connection that broke,
    or whose state is unknown after a timeout or a cancellation mid-statement, is invalidated, as
    `handle_error` does for SQLAlchemy's own statements. The codecs are SQLAlchemy's: jsonb parameters are
    JSON text, and jsonb results come back decoded."""
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        tx = DriverTransaction(driver)
        try:
            await driver.execute(f"BEGIN; {opening}" if opening else "BEGIN")
            yield tx
            await driver.execute(f"{tx.closing}; COMMIT" if tx.closing else "COMMIT")
        except BaseException as exc:
            await _invalidate_if_unsure(conn, driver, exc)
            if not driver.is_closed() and driver.is_in_transaction():
                try:
                    await driver.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - never lent again in a state nobody knows
                    await conn.invalidate()
            raise


async def plain_fetch(session: AsyncSession, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one plain statement on the asyncpg connection under `session`'s transaction (begun if it was not),
    as part of that transaction: for a hot path where SQLAlchemy's cost per statement counts. A lost
    connection is `DatabaseUnavailable` (503) and, like one whose state a timeout or a cancellation left
    unknown, invalidated: what `handle_error` does for SQLAlchemy's own statements."""
    conn = await session.connection()
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    try:
        return await driver.fetch(sql, *args)  # type: ignore[no-any-return]
    except BaseException as exc:
        await _invalidate_if_unsure(conn, driver, exc)
        if isinstance(exc, CONNECTION_LOST | asyncpg.InterfaceError):
            raise DatabaseUnavailable(_describe(exc)) from exc
        raise


async def _invalidate_if_unsure(conn: AsyncConnection, driver: asyncpg.Connection, exc: BaseException) -> None:
    """After a plain statement failed: never lend again a connection that broke, or whose state a timeout or
    a cancellation mid-statement left unknown."""
    if driver.is_closed() or isinstance(exc, TimeoutError | asyncio.CancelledError):
        await conn.invalidate()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "the database did not answer in time"
    return f"the database is unreachable ({type(exc).__name__})"


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def listening_connection(database_url: str | None, channel: str, callback: Callable[..., Any], *,
                               timeout_s: float = 60.0, more: Mapping[str, Callable[..., Any]] | None = None,
                               ) -> asyncpg.Connection:
    """A plain asyncpg connection (outside the pool) that LISTENs on `channel`, calling `callback` for each
    notification (and on each channel of `more` with its callback); closed again when a LISTEN fails.
    `timeout_s` bounds the connect (asyncpg's default)."""
    if database_url is None:
        raise ValueError("no database URL is configured (TRAINFORGE_DATABASE_URL)")
    url = make_url(database_url).set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False), timeout=timeout_s)
    try:
        for name, heard in {channel: callback, **(more or {})}.items():
            await conn.add_listener(name, heard)
    except BaseException:
        conn.terminate()
        raise
    return conn
