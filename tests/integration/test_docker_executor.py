"""The docker backend end to end, against a stand-in `docker` on PATH (tests/fakes/docker) whose "container"
is this machine: `docker exec` runs commands in their own process group, as a container would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import pytest

from runner.executors.base import Canceled, Completed, Failed, RunContext
from runner.executors.docker import DockerExecutor
from runner.executors.local import group_members
from runner.targets import Targets, parse_targets
from shared.bus import ensure_topology
from shared.contracts import ContainerSpec, FailureCause, Job, ResumeFrom
from shared.contracts.common import new_id
from shared.settings import Settings
from tests.fakes.recording_emitter import RecordingEmitter
from tests.integration.runner_support import (
    RunEvents,
    alive,
    container_job,
    publish_job,
    reaped_processes,
    start_runner_process,
    until,
)

FAKES = Path(__file__).resolve().parents[1] / "fakes"
TRAIN = FAKES / "train_llm.py"

pytestmark = pytest.mark.slow


@dataclass
class Bench:
    tmp: Path
    host_root: Path
    run_dir: Path
    docker_log: Path

    def targets(self, **overrides: object) -> Targets:
        target = {
            "container": "trainer",
            "workdir": str(self.tmp / "app"),
            "host_root": str(self.host_root),
            "output_dir": "outputs/{run_id}",
            "run_dir": str(self.run_dir),
            "poll_s": 0.1,
            "env": {"PYTHONUNBUFFERED": "1"},
            **overrides,
        }
        return parse_targets({"targets": {"llm": target}})

    def settings(self, **overrides: object) -> Settings:
        return Settings.from_mapping({"state_dir": self.tmp / "state", "cancel_grace_s": 0.5, **overrides})

    def context(
        self,
        settings: Settings,
        command: str,
        *,
        run_id: str | None = None,
        attempt: int = 1,
        device: str = "cpu",
        **spec: object,
    ) -> RunContext:
        resume = spec.pop("resume", None)
        run_id = run_id or new_id()
        fields = {"target": "llm", "dataset_name": "alpaca.json", "training_yaml_name": "train.yaml", **spec}
        job = Job(
            run_id=run_id,
            project_id="p1",
            pool="cpu",
            spec=ContainerSpec(start_command=command, backend="docker", **fields),  # type: ignore[arg-type]
            resume=resume,  # type: ignore[arg-type]
        )
        emitter = RecordingEmitter()
        ctx = RunContext(
            job=job,
            attempt=attempt,
            runner_id="runner-1",
            device=device,
            settings=settings,
            emit=emitter,
            workdir=self.tmp / "scratch" / run_id,
        )
        emitter.ctx = ctx
        return ctx

    def docker_calls(self) -> list[list[str]]:
        if not self.docker_log.exists():
            return []
        return [json.loads(line) for line in self.docker_log.read_text().splitlines()]

    def pgid_of(self, run_id: str, attempt: int = 1) -> int:
        return int((self.run_dir / run_id / f"attempt-{attempt}" / "job.pid").read_text().split()[0])


@pytest.fixture
def bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bench:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "docker"
    fake = shlex.quote(str(FAKES / "docker"))
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {fake} "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_CONTAINERS", "trainer")
    monkeypatch.setenv("FAKE_DOCKER_STOPPED", "stopped-trainer")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(tmp_path / "docker.jsonl"))
    host_root = tmp_path / "data"
    host_root.mkdir()
    (host_root / "alpaca.json").write_text('[{"instruction": "hi", "output": "hello"}]')
    (host_root / "train.yaml").write_text("model_name_or_path: tiny\nnum_train_epochs: 1\n")
    (tmp_path / "app").mkdir()
    run_dir, docker_log = tmp_path / "container-run", tmp_path / "docker.jsonl"
    return Bench(tmp=tmp_path, host_root=host_root, run_dir=run_dir, docker_log=docker_log)


def train_command(*extra: str, max_steps: int = 12, save_steps: int = 4, step_time: float = 0.05) -> str:
    return " ".join(
        [
            shlex.quote(sys.executable),
            shlex.quote(str(TRAIN)),
            "--output_dir {output_dir} --resume_from {resume_from}",
            f"--max_steps {max_steps} --save_steps {save_steps} --step_time {step_time}",
            *extra,
        ]
    )


async def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_training_run_reports_logs_metrics_progress_checkpoints_and_completes(bench: Bench):
    settings = bench.settings()
    ctx = bench.context(settings, train_command())
    emitter: RecordingEmitter = ctx.emit  # type: ignore[assignment]

    outcome = await DockerExecutor(settings, bench.targets()).run(ctx)

    assert isinstance(outcome, Completed), outcome
    output_dir = bench.host_root / "outputs" / ctx.run_id
    checkpoints = emitter.of("checkpoint")
    assert [c["step"] for c in checkpoints] == [4, 8, 12]
    assert [c["uri"] for c in checkpoints] == [str(output_dir / f"checkpoint-{n}") for n in (4, 8, 12)]
    assert all(c["size_bytes"] >= 1024 for c in checkpoints)
    assert outcome.result is not None and outcome.result["latest_checkpoint"] == checkpoints[-1]["uri"]
    assert outcome.result["metrics"]["train_loss"] == 0.8
    losses = [m["metrics"]["loss"] for m in emitter.of("metrics") if "loss" in m["metrics"]]
    assert losses[0] == 1.0 and len(losses) == 6
    assert any(m["metrics"].get("train_loss") == 0.8 for m in emitter.of("metrics"))
    progress = emitter.of("progress")
    assert progress[-1] == {"progress": 1.0, "step": 12, "total": 12, "epoch": None, "epochs": None}
    assert [p["progress"] for p in progress] == sorted(p["progress"] for p in progress)
    assert "{'loss': 1.0, 'grad_norm': 0.5, 'learning_rate': 2e-05, 'epoch': 0.17}" in emitter.log_text
    assert f"working directory: {bench.tmp / 'app'}" in emitter.log_text
    assert "CUDA_VISIBLE_DEVICES=\n" in emitter.log_text + "\n"  # a cpu runner passes no GPUs
    artifacts = {a["kind"]: a for a in emitter.of("artifact")}
    assert artifacts["config"]["uri"] == str(bench.host_root / "train.yaml")
    assert artifacts["tensorboard"]["name"] == "runs/run0/events.out.tfevents.1700000000.host.1.0"
    assert artifacts["tensorboard"]["meta"] == {"copied": False}
    assert not group_alive(bench.pgid_of(ctx.run_id))


async def test_host_runs_docker_with_an_argument_vector_and_the_command_stays_one_argument(bench: Bench):
    settings = bench.settings()
    marker = bench.tmp / "ran"
    command = f'echo "a b; c" && echo $((40 + 2)) > {shlex.quote(str(marker))}; echo {{output_dir}}'
    ctx = bench.context(settings, command)

    outcome = await DockerExecutor(settings, bench.targets()).run(ctx)

    assert isinstance(outcome, Completed), outcome
    assert marker.read_text() == "42\n"  # the shell ran inside the "container"
    start = next(argv for argv in bench.docker_calls() if argv[:2] == ["exec", "-i"])
    output_dir = bench.host_root / "outputs" / ctx.run_id
    assert start[-1] == command.replace("{output_dir}", str(output_dir))
    files = [str(bench.run_dir / ctx.run_id / "attempt-1" / f"job.{n}") for n in ("log", "pid", "exit")]
    assert start[-5:-1] == [str(bench.tmp / "app"), *files]
    assert "a b; c" in ctx.emit.log_text  # type: ignore[attr-defined]


async def test_cancel_ends_the_process_group_in_the_container_and_records_the_latest_checkpoint(bench: Bench):
    settings = bench.settings(cancel_grace_s=0.5)
    ctx = bench.context(settings, train_command("--stubborn_worker", max_steps=400, save_steps=3))
    emitter: RecordingEmitter = ctx.emit  # type: ignore[assignment]
    task = asyncio.create_task(DockerExecutor(settings, bench.targets()).run(ctx))
    await wait_for(lambda: len(emitter.of("checkpoint")) >= 1)
    pgid = bench.pgid_of(ctx.run_id)
    assert group_alive(pgid)

    ctx.cancel_requested.set()
    outcome = await asyncio.wait_for(task, 30)

    assert isinstance(outcome, Canceled), outcome
    assert outcome.reason == "requested"
    assert outcome.checkpoint_id == emitter.of("checkpoint")[-1]["checkpoint_id"]
    assert not group_alive(pgid)
    assert "SIGKILL" in emitter.log_text  # the worker ignored SIGTERM
    assert "received SIGTERM" in emitter.log_text
    signals = [argv[-2] for argv in bench.docker_calls() if "trainforge-signal" in argv]
    assert signals[0] == "TERM" and "KILL" in signals and signals[-1] == "0"
    assert all(argv[-1] == str(pgid) for argv in bench.docker_calls() if "trainforge-signal" in argv)


async def test_after_a_runner_crash_the_next_attempt_reattaches_to_the_running_command(bench: Bench):
    settings = bench.settings(runner_reattach="reattach")
    run_id = new_id()
    command = train_command(max_steps=40, save_steps=5, step_time=0.05)
    first = bench.context(settings, command, run_id=run_id)
    task = asyncio.create_task(DockerExecutor(settings, bench.targets()).run(first))
    await wait_for(lambda: len(first.emit.of("checkpoint")) >= 1)  # type: ignore[attr-defined]
    pgid = bench.pgid_of(run_id)
    task.cancel()  # the runner goes away without canceling the run
    with pytest.raises(asyncio.CancelledError):
        await task
    assert group_alive(pgid)

    second = bench.context(settings, command, run_id=run_id, attempt=2)
    outcome = await asyncio.wait_for(DockerExecutor(settings, bench.targets()).run(second), 30)

    assert isinstance(outcome, Completed), outcome
    emitter: RecordingEmitter = second.emit  # type: ignore[assignment]
    assert f"re-attaching to process group {pgid}" in emitter.log_text
    assert not (bench.run_dir / run_id / "attempt-2").exists()  # nothing started again
    first_steps = {c["step"] for c in first.emit.of("checkpoint")}  # type: ignore[attr-defined]
    second_steps = [c["step"] for c in emitter.of("checkpoint")]
    assert not first_steps & set(second_steps)
    assert sorted(first_steps | set(second_steps)) == [5, 10, 15, 20, 25, 30, 35, 40]
    assert emitter.of("progress")[-1]["step"] == 40
    assert "Resuming training" not in emitter.log_text
    assert not group_alive(pgid)


async def test_an_attempt_cancelled_in_restart_mode_ends_its_command_instead_of_letting_go(bench: Bench):
    settings = bench.settings(runner_reattach="restart")
    ctx = bench.context(settings, train_command("--stubborn_worker", max_steps=400, save_steps=3))
    task = asyncio.create_task(DockerExecutor(settings, bench.targets()).run(ctx))
    await wait_for(lambda: len(ctx.emit.of("checkpoint")) >= 1)  # type: ignore[attr-defined]
    pgid = bench.pgid_of(ctx.run_id)

    task.cancel()  # the runner goes away: closing the wrapper's stdin ends the group (the worker ignores TERM)
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not group_members(pgid)  # (killed members may linger as zombies until init reaps them)
    assert (bench.run_dir / ctx.run_id / "attempt-1" / "job.exit").exists()


async def test_after_a_runner_crash_restart_ends_the_old_command_and_resumes_from_a_checkpoint(bench: Bench):
    settings = bench.settings(runner_reattach="restart")
    run_id = new_id()
    command = train_command(max_steps=40, save_steps=5, step_time=0.05)
    first_settings = bench.settings(runner_reattach="reattach")  # lets go of its command when cancelled
    first = bench.context(first_settings, command, run_id=run_id)
    task = asyncio.create_task(DockerExecutor(first_settings, bench.targets()).run(first))
    await wait_for(lambda: len(first.emit.of("checkpoint")) >= 1)  # type: ignore[attr-defined]
    old_pgid = bench.pgid_of(run_id)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    latest = first.emit.of("checkpoint")[-1]  # type: ignore[attr-defined]

    second = bench.context(settings, command, run_id=run_id, attempt=2)
    second.resume = ResumeFrom(
        source_run_id=run_id, checkpoint_id=latest["checkpoint_id"], uri=latest["uri"], step=latest["step"]
    )
    task = asyncio.create_task(DockerExecutor(settings, bench.targets()).run(second))
    await wait_for(lambda: (bench.run_dir / run_id / "attempt-2" / "job.pid").exists())
    assert not group_alive(old_pgid)
    outcome = await asyncio.wait_for(task, 30)

    assert isinstance(outcome, Completed), outcome
    emitter: RecordingEmitter = second.emit  # type: ignore[assignment]
    assert f"ending process group {old_pgid}" in emitter.log_text
    assert f"Resuming training from {latest['uri']} at step {latest['step']}" in emitter.log_text
    assert emitter.of("checkpoint")[-1]["step"] == 40


async def test_resumed_run_sees_the_checkpoint_in_its_command_and_environment(bench: Bench):
    settings = bench.settings()
    first = bench.context(settings, train_command(max_steps=4, save_steps=2))
    assert isinstance(await DockerExecutor(settings, bench.targets()).run(first), Completed)
    checkpoint = first.emit.of("checkpoint")[0]  # type: ignore[attr-defined]

    resume = ResumeFrom(
        source_run_id=first.run_id, checkpoint_id=checkpoint["checkpoint_id"], uri=checkpoint["uri"], step=2
    )
    second = bench.context(settings, train_command(max_steps=6, save_steps=2), resume=resume)
    outcome = await DockerExecutor(settings, bench.targets()).run(second)

    assert isinstance(outcome, Completed), outcome
    text = second.emit.log_text  # type: ignore[attr-defined]
    assert f"TRAINFORGE_RESUME_FROM={checkpoint['uri']}" in text
    assert f"resume argument: {checkpoint['uri']!r}" in text
    assert f"Resuming training from {checkpoint['uri']} at step 2" in text
    assert [c["step"] for c in second.emit.of("checkpoint")] == [4, 6]  # type: ignore[attr-defined]


async def test_gpu_runner_passes_its_gpus_and_no_driver_means_no_gpu_samples(bench: Bench):
    settings = bench.settings()
    ctx = bench.context(settings, train_command(max_steps=2, save_steps=2), device="cuda:0")

    outcome = await DockerExecutor(settings, bench.targets(gpu_sample_s=0.05)).run(ctx)

    assert isinstance(outcome, Completed), outcome
    assert "CUDA_VISIBLE_DEVICES=0\n" in ctx.emit.log_text  # type: ignore[attr-defined]
    metrics = ctx.emit.of("metrics")  # type: ignore[attr-defined]
    assert not any(key.startswith("gpu.") for m in metrics for key in m["metrics"])


async def test_failing_command_fails_with_its_exit_status_and_last_output(bench: Bench):
    settings = bench.settings()
    ctx = bench.context(settings, train_command("--fail_at_step 3"))

    outcome = await DockerExecutor(settings, bench.targets()).run(ctx)

    assert isinstance(outcome, Failed), outcome
    assert (outcome.cause, outcome.exit_code) == (FailureCause.USER, 1)
    assert "exited with status 1" in outcome.message and "CUDA out of memory" in outcome.message


async def test_run_longer_than_its_timeout_is_stopped(bench: Bench):
    settings = bench.settings()
    ctx = bench.context(settings, train_command(max_steps=400), timeout_s=1.0)

    outcome = await asyncio.wait_for(DockerExecutor(settings, bench.targets()).run(ctx), 30)

    assert isinstance(outcome, Failed) and outcome.error_type == "Timeout", outcome
    assert not group_alive(bench.pgid_of(ctx.run_id))


@pytest.mark.parametrize(
    ("container", "reason"),
    [
        ("stopped-trainer", "container 'stopped-trainer' of target 'llm' is not running"),
        ("ghost", "Error: No such container: ghost"),
    ],
)
async def test_container_that_is_not_running_fails_the_run_with_the_reason(
    bench: Bench, container: str, reason: str
):
    settings = bench.settings()
    ctx = bench.context(settings, "echo never")

    outcome = await DockerExecutor(settings, bench.targets(container=container)).run(ctx)

    assert isinstance(outcome, Failed), outcome
    assert outcome.cause == FailureCause.INFRASTRUCTURE and reason in outcome.message
    assert not any(argv[0] == "exec" for argv in bench.docker_calls())


async def test_missing_docker_executable_fails_as_infrastructure(bench: Bench):
    settings = bench.settings()
    ctx = bench.context(settings, "echo never")

    outcome = await DockerExecutor(settings, bench.targets(docker=str(bench.tmp / "no-docker"))).run(ctx)

    assert isinstance(outcome, Failed) and outcome.cause == FailureCause.INFRASTRUCTURE, outcome
    assert "cannot run the docker executable" in outcome.message


async def test_unknown_target_is_refused_naming_it(bench: Bench):
    settings = bench.settings()
    ctx = bench.context(settings, "echo never", target="gpt-big")

    outcome = await DockerExecutor(settings, bench.targets()).run(ctx)

    assert isinstance(outcome, Failed) and outcome.cause == FailureCause.USER, outcome
    assert "unknown container target 'gpt-big'" in outcome.message and "llm" in outcome.message
    assert bench.docker_calls() == []


async def test_missing_dataset_and_training_yaml_fail_fast_naming_each(bench: Bench):
    settings = bench.settings()
    ctx = bench.context(settings, "echo never", dataset_name="gone.json", training_yaml_name="gone.yaml")

    outcome = await DockerExecutor(settings, bench.targets()).run(ctx)

    assert isinstance(outcome, Failed) and outcome.cause == FailureCause.USER, outcome
    expected = "missing under container target 'llm': dataset 'gone.json', training YAML 'gone.yaml'"
    assert outcome.message == expected
    assert bench.docker_calls() == []


async def test_copied_artifacts_respect_the_size_limit(bench: Bench):
    settings = bench.settings()
    ctx = bench.context(settings, train_command(max_steps=2, save_steps=2))

    targets = bench.targets(copy_artifacts=True, artifact_max_bytes=40)
    outcome = await DockerExecutor(settings, targets).run(ctx)

    assert isinstance(outcome, Completed), outcome
    artifacts = {a["kind"]: a for a in ctx.emit.of("artifact")}  # type: ignore[attr-defined]
    config = artifacts["config"]
    assert config["meta"] == {"copied": False, "note": config["meta"]["note"]}  # the YAML is 44 bytes
    assert "over the limit of 40" in config["meta"]["note"]
    assert artifacts["tensorboard"]["meta"]["copied"] is False

    ctx2 = bench.context(settings, train_command(max_steps=2, save_steps=2))
    await DockerExecutor(settings, bench.targets(copy_artifacts=True)).run(ctx2)
    copied = {a["kind"]: a for a in ctx2.emit.of("artifact")}  # type: ignore[attr-defined]
    assert copied["config"]["uri"] == str(settings.artifacts_dir / ctx2.run_id / "train.yaml")
    assert Path(copied["config"]["uri"]).read_text() == (bench.host_root / "train.yaml").read_text()
    assert copied["tensorboard"]["meta"] == {"copied": True}



async def test_a_runner_killed_with_9_takes_the_command_in_the_container_with_it(
    bench: Bench, settings: Settings
) -> None:
    """The host-side `docker exec` client outlives a runner killed with -9, and so would the command in the
    container: the wrapper sees the end of its stdin (the runner's end of the pipe closed) and ends it."""
    targets = bench.tmp / "targets.toml"
    targets.write_text(
        f'[targets.llm]\ncontainer = "trainer"\nworkdir = "{bench.tmp / "app"}"\n'
        f'host_root = "{bench.host_root}"\nrun_dir = "{bench.run_dir}"\n'
    )
    settings = msgspec.structs.replace(settings, runner_targets_file=targets, runner_reattach="reattach")
    job = container_job("sleep 600 & echo $!; echo $$; wait", backend="docker", target="llm")
    pids: list[int] = []
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings)
        with reaped_processes() as started:
            async with RunEvents(js, settings, job) as events:
                runner = start_runner_process(settings, "docker-r1", bench.tmp / "runner.log")
                started.append(runner)
                await publish_job(js, settings, job)
                await events.wait_for(lambda e: e.type == "run.log" and len(events.log_lines()) >= 2, timeout=30)
            pids = [int(line) for line in events.log_lines()[:2]]  # the child (sleep), then bash
            runner.kill()
            runner.wait()
            await until(lambda: not any(alive(pid) for pid in pids), timeout=settings.cancel_grace_s + 5)
            assert not group_members(pids[1])
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await nc.close()
