"""A run NATS did not take is kept queued (201: it is saved; it waits in line, saying why) and the dispatcher publishes it later, once on the stream."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from gateway.db.models import Run
from shared.bus import ensure_topology
from shared.contracts import job_decoder
from shared.settings import Settings
from shared.subjects import Subjects
from tests.integration.rest_helpers import (
    add_checkpoint,
    api,
    bus,
    database,
    in_app,
    new_project,
    runner_online,
    set_run,
    start_run,
)


async def _run_row(settings: Settings, run_id: str) -> Run:
    async with database(settings) as sessions, sessions() as session:
        return (await session.execute(select(Run).where(Run.id == run_id))).scalar_one()


async def _wait_enqueued(settings: Settings, run_id: str) -> bool:
    for _ in range(200):
        if (await _run_row(settings, run_id)).enqueued_at is not None:
            return True
        await asyncio.sleep(0.05)
    return False


async def _waits_because(client, run_id: str, reason: str) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(400):
        queue = (await client.get(f"/api/v1/runs/{run_id}")).json()["queue"]
        if queue is not None and queue["reason"] == reason:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_run_is_kept_queued_when_nats_refuses_its_job_and_republished_later(settings: Settings) -> None:
    names = Subjects(settings.bus_prefix)
    async with runner_online(settings), api(settings) as client:
        gw = client.app.state.gw
        await new_project(client, "flaky")
        in_app(client, gw.js.delete_stream, names.jobs_stream)  # nothing takes jobs now

        # the answer comes once the row is committed (durably accepted), whatever NATS does with the job
        created = await start_run(client, "flaky", headers={"Idempotency-Key": "k"})
        assert created.status_code == 201, created.text
        row = created.json()
        assert row["status"] == "queued" and row["enqueued_at"] is None
        assert await _waits_because(client, row["id"], "NATS did not take its job; retrying")
        replay = await start_run(client, "flaky", headers={"Idempotency-Key": "k"})
        assert replay.status_code == 201 and replay.json()["id"] == row["id"]

        in_app(client, ensure_topology, gw.js, settings)
        assert await _wait_enqueued(settings, row["id"])  # the dispatcher's next pass
    async with bus(settings) as nc:
        js = nc.jetstream()
        msg = await js.get_last_msg(names.jobs_stream, names.job("cpu"))
        assert job_decoder.decode(msg.data).run_id == row["id"]
        assert msg.headers["Nats-Msg-Id"].endswith(":k")
        assert (await _run_row(settings, row["id"])).enqueued_at is not None

    await set_run(settings, row["id"], enqueued_at=None)  # as if the confirmation had been lost
    async with runner_online(settings), api(settings):  # its start publishes the job again ...
        assert await _wait_enqueued(settings, row["id"])
    async with bus(settings) as nc:  # ... and the stream drops the copy
        assert (await nc.jetstream().stream_info(names.jobs_stream)).state.messages == 1


async def test_dispatcher_at_start_publishes_a_resumed_run_with_its_checkpoint(settings: Settings) -> None:
    names = Subjects(settings.bus_prefix)
    async with runner_online(settings), api(settings) as client:
        await new_project(client, "later")
        source = (await start_run(client, "later")).json()
        await set_run(settings, source["id"], status="failed", failure_cause="user")
        checkpoint = await add_checkpoint(settings, source["id"], step=3)
        resumed = (await client.post(f"/api/v1/runs/{source['id']}/resume")).json()
    async with bus(settings) as nc:
        await nc.jetstream().purge_stream(names.jobs_stream)
    await set_run(settings, resumed["id"], enqueued_at=None, job_msg_id="fresh-id")

    async with runner_online(settings), api(settings):  # a gateway start publishes what was not confirmed
        assert await _wait_enqueued(settings, resumed["id"])
    async with bus(settings) as nc:
        msg = await nc.jetstream().get_last_msg(names.jobs_stream, names.job("cpu"))
    job = job_decoder.decode(msg.data)
    assert msg.headers["Nats-Msg-Id"] == "fresh-id"
    assert job.run_id == resumed["id"] and job.resume is not None
    assert (job.resume.source_run_id, job.resume.checkpoint_id, job.resume.step) == (source["id"], checkpoint, 3)
