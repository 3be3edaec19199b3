"""The gateway answers liveness and readiness, and every error has one JSON shape."""

from litestar.testing import AsyncTestClient

from gateway.app import create_app
from shared.settings import Settings


async def test_health_and_ready_report_ok_with_real_nats_and_postgres(settings: Settings) -> None:
    async with AsyncTestClient(create_app(settings)) as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {name: "ok" for name in (
            "database", "nats", "registrar", "projector", "eventhub", "dispatcher", "fleet", "sweeper", "webhooks",
            "sweeps")}


async def test_unknown_route_is_a_problem_details_404(settings: Settings) -> None:
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 404 and body["code"] == "not_found" and body["title"] == "Not Found"
