"""The projector folds JetStream events into Postgres exactly once, across duplicates and restarts."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import func, select

from gateway.db.models import Artifact, Checkpoint, EventRecord
from gateway.projector import Projector
from shared.contracts import (
    EventBase,
    FailureCause,
    RunArtifact,
    RunCheckpoint,
    RunClaimed,
    RunCompleted,
    RunFailed,
    RunLog,
    RunMetrics,
    RunProgress,
    RunQueued,
    RunStarted,
)
from shared.contracts.events import LogLine
from shared.settings import Settings
from tests.integration.events_support import (
    add_project_and_runs,
    event_count,
    gateway_state,
    publish,
    run_row,
    wait_for,
)


def run_events(project_id: str, run_id: str, attempt: int = 1, progress_steps: int = 3) -> list[EventBase]:
    base = {"run_id": run_id, "project_id": project_id, "attempt": attempt, "runner_id": f"w{attempt}"}
    events: list[EventBase] = [RunClaimed(**base, seq=1), RunStarted(**base, seq=2)]
    for i in range(progress_steps):
        events.append(RunProgress(**base, seq=3 + i, progress=(i + 1) / (progress_steps + 1), epoch=i))
    return events


async def test_projector_stores_each_event_once_and_folds_the_run(settings: Settings) -> None:
    async with gateway_state(settings) as gw:
        project_id, (run_id,) = await add_project_and_runs(gw)
        base = {"run_id": run_id, "project_id": project_id}
        events: list[EventBase] = [
            RunQueued(**base, attempt=0, runner_id="", seq=1, kind="container", pool="cpu"),
            *run_events(project_id, run_id),
            RunMetrics(**base, attempt=1, runner_id="w1", seq=6, metrics={"loss": 0.5}),
            RunLog(**base, attempt=1, runner_id="w1", seq=7, lines=[LogLine("stdout", "bad \x00 byte")]),
            RunCheckpoint(**base, attempt=1, runner_id="w1", seq=8, checkpoint_id="c" * 32, uri="/w/last.pt"),
            RunArtifact(**base, attempt=1, runner_id="w1", seq=9, artifact_id="a" * 32, name="best.pt",
                        uri="/w/best.pt"),
            RunCompleted(**base, attempt=1, runner_id="w1", seq=10, exit_code=0, result={"ok": True}),
        ]
        await publish(gw, *events)
        # the same events again under other message ids: JetStream keeps them, the projection must not
        await publish(gw, *events[3:], msg_id=lambda e: e.msg_id + ":again")
        projector = Projector(gw)
        await projector.start()
        try:
            await wait_for(lambda: _is(event_count(gw, run_id), len(events)), what="all events stored")
            await asyncio.sleep(0.3)  # the duplicates are delivered too; give them a chance to (not) land
        finally:
            await projector.stop()
        assert await event_count(gw, run_id) == len(events)
        run = await run_row(gw, run_id)
        assert (run.status, run.attempt, run.runner_id, run.exit_code) == ("completed", 1, "w1", 0)
        assert run.progress == 1.0 and run.result == {"ok": True} and run.latest_metrics == {"loss": 0.5}
        assert run.progress_detail == {"epoch": 2}
        assert run.claimed_at and run.started_at and run.finished_at
        async with gw.sessionmaker() as session:
            assert (await session.execute(select(func.count()).select_from(Checkpoint))).scalar_one() == 1
            assert (await session.execute(select(Artifact.name))).scalars().all() == ["best.pt"]
            positions = (await session.execute(
                select(EventRecord.position).order_by(EventRecord.attempt, EventRecord.seq))).scalars().all()
            assert positions == sorted(positions)
            log_body = (await session.execute(
                select(EventRecord.body).where(EventRecord.type == "run.log"))).scalar_one()
            assert log_body["lines"][0]["text"] == "bad \ufffd byte"


async def test_runs_folded_in_one_batch_each_keep_their_own_values(settings: Settings) -> None:
    """Runs whose events change the same columns are updated by one statement: none gets another's values."""
    async with gateway_state(settings) as gw:
        project_id, run_ids = await add_project_and_runs(gw, runs=5)
        events: list[EventBase] = []
        for n, run_id in enumerate(run_ids):
            base = {"run_id": run_id, "project_id": project_id, "attempt": 1, "runner_id": f"w{n}"}
            events += [RunClaimed(**base, seq=1), RunStarted(**base, seq=2),
                       RunMetrics(**base, seq=3, metrics={"loss": n / 10}),
                       RunCompleted(**base, seq=4, exit_code=n, result={"run": n})]
        await publish(gw, *events)  # stored before the projector starts: its first batches hold several runs
        projector = Projector(gw)
        await projector.start()
        try:
            await wait_for(lambda: _is(event_count(gw), len(events)), what="all events stored")
        finally:
            await projector.stop()
        for n, run_id in enumerate(run_ids):
            run = await run_row(gw, run_id)
            assert (run.status, run.runner_id, run.exit_code, run.result) == ("completed", f"w{n}", n, {"run": n})
            assert run.latest_metrics == {"loss": n / 10} and run.finished_at is not None


