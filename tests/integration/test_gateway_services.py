"""The gateway's background services are typed fields of its state behind one protocol; one that crashes makes
`/ready` answer 503 naming it, and the gateway restarts it."""

from __future__ import annotations

import asyncio
import time

from gateway.background import BackgroundService
from gateway.state import GatewayState
from shared.settings import Settings
from tests.integration.rest_helpers import api, in_app

BOUND_S = 30.0


async def _cancel_task(service: object) -> None:
    task = service._task  # type: ignore[attr-defined]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_crashed_service_makes_ready_503_naming_it_until_the_gateway_has_restarted_it(
        settings: Settings) -> None:
    async with api(settings) as client:
        gw: GatewayState = client.app.state.gw
        services = dict(gw.background_services())
        assert list(services) == ["registrar", "projector", "eventhub", "dispatcher", "fleet", "sweeper",
                                  "webhooks", "sweeps"]
        assert all(isinstance(s, BackgroundService) and s.healthy() for s in services.values())
        assert (await client.get("/ready")).status_code == 200

        for name in ("sweeper", "eventhub"):
            in_app(client, _cancel_task, services[name])  # its loop is gone, as if it had raised
            ready = await client.get("/ready")
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"][name].startswith("crashed"), ready.json()
            assert ready.json()["checks"]["database"] == ready.json()["checks"]["projector"] == "ok"

            deadline = time.monotonic() + BOUND_S
            while (ready := await client.get("/ready")).status_code != 200:
                assert time.monotonic() < deadline, f"{name} not restarted: {ready.json()}"
                await asyncio.sleep(0.1)
            assert services[name].healthy() and getattr(gw, name) is services[name]
        assert gw.supervisor is not None and gw.supervisor.restarts == 2
