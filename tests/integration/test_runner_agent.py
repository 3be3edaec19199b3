"""The runner agent against a real NATS: claims jobs, reports events in order, cancels, stops gracefully."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import ClassVar

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from runner.executors.base import Outcome, RunContext
from runner.executors.registry import ExecutorRegistry
from shared.bus import ensure_topology
from shared.contracts import FailureCause, RunCanceled, RunCompleted, RunnerHeartbeat, event_decoder
from shared.jobsign import JobSigner
from shared.settings import Settings
from shared.subjects import Subjects
from tests.integration.runner_support import (
    POOL,
    RunEvents,
    container_job,
    live_group_members,
    publish_job,
    request_cancel,
    running_agent,
)


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await ensure_topology(js, settings)
    yield nc, js
    await nc.close()


class CrashingExecutor:
    kinds: ClassVar[tuple[str, ...]] = ("container",)

    def __init__(self, settings: Settings) -> None: ...

    async def run(self, ctx: RunContext) -> Outcome:
        await ctx.emit.log("about to crash")
        raise RuntimeError("executor bug")


async def test_local_run_reports_claimed_started_its_log_lines_and_completed(settings: Settings, bus) -> None:
    nc, js = bus
    job = container_job("for i in $(seq 1 30); do echo line $i; done")
    async with RunEvents(js, settings, job) as events, running_agent(settings) as agent:
        await publish_job(js, settings, job)
        done = await events.wait_for_type("run.completed", "run.failed", "run.canceled")
    assert done.type == "run.completed" and done.exit_code == 0  # type: ignore[attr-defined]
    types = events.types()
    assert types[:2] == ["run.claimed", "run.started"] and types[-1] == "run.completed"
    assert set(types[2:-1]) == {"run.log"}
    assert events.log_lines() == [f"line {i}" for i in range(1, 31)]
    assert [e.seq for e in events.events] == list(range(1, len(events.events) + 1))
    assert {(e.attempt, e.runner_id) for e in events.events} == {(1, agent.runner_id)}
    claimed = events.events[0]
    assert claimed.device == "cpu" and claimed.host  # type: ignore[attr-defined]


async def test_failing_command_fails_the_run_with_cause_user_and_exit_code(settings: Settings, bus) -> None:
    nc, js = bus
    job = container_job("echo going to fail >&2; exit 7")
    async with RunEvents(js, settings, job) as events, running_agent(settings):
        await publish_job(js, settings, job)
        failed = await events.wait_for_type("run.completed", "run.failed", "run.canceled")
    assert failed.type == "run.failed"
    assert (failed.cause, failed.exit_code) == (FailureCause.USER, 7)  # type: ignore[attr-defined]
    assert events.log_lines("stderr") == ["going to fail"]


async def test_disabled_local_backend_fails_the_run_with_a_clear_message(settings: Settings, bus) -> None:
    nc, js = bus
    settings = msgspec.structs.replace(settings, runner_local_backend=False)
    job = container_job("echo never")
    async with RunEvents(js, settings, job) as events, running_agent(settings):
        await publish_job(js, settings, job)
        failed = await events.wait_for_type("run.completed", "run.failed", "run.canceled")
    assert failed.type == "run.failed" and failed.cause == FailureCause.USER  # type: ignore[attr-defined]
    assert "backend 'local' is disabled" in failed.message  # type: ignore[attr-defined]
    assert events.log_lines() == []


async def test_cancel_ends_a_running_job_within_seconds_and_kills_its_process_group(settings: Settings, bus) -> None:
    nc, js = bus
    job = container_job("echo $$; (trap '' TERM; sleep 600) & sleep 600 & echo ready; wait")
    async with RunEvents(js, settings, job) as events, running_agent(settings):
        await publish_job(js, settings, job)
        await events.wait_for(lambda e: e.type == "run.log" and "ready" in [x.text for x in e.lines])  # type: ignore[attr-defined]
        pgid = int(events.log_lines()[0])
        assert live_group_members(pgid)
        started = time.monotonic()
        await request_cancel(nc, js, settings, job.run_id)
        canceled = await events.wait_for_type("run.completed", "run.failed", "run.canceled", timeout=5)
        assert time.monotonic() - started < 5
    assert canceled.type == "run.canceled" and canceled.reason == "requested"  # type: ignore[attr-defined]
    assert live_group_members(pgid) == []


async def test_a_job_canceled_before_it_is_claimed_ends_canceled_without_starting(settings: Settings, bus) -> None:
    nc, js = bus
    job = container_job("touch ran")
    await request_cancel(nc, js, settings, job.run_id)
    async with RunEvents(js, settings, job) as events, running_agent(settings):
        await publish_job(js, settings, job)
        await events.wait_for_type("run.completed", "run.failed", "run.canceled")
    assert events.types() == ["run.canceled"]
    assert not (settings.work_root / job.run_id / "ran").exists()


@pytest.mark.parametrize("earlier", ["an attempt that released its claim", "the gateway only (no claim ever)"])
async def test_a_job_whose_run_already_ended_is_acknowledged_without_running(settings: Settings, bus,
                                                                            earlier: str) -> None:
    """A delivery whose ack was lost: the run's terminal event is in the stream already. With a claim key an
    earlier attempt wrote and released, the runner looks for it once it holds the claim; with none ever
    written, the look that went out with the claim counts. Either way nothing runs and the job is acked."""
    nc, js = bus
    names = Subjects(settings.bus_prefix)
    job = container_job("touch ran")
    if earlier.startswith("an attempt"):
        claims = await js.key_value(names.attempts_bucket)
        await claims.delete(job.run_id, last=await claims.create(job.run_id, b"{}"))
        ended = RunCompleted(run_id=job.run_id, project_id=job.project_id, attempt=1, runner_id="gone", seq=3,
                             exit_code=0)
    else:
        ended = RunCanceled(run_id=job.run_id, project_id=job.project_id, attempt=0, runner_id="gateway", seq=2)
    await js.publish(names.run_event(job.project_id, job.run_id, ended.type), msgspec.json.encode(ended))
    async with RunEvents(js, settings, job) as events, running_agent(settings):
        await publish_job(js, settings, job)
        async with asyncio.timeout(30):
            while (await js.stream_info(names.jobs_stream)).state.messages:  # acked: gone from the work queue
                await asyncio.sleep(0.05)
        assert [e.type for e in await events.read_all()] == [ended.type]
    assert not (settings.work_root / job.run_id / "ran").exists()


async def test_undecodable_job_is_terminated_and_the_runner_keeps_working(settings: Settings, bus) -> None:
    nc, js = bus
    names = Subjects(settings.bus_prefix)
    job = container_job("echo fine")
    async with RunEvents(js, settings, job) as events, running_agent(settings):
        assert settings.job_signing_key_file is not None  # signed: this is about the decoding, not the signature
        bad = b'{"not": "a job"}'
        await js.publish(names.job(POOL), bad, headers=JobSigner.from_file(settings.job_signing_key_file).headers(
            names.job(POOL), bad))
        await publish_job(js, settings, job)
        done = await events.wait_for_type("run.completed", "run.failed", "run.canceled")
    assert done.type == "run.completed"
    info = await js.consumer_info(names.jobs_stream, names.pool_consumer(POOL))
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_an_executor_crash_fails_the_run_with_cause_infrastructure(settings: Settings, bus) -> None:
    nc, js = bus
    registry = ExecutorRegistry(settings, {"container": f"{__name__}:CrashingExecutor"})
    job = container_job("true")
    async with RunEvents(js, settings, job) as events, running_agent(settings, registry=registry):
        await publish_job(js, settings, job)
        failed = await events.wait_for_type("run.completed", "run.failed", "run.canceled")
    assert failed.type == "run.failed" and failed.cause == FailureCause.INFRASTRUCTURE  # type: ignore[attr-defined]
    assert (failed.error_type, failed.message) == ("RuntimeError", "executor bug")  # type: ignore[attr-defined]
    assert events.log_lines() == ["about to crash"]


async def test_a_missing_executor_fails_the_run_with_cause_infrastructure(settings: Settings, bus) -> None:
    nc, js = bus
    registry = ExecutorRegistry(settings, {"container": lambda spec: "runner.executors.not_built_yet:Nope"})
    job = container_job("true", backend="docker", target="t1")
    async with RunEvents(js, settings, job) as events, running_agent(settings, registry=registry):
        await publish_job(js, settings, job)
        failed = await events.wait_for_type("run.completed", "run.failed", "run.canceled")
    assert failed.type == "run.failed" and failed.cause == FailureCause.INFRASTRUCTURE  # type: ignore[attr-defined]
    assert "not available on this runner" in failed.message  # type: ignore[attr-defined]


async def test_runner_heartbeats_say_what_the_runner_is_doing(settings: Settings, bus) -> None:
    nc, js = bus
    names = Subjects(settings.bus_prefix)
    job = container_job("echo started; sleep 600")
    async with RunEvents(js, settings, job) as events, running_agent(settings, slots=2) as agent:
        subject = names.runner_heartbeat(agent.runner_id)
        sub = await nc.subscribe(subject)
        first = event_decoder.decode((await sub.next_msg(timeout=3)).data)
        await publish_job(js, settings, job)
        await events.wait_for_type("run.started")
        while True:
            beat = event_decoder.decode((await sub.next_msg(timeout=3)).data)
            if beat.active_runs:  # type: ignore[attr-defined]
                break
        await request_cancel(nc, js, settings, job.run_id)
        await events.wait_for_type("run.canceled")
    assert isinstance(first, RunnerHeartbeat) and isinstance(beat, RunnerHeartbeat)
    assert (first.pool, first.slots, first.state) == (POOL, 2, "idle")
    assert "container" in first.kinds and first.devices[0].kind == "cpu"
    assert (beat.state, beat.active_runs) == ("busy", [job.run_id]) and beat.seq > first.seq
    last = event_decoder.decode((await js.get_last_msg(names.runners_stream, subject)).data)
    assert last.state == "stopped"  # type: ignore[attr-defined]


async def test_stopping_runner_lets_a_job_that_finishes_within_the_grace_period_complete(
    settings: Settings, bus
) -> None:
    nc, js = bus
    job = container_job("echo begin; sleep 0.7; echo end")
    async with RunEvents(js, settings, job) as events:
        async with running_agent(settings) as agent:
            await publish_job(js, settings, job)
            await events.wait_for_type("run.started")
            await agent.stop()
        done = await events.wait_for_type("run.completed", "run.failed", "run.canceled")
    assert done.type == "run.completed"
    assert events.log_lines() == ["begin", "end"]


async def test_stopping_runner_with_requeue_gives_the_job_back_for_the_next_attempt(settings: Settings, bus) -> None:
    nc, js = bus
    settings = msgspec.structs.replace(settings, shutdown_action="requeue", shutdown_grace_s=0.2)
    job = container_job('echo "attempt $TRAINFORGE_ATTEMPT"; [ "$TRAINFORGE_ATTEMPT" = 2 ] || sleep 600')
    async with RunEvents(js, settings, job) as events:
        async with running_agent(settings) as first:
            await publish_job(js, settings, job)
            await events.wait_for(lambda e: e.type == "run.log")
            await first.stop()
        requeued = await events.wait_for_type("run.requeued")
        assert requeued.attempt == 1 and requeued.reason == "runner shutdown"  # type: ignore[attr-defined]
        async with running_agent(settings):
            done = await events.wait_for_type("run.completed", "run.failed", "run.canceled", attempt=2)
    assert done.type == "run.completed"
    assert events.log_lines() == ["attempt 1", "attempt 2"]
    assert events.types(attempt=1)[-1] == "run.requeued"
    for attempt in (1, 2):
        assert [e.seq for e in events.of_attempt(attempt)] == list(range(1, len(events.of_attempt(attempt)) + 1))


async def test_a_runner_runs_as_many_jobs_at_once_as_it_has_slots(settings: Settings, bus) -> None:
    nc, js = bus
    jobs = [container_job("sleep 1") for _ in range(3)]
    watches = [RunEvents(js, settings, job) for job in jobs]
    for watch in watches:
        await watch.__aenter__()
    try:
        async with running_agent(settings, slots=2):
            for job in jobs:
                await publish_job(js, settings, job)
            await asyncio.gather(*(w.wait_for_type("run.started") for w in watches[:2]))
            await asyncio.sleep(0.3)
            assert sum(1 for w in watches if "run.started" in w.types()) == 2
            for watch in watches:
                assert (await watch.wait_for_type("run.completed", "run.failed")).type == "run.completed"
    finally:
        for watch in watches:
            await watch.__aexit__()
