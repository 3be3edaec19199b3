"""Runners as separate processes: killed with SIGKILL (no job lost) or stopped with SIGTERM (graceful)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import msgspec
import nats
import pytest

from shared.bus import ensure_topology
from shared.contracts import RunCheckpoint
from shared.settings import Settings
from shared.subjects import Subjects
from tests.integration.runner_support import (
    RunEvents,
    container_job,
    live_group_members,
    publish_job,
    running_agent,
    start_runner_process,
)

TERMINAL = ("run.completed", "run.failed", "run.canceled")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@pytest.fixture
def processes(tmp_path: Path):
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_a_killed_runner_loses_no_job_the_next_runner_resumes_it_as_attempt_2(
    settings: Settings, tmp_path: Path, processes: list
) -> None:
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await ensure_topology(js, settings)
    job = container_job(
        'echo "attempt $TRAINFORGE_ATTEMPT from [$TRAINFORGE_RESUME_FROM]"; '
        '[ "$TRAINFORGE_ATTEMPT" = 1 ] && { echo $$; sleep 600; }; echo done'
    )
    pgid = None
    try:
        async with RunEvents(js, settings, job) as events:
            first = start_runner_process(settings, "victim", tmp_path / "victim.log")
            processes.append(first)
            await publish_job(js, settings, job)
            await events.wait_for(lambda e: e.type == "run.log" and len(events.log_lines()) >= 2, timeout=15)
            pgid = int(events.log_lines()[1])
            first.kill()  # SIGKILL: no final event, no ack
            first.wait()
            # What the executor of attempt 1 would have recorded before the runner died.
            names = Subjects(settings.bus_prefix)
            checkpoint = RunCheckpoint(run_id=job.run_id, project_id=job.project_id, attempt=1, runner_id="victim",
                                       seq=100, uri="/ckpt/attempt1.pt")
            await js.publish(names.run_event(job.project_id, job.run_id, checkpoint.type),
                             msgspec.json.encode(checkpoint), headers={"Nats-Msg-Id": checkpoint.msg_id})
            async with running_agent(settings, runner_id="survivor"):  # waits for the victim's claim to lapse
                done = await events.wait_for_type(*TERMINAL, timeout=15 + settings.attempt_hold_s + 15)
                started = await events.wait_for_type("run.started", attempt=2)
    finally:
        if pgid:
            _kill_group(pgid)  # in case the assertion below fails: leave nothing running
        await nc.close()
    assert (done.type, done.attempt, done.runner_id) == ("run.completed", 2, "survivor")
    assert live_group_members(pgid) == []  # attempt 2 ended what the dead runner left running on this host
    assert started.resumed_from == checkpoint.checkpoint_id  # type: ignore[attr-defined]
    assert events.log_lines(attempt=2) == ["attempt 2 from [/ckpt/attempt1.pt]", "done"]
    assert "run.canceled" not in events.types() and "run.failed" not in events.types()


async def test_sigterm_cancels_a_job_still_running_after_the_grace_period_and_the_runner_exits_0(
    settings: Settings, tmp_path: Path, processes: list
) -> None:
    settings = msgspec.structs.replace(settings, shutdown_grace_s=0.5)
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await ensure_topology(js, settings)
    job = container_job("echo $$; sleep 600 & sleep 600; wait")
    try:
        async with RunEvents(js, settings, job) as events:
            runner = start_runner_process(settings, "stopping", tmp_path / "stopping.log")
            processes.append(runner)
            await publish_job(js, settings, job)
            await events.wait_for(lambda e: e.type == "run.log" and bool(events.log_lines()), timeout=15)
            pgid = int(events.log_lines()[0])
            started = time.monotonic()
            runner.send_signal(signal.SIGTERM)
            done = await events.wait_for_type(*TERMINAL, timeout=10)
            assert time.monotonic() - started < 5
        assert runner.wait(timeout=10) == 0, (tmp_path / "stopping.log").read_text()
    finally:
        await nc.close()
    assert done.type == "run.canceled" and done.reason == "runner shutdown"  # type: ignore[attr-defined]
    assert live_group_members(pgid) == []