async def test_events_of_a_presumed_dead_attempt_are_stored_but_change_no_status(settings: Settings) -> None:
    async with gateway_state(settings) as gw:
        project_id, (run_id,) = await add_project_and_runs(gw)
        old = run_events(project_id, run_id, attempt=1, progress_steps=1)
        new = run_events(project_id, run_id, attempt=2, progress_steps=1)
        late = RunFailed(run_id=run_id, project_id=project_id, attempt=1, runner_id="w1", seq=4,
                         cause=FailureCause.USER, error_type="RuntimeError", message="zombie")
        await publish(gw, *old, *new, late)
        projector = Projector(gw)
        await projector.start()
        try:
            await wait_for(lambda: _is(event_count(gw, run_id), 7), what="all events stored")
        finally:
            await projector.stop()
        run = await run_row(gw, run_id)
        assert (run.status, run.attempt, run.runner_id, run.error) == ("running", 2, "w2", None)


async def test_an_event_whose_run_row_appears_later_is_folded_once_it_exists(settings: Settings) -> None:
    async with gateway_state(settings) as gw:
        project_id, _ = await add_project_and_runs(gw, runs=0)
        from shared.contracts.common import new_id

        run_id = new_id()
        projector = Projector(gw)
        await projector.start()
        try:
            await publish(gw, *run_events(project_id, run_id, progress_steps=0))
            await asyncio.sleep(0.5)
            assert await event_count(gw, run_id) == 0  # deferred, not stored unfolded
            from gateway.db.models import Run

            async with gw.sessionmaker.begin() as session:
                session.add(Run(id=run_id, project_id=project_id, kind="container", pool="cpu", spec={}))
            await wait_for(lambda: _is(event_count(gw, run_id), 2), what="deferred events stored")
        finally:
            await projector.stop()
        assert (await run_row(gw, run_id)).status == "running"


async def test_events_of_a_row_this_gateway_is_writing_wait_in_memory_and_are_stored_once_it_is(
        settings: Settings) -> None:
    """A synchronous prediction writes its run's row after the runner answered, and the runner's events may
    come first: the projector holds them (no redelivery, no `MISSING_RUN_DELAY_S`) until `written`."""
    async with gateway_state(settings) as gw:
        project_id, _ = await add_project_and_runs(gw, runs=0)
        from gateway.db.models import Run
        from shared.contracts.common import new_id

        run_id = new_id()
        projector = Projector(gw)
        await projector.start()
        try:
            projector.expect(run_id)
            await publish(gw, *run_events(project_id, run_id, progress_steps=0))
            await wait_for(lambda: _held(projector, run_id, 2), what="the events held for the row")
            assert await event_count(gw, run_id) == 0
            async with gw.sessionmaker.begin() as session:
                session.add(Run(id=run_id, project_id=project_id, kind="yolo.predict", pool="cpu", spec={}))
            projector.written(run_id)
            await wait_for(lambda: _is(event_count(gw, run_id), 2), what="the held events stored")
            names = gw.subjects
            info = await gw.js.consumer_info(names.events_stream, names.projector_consumer)
            assert info.num_redelivered == 0  # held in memory, never handed back
        finally:
            await projector.stop()
        assert (await run_row(gw, run_id)).status == "running"


