"""One live attempt per run, whatever the bus or the runners do (docs/events.md, "One live attempt").

NATS is killed (SIGKILL) and restarted on the same port, data folder and auth config for twice the job ack
wait while a run runs: JetStream then redelivers the job, and the run's first attempt must keep it. A runner
killed with -9 takes its job's processes with it; restarted under the same id, it hands the run on at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import pytest

from shared.bus import ensure_topology
from shared.contracts import RunnerHeartbeat, event_decoder
from shared.secretfiles import secrets_dir
from shared.settings import Settings
from shared.subjects import Subjects
from tests.integration.runner_support import (
    TERMINAL,
    RunEvents,
    alive,
    bus_of,
    container_job,
    free_port,
    live_group_members,
    publish_job,
    reaped_processes,
    running_agent,
    start_runner_process,
    until,
)
from trainforge.busauth import BusCredentials
from trainforge.embedded import nats_server_binary

pytestmark = pytest.mark.slow

@dataclass
class RestartableNats:
    """A nats-server of this test only: killed and started again on the same port, store and config."""

    folder: Path
    config: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.folder / "nats.log", "ab")  # noqa: SIM115 - lives with the server
        self.process = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(self.config), "-a", "127.0.0.1", "-p", str(self.port),
             "-m", "-1", "-js", "-sd", str(self.folder / "js")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


@pytest.fixture
def own_nats(tmp_path: Path, bus_prefix: str) -> Iterator[tuple[RestartableNats, str]]:
    folder = secrets_dir(tmp_path / "nats")
    credentials = BusCredentials.ensure(folder)
    server = RestartableNats(folder, credentials.write_server_config(folder, bus_prefix), free_port())
    server.start()
    yield server, credentials.url_for(f"nats://127.0.0.1:{server.port}", "gateway")
    if server.process is not None and server.process.poll() is None:
        server.kill()


async def _outage(server: RestartableNats, seconds: float) -> None:
    """NATS down for `seconds` (the outage is the thing under test: a fixed length, not a wait)."""
    server.kill()
    await asyncio.sleep(seconds)
    server.start()


async def test_nats_killed_for_twice_the_ack_wait_during_a_container_run_runs_every_step_once(
    settings: Settings, own_nats: tuple[RestartableNats, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, url = own_nats
    settings = msgspec.structs.replace(settings, nats_url=url, attempt_hold_s=20.0)
    steps_file = tmp_path / "steps.txt"
    steps = 30
    job = container_job(
        f'for i in $(seq 1 {steps}); do echo "step $i attempt $TRAINFORGE_ATTEMPT" >> {steps_file}; '
        'echo "step $i"; sleep 0.4; done'
    )
    async with bus_of(url) as (_, js):
        await ensure_topology(js, settings)
        async with running_agent(settings, runner_id="holder"), running_agent(settings, runner_id="other"):
            async with RunEvents(js, settings, job) as events:
                await publish_job(js, settings, job)
                await events.wait_for(lambda e: e.type == "run.log" and len(events.log_lines()) >= 3, timeout=30)
            await _outage(server, 2 * settings.job_ack_wait_s)
            async with RunEvents(js, settings, job) as events:  # replays the run's events from the start
                done = await events.wait_for_type(*TERMINAL, timeout=steps * 0.4 + 60)
    lines = steps_file.read_text().splitlines()
    assert lines == [f"step {i} attempt 1" for i in range(1, steps + 1)], lines
    assert (done.type, done.attempt) == ("run.completed", 1)
    assert [e.attempt for e in events.events if e.type in ("run.claimed", "run.started")] == [1, 1]
    assert [e.type for e in events.events if e.type in TERMINAL] == ["run.completed"]
    print("redelivery seen:", [r.getMessage()[:120] for r in caplog.records
                               if "standing by" in r.getMessage() or "delivered again" in r.getMessage()])


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    with reaped_processes() as started:
        yield started


async def test_a_runner_killed_with_9_takes_its_jobs_processes_with_it_and_restarted_it_hands_the_run_on(
    settings: Settings, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    job = container_job(
        '[ "$TRAINFORGE_ATTEMPT" = 1 ] && { sleep 600 & echo $!; echo $$; wait; }; echo "done $TRAINFORGE_ATTEMPT"'
    )
    names = Subjects(settings.bus_prefix)
    pids: list[int] = []
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings)
        beats = await nc.subscribe(names.runner_heartbeat("r1"))
        async with RunEvents(js, settings, job) as events:
            first = start_runner_process(settings, "r1", tmp_path / "r1.log")
            processes.append(first)
            await publish_job(js, settings, job)
            await events.wait_for(lambda e: e.type == "run.log" and len(events.log_lines()) >= 2, timeout=30)
            pids = [int(line) for line in events.log_lines()[:2]]  # the child (sleep), then bash
            first.kill()
            first.wait()
            await until(lambda: not any(alive(pid) for pid in pids), timeout=5)
            assert not live_group_members(pids[1])
            second = start_runner_process(settings, "r1", tmp_path / "r1.log")
            processes.append(second)
            async with asyncio.timeout(30):  # the restarted runner's first beats name the run it no longer runs
                while True:
                    beat = event_decoder.decode((await beats.next_msg(timeout=None)).data)
                    if isinstance(beat, RunnerHeartbeat) and beat.released_runs:
                        break
            assert beat.released_runs == [job.run_id]
            # handed on at once (a nak), not after the ack wait: the next attempt (here or elsewhere) completes it
            done = await events.wait_for_type(*TERMINAL, timeout=settings.job_ack_wait_s * 3)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await nc.close()
    assert done.type == "run.completed" and done.attempt >= 2
    assert events.log_lines(attempt=done.attempt) == [f"done {done.attempt}"]


async def test_nats_killed_for_twice_the_ack_wait_during_a_yolo_training_trains_once_and_completes(
    settings: Settings, own_nats: tuple[RestartableNats, str], tmp_path: Path
) -> None:
    from shared.contracts import Job
    from shared.contracts.yolo import YoloTrainSpec
    from tests.datagen import make_detect_dataset
    from tests.integration.runner_support import POOL

    server, url = own_nats
    settings = msgspec.structs.replace(settings, nats_url=url, attempt_hold_s=20.0)
    data = make_detect_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=64)
    epochs = 3
    spec = YoloTrainSpec(model="yolov8n", data=str(data), epochs=epochs, batch=4, imgsz=64, device="cpu")
    job = Job(run_id=uuid.uuid4().hex, project_id="p1", pool=POOL, spec=spec)
    async with bus_of(url) as (_, js):
        await ensure_topology(js, settings)
        async with running_agent(settings, runner_id="holder"), running_agent(settings, runner_id="other"):
            async with RunEvents(js, settings, job) as events:
                await publish_job(js, settings, job)
                await events.wait_for_type("run.metrics", timeout=180)  # the first epoch ended
            await _outage(server, 2 * settings.job_ack_wait_s)
            async with RunEvents(js, settings, job) as events:
                done = await events.wait_for_type(*TERMINAL, timeout=300)
    assert (done.type, done.attempt) == ("run.completed", 1), done
    assert done.result["epochs_completed"] == epochs  # type: ignore[attr-defined]
    assert [e.attempt for e in events.events if e.type in ("run.claimed", "run.started")] == [1, 1]
    assert [e.epoch for e in events.events if e.type == "run.metrics"] == list(range(1, epochs + 1))
    assert [e.type for e in events.events if e.type in TERMINAL] == ["run.completed"]
