"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
from litestar import Controller, get
from litestar.openapi import ResponseSpec
from litestar.response import Response
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gateway.state import Gateway, GatewayState

CHECK_TIMEOUT_S = 1.5
"""Each readiness check gets this long, all at once: `/ready` answers within 2 s, also while a part hangs."""


class Readiness(msgspec.Struct, kw_only=True):
    status: str
    """ready | not ready"""
    checks: dict[str, str]
    """database, nats: `ok` or `unreachable: <why>` / `disconnected`; then each background service
    (registrar, projector, eventhub, dispatcher, fleet, sweeper, webhooks, sweeps): `ok`, or `crashed;
    restarting` while the gateway restarts it."""


NOT_READY = ResponseSpec(Readiness, generate_examples=False, description="Not ready: a check names the part away.")


class HealthController(Controller):
    tags = ["health"]

    @get("/health", summary="Liveness: the process answers")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", summary="Readiness: NATS and the database are reachable, the background services alive",
         description="200 `{\"status\": \"ready\", ...}` or 503 `{\"status\": \"not ready\", \"checks\": "
                     "{\"database\": \"unreachable: timeout\", \"nats\": \"ok\", \"projector\": \"ok\", ...}}`, "
                     "within 2 s. A background service that crashed reads `crashed; restarting` until the "
                     "gateway has restarted it.",
         responses={503: NOT_READY})
    async def ready(self, gw: Gateway) -> Response[dict[str, object]]:
        database, nats = await asyncio.gather(_check(_database, gw), _check(_nats, gw))
        checks = {"database": database, "nats": nats}
        if gw.supervisor is not None:
            checks.update(gw.supervisor.health())
        ok = all(v == "ok" for v in checks.values())
        return Response({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)


async def _check(probe: Callable[[GatewayState], Awaitable[str]], gw: GatewayState) -> str:
    """The probe's verdict, or `unreachable: <why>`; never longer than CHECK_TIMEOUT_S (connecting included)."""
    try:
        return await asyncio.wait_for(probe(gw), CHECK_TIMEOUT_S)
    except TimeoutError:
        return "unreachable: timeout"
    except Exception as exc:  # noqa: BLE001 - readiness reports, it does not raise
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        return "unreachable: timeout" if isinstance(cause, TimeoutError) else f"unreachable: {type(cause).__name__}"


async def _database(gw: GatewayState) -> str:
    """`ok` once `select 1` answers. A pooled connection that the server dropped (it restarted within the pool's
    ping window, `gateway.db.session`) is no verdict on the server: its failure renews the pool, and the
    probe asks once more, on a new connection."""
    try:
        await _select_one(gw)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        await _select_one(gw)
    return "ok"


async def _select_one(gw: GatewayState) -> None:
    async with gw.engine.connect() as conn:
        await conn.execute(text("select 1"))


async def _nats(gw: GatewayState) -> str:
    if not gw.nc.is_connected:
        return "disconnected"
    await gw.nc.flush()
    return "ok"
