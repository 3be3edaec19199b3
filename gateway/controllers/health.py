"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from litestar import Controller, get
from litestar.response import Response
from sqlalchemy import text

from gateway.state import Gateway, GatewayState


class HealthController(Controller):
    tags = ["health"]

    @get("/health", summary="Liveness: the process answers")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", summary="Readiness: NATS and the database are reachable")
    async def ready(self, gw: Gateway) -> Response[dict[str, object]]:
        checks: dict[str, str] = {}
        try:
            async with gw.engine.connect() as conn:
                await asyncio.wait_for(conn.execute(text("select 1")), timeout=2.0)
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - readiness reports, it does not raise
            checks["database"] = f"unreachable: {type(exc).__name__}"
        if gw.nc.is_connected:
            try:
                await asyncio.wait_for(gw.nc.flush(), timeout=2.0)
                checks["nats"] = "ok"
            except Exception as exc:  # noqa: BLE001
                checks["nats"] = f"unreachable: {type(exc).__name__}"
        else:
            checks["nats"] = "disconnected"
        ok = all(v == "ok" for v in checks.values())
        return Response({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)