async def test_a_row_announced_but_never_written_leaves_its_events_to_the_usual_deferral(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway_state(settings) as gw:
        project_id, _ = await add_project_and_runs(gw, runs=0)
        from gateway import projector as projector_module
        from shared.contracts.common import new_id

        monkeypatch.setattr(projector_module, "EXPECTED_ROW_WAIT_S", 0.0)
        run_id = new_id()
        projector = Projector(gw)
        await projector.start()
        try:
            projector.expect(run_id)
            await publish(gw, *run_events(project_id, run_id, progress_steps=0))
            await wait_for(lambda: _forgotten(projector, run_id), what="the announcement given up")
            assert await event_count(gw, run_id) == 0  # deferred (redelivered later), not stored unfolded
        finally:
            await projector.stop()


async def _held(projector: Projector, run_id: str, count: int) -> bool:
    return sum(item.event.run_id == run_id for item in projector._held) == count


async def _forgotten(projector: Projector, run_id: str) -> bool:
    return run_id not in projector._expected


@pytest.mark.slow
async def test_restarting_the_projector_mid_stream_loses_and_doubles_nothing(settings: Settings) -> None:
    async with gateway_state(settings) as gw:
        project_id, run_ids = await add_project_and_runs(gw, runs=20)
        per_run = 500
        events = [e for run_id in run_ids for e in run_events(project_id, run_id, progress_steps=per_run - 2)]
        await publish(gw, *events)
        total = len(events)

        for _ in range(3):  # stop it part-way through, three times; then let a fresh one finish
            projector = Projector(gw)
            await projector.start()
            while projector.projected == 0:
                await asyncio.sleep(0.005)
            await projector.stop()
            assert await event_count(gw) < total, "the stop did not come mid-stream; publish more events"
        remaining = total - await event_count(gw)
        started = time.monotonic()
        projector = Projector(gw)
        await projector.start()
        try:
            await wait_for(lambda: _is(event_count(gw), total), timeout=60, what="all events stored")
            elapsed = time.monotonic() - started
            await asyncio.sleep(0.3)
        finally:
            await projector.stop()
        print(f"projected {remaining} events in {elapsed:.2f}s: {remaining / elapsed:.0f} events/s")
        async with gw.sessionmaker() as session:
            keys = select(EventRecord.run_id, EventRecord.attempt, EventRecord.seq).distinct().subquery()
            distinct = (await session.execute(select(func.count()).select_from(keys))).scalar_one()
        assert distinct == total == await event_count(gw)
        for run_id in run_ids:
            run = await run_row(gw, run_id)
            assert run.status == "running" and run.progress == pytest.approx((per_run - 2) / (per_run - 1))


async def _is(value_awaitable, expected: int) -> bool:  # type: ignore[no-untyped-def]
    return (await value_awaitable) == expected


@pytest.mark.slow
async def test_a_job_no_runner_finishes_within_max_deliveries_fails_its_run(settings: Settings) -> None:
    import msgspec

    from shared.bus import ensure_pool_consumer
    from shared.contracts import Job
    from shared.contracts.commands import ContainerSpec

    settings = msgspec.structs.replace(settings, job_ack_wait_s=0.5, job_max_deliver=2)
    async with gateway_state(settings) as gw:
        project_id, (run_id,) = await add_project_and_runs(gw)
        durable = await ensure_pool_consumer(gw.js, settings, "cpu")
        job = Job(run_id=run_id, project_id=project_id, pool="cpu", spec=ContainerSpec(start_command="true"))
        await gw.js.publish(gw.subjects.job("cpu"), msgspec.json.encode(job), headers={"Nats-Msg-Id": run_id})
        projector = Projector(gw)
        await projector.start()
        try:
            sub = await gw.js.pull_subscribe_bind(durable=durable, stream=gw.subjects.jobs_stream)
            for attempt in (1, 2):  # two runners claim it and die without a word
                (msg,) = await sub.fetch(1, timeout=5)
                assert msg.metadata.num_delivered == attempt
                await publish(gw, RunClaimed(run_id=run_id, project_id=project_id, attempt=attempt,
                                             runner_id=f"w{attempt}", seq=1))
            await asyncio.sleep(0.6)  # past ack_wait; the server notices on the next runner's pull
            with pytest.raises(TimeoutError):
                await sub.fetch(1, timeout=1)

            async def failed() -> bool:
                return (await run_row(gw, run_id)).status == "failed"

            await wait_for(failed, timeout=10, what="the run to fail")
            await sub.unsubscribe()
        finally:
            await projector.stop()
        run = await run_row(gw, run_id)
        assert run.failure_cause == "infrastructure" and run.error.startswith("MaxDeliveriesExceeded: ")
        with pytest.raises(Exception):  # the job is gone from the work queue
            await gw.js.get_msg(gw.subjects.jobs_stream, 1)


async def test_an_event_the_database_refuses_is_dropped_without_stalling_the_others(
    settings: Settings,
) -> None:
    async with gateway_state(settings) as gw:
        project_id, (run_id,) = await add_project_and_runs(gw)
        events = run_events(project_id, run_id, progress_steps=2)
        bad = RunProgress(event_id="x" * 40, run_id=run_id, project_id=project_id, attempt=1, runner_id="w1",
                          seq=99, progress=0.9)  # event_id longer than the column
        await publish(gw, events[0], bad, *events[1:])
        projector = Projector(gw)
        await projector.start()
        try:
            await wait_for(lambda: _is(event_count(gw, run_id), len(events)), what="the good events stored")
        finally:
            await projector.stop()
        run = await run_row(gw, run_id)
        assert run.status == "running" and run.progress == pytest.approx(2 / 3)
