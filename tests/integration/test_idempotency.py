"""Idempotency-Key on POST: the first response comes back for a repeat; nothing is created twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from sqlalchemy import update

from gateway.db.models import IdempotencyKey
from gateway.schemas import ProjectCreate
from gateway.services import idempotency
from shared.settings import Settings
from tests.integration.rest_helpers import api, database, in_app, new_project, problem, start_run

P = "/api/v1/projects"


async def test_repeated_project_create_returns_the_first_response_and_creates_one(settings: Settings) -> None:
    async with api(settings) as client:
        first = await client.post(P, json={"name": "once"}, headers={"Idempotency-Key": "k1"})
        again = await client.post(P, json={"name": "once"}, headers={"Idempotency-Key": "k1"})
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        assert (await client.get(P)).json()["total"] == 1


async def test_same_key_with_another_body_is_a_conflict(settings: Settings) -> None:
    async with api(settings) as client:
        await client.post(P, json={"name": "a"}, headers={"Idempotency-Key": "k"})
        error = problem(await client.post(P, json={"name": "b"}, headers={"Idempotency-Key": "k"}), 409)
        assert "different request" in error["detail"]


async def test_a_repeat_while_the_first_request_is_in_flight_is_a_conflict(settings: Settings) -> None:
    async with api(settings) as client:
        gw = client.app.state.gw
        body = msgspec.json.encode(ProjectCreate(name="slow"))  # as the handler fingerprints it
        admin = (await client.get("/api/v1/auth/me")).json()["id"]  # keys are scoped per caller
        assert in_app(client, idempotency.begin, gw, f"{admin} POST {P}", "busy",
                      idempotency.fingerprint(body)) is None
        error = problem(await client.post(P, json={"name": "slow"}, headers={"Idempotency-Key": "busy"}), 409)
        assert error["detail"] == "request with this Idempotency-Key is in progress"


async def test_a_failed_request_frees_its_key_for_a_retry(settings: Settings) -> None:
    async with api(settings) as client:
        taken = await new_project(client, "taken")
        problem(await client.post(P, json={"name": "taken"}, headers={"Idempotency-Key": "retry"}), 409)
        await client.delete(f"{P}/{taken['id']}")
        retried = await client.post(P, json={"name": "taken"}, headers={"Idempotency-Key": "retry"})
        assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers


async def test_keys_are_scoped_to_method_and_path_and_expire(settings: Settings) -> None:
    async with api(settings) as client:
        await new_project(client, "s1")
        await new_project(client, "s2")
        one = await start_run(client, "s1", headers={"Idempotency-Key": "same"})
        two = await start_run(client, "s2", headers={"Idempotency-Key": "same"})
        assert one.status_code == two.status_code == 201 and one.json()["id"] != two.json()["id"]
        async with database(settings) as sessions, sessions() as session, session.begin():
            await session.execute(update(IdempotencyKey).values(
                created_at=datetime.now(UTC) - timedelta(hours=settings.idempotency_ttl_h + 1)))
        three = await start_run(client, "s1", headers={"Idempotency-Key": "same"})
        assert three.status_code == 201 and three.json()["id"] != one.json()["id"]
        assert "Idempotent-Replayed" not in three.headers


async def test_repeated_cancel_with_a_key_replays_the_first_answer(settings: Settings) -> None:
    async with api(settings) as client:
        await new_project(client, "c")
        run = (await start_run(client, "c")).json()
        url = f"/api/v1/runs/{run['id']}/cancel"
        first = await client.post(url, headers={"Idempotency-Key": "stop"})
        again = await client.post(url, headers={"Idempotency-Key": "stop"})
        assert first.status_code == again.status_code == 202
        assert again.json() == first.json() and first.json()["status"] == "canceled"
        problem(await client.post(url), 409)  # without the key: the run is finished


async def test_bad_idempotency_keys_are_400(settings: Settings) -> None:
    async with api(settings) as client:
        problem(await client.post(P, json={"name": "x"}, headers={"Idempotency-Key": "k" * 256}), 400)
        problem(await client.post(P, json={"name": "x"}, headers={"Idempotency-Key": ""}), 400)
        assert (await client.post(P, json={"name": "x"}, headers={"Idempotency-Key": "k" * 255})).status_code == 201
