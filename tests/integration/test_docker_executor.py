"""The docker backend end to end against a real Docker engine (tests/docker_engine.py: a private dockerd, a
BusyBox + bash image without setsid, GNU tail or procps, and a Trainer-like script `train-llm` in it). Each test
gets its own container (`--network none`), the test's data folder mounted at another path inside (`/data`), so
the host-root/container-root mapping is exercised; process groups are checked inside the container."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import psutil
import pytest

from runner.executors.base import Canceled, Completed, Failed, RunContext
from runner.executors.docker import DockerExecutor
from runner.targets import Targets, parse_targets
from shared.bus import ensure_topology
from shared.contracts import ContainerSpec, FailureCause, Job, ResumeFrom
from shared.contracts.common import new_id
from shared.settings import Settings
from tests.docker_engine import DockerEngine
from tests.fakes.recording_emitter import RecordingEmitter
from tests.integration.runner_support import (
    TERMINAL,
    RunEvents,
    container_job,
    publish_job,
    reaped_processes,
    request_cancel,
    start_runner_process,
    until,
)

pytestmark = pytest.mark.slow
RUN_DIR = "/tmp/trainforge"


@dataclass
class Bench:
    tmp: Path
    host_root: Path
    engine: DockerEngine
    container: str
    docker_log: Path

    def targets(self, *, tap: bool = False, **overrides: object) -> Targets:
        """Target `llm`: this test's container; with `tap`, docker runs through a shim that records each
        argument vector (`docker_calls`) and then runs the real client."""
        target = {
            "container": self.container,
            "workdir": "/app",
            "host_root": str(self.host_root),
            "container_root": "/data",
            "output_dir": "outputs/{run_id}",
            "run_dir": RUN_DIR,
            "poll_s": 0.1,
            **({"docker": str(self.tap())} if tap else {}),
            **overrides,
        }
        return parse_targets({"targets": {"llm": target}})

    def targets_file(self) -> Path:
        path = self.tmp / "targets.toml"
        path.write_text(
            f'[targets.llm]\ncontainer = "{self.container}"\nworkdir = "/app"\nhost_root = "{self.host_root}"\n'
            f'container_root = "/data"\noutput_dir = "outputs/{{run_id}}"\nrun_dir = "{RUN_DIR}"\npoll_s = 0.1\n'
        )
        return path

    def tap(self) -> Path:
        shim = self.tmp / "docker-tap"
        if not shim.exists():
            shim.write_text(
                f"#!{sys.executable} -I\nimport json, os, sys\n"
                f"with open({str(self.docker_log)!r}, 'a') as f: f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
                f"os.execv({self.engine.docker!r}, [{self.engine.docker!r}, *sys.argv[1:]])\n"
            )
            shim.chmod(0o755)
        return shim

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
        text = self.engine.read(self.container, f"{RUN_DIR}/{run_id}/attempt-{attempt}/job.pid")
        assert text, f"no pid file of attempt {attempt} of {run_id}"
        return int(text.split()[0])

    def has_attempt(self, run_id: str, attempt: int) -> bool:
        return self.engine.read(self.container, f"{RUN_DIR}/{run_id}/attempt-{attempt}/job.pid") is not None

    def group_alive(self, pgid: int) -> bool:
        return self.engine.group_alive(self.container, pgid)

    def alive(self, pid: int) -> bool:
        return self.engine.alive(self.container, pid)

    def processes(self) -> list[str]:
        """`pid command` of every process in the container but its init and sleeper."""
        out = self.engine.sh(self.container, "ps -o pid,args").stdout.splitlines()[1:]
        return [line.strip() for line in out if "docker-init" not in line and "sleep infinity" not in line
                and " ps -o" not in line and "bash -c ps" not in line]


@pytest.fixture
def bench(docker_engine: DockerEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          request: pytest.FixtureRequest):
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    host_root = tmp_path / "data"
    host_root.mkdir()
    (host_root / "alpaca.json").write_text('[{"instruction": "hi", "output": "hello"}]')
    (host_root / "train.yaml").write_text("model_name_or_path: tiny\nnum_train_epochs: 1\n")
    with docker_engine.container(request.node.name, {host_root: "/data"}) as container:
        yield Bench(tmp=tmp_path, host_root=host_root, engine=docker_engine, container=container,
                    docker_log=tmp_path / "docker.jsonl")


def train_command(*extra: str, max_steps: int = 12, save_steps: int = 4, step_time: float = 0.05) -> str:
    return " ".join(
        [
            "train-llm --output_dir {output_dir} --resume_from_checkpoint {resume_from}",
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


async def test_training_run_reports_logs_metrics_progress_checkpoints_and_completes(bench: Bench):
    settings = bench.settings()
    command = "wc -c < {dataset} && cat {training_yaml} && " + train_command()
    ctx = bench.context(settings, command)
    emitter: RecordingEmitter = ctx.emit  # type: ignore[assignment]

    outcome = await DockerExecutor(settings, bench.targets()).run(ctx)

    assert isinstance(outcome, Completed), outcome
    output_dir = bench.host_root / "outputs" / ctx.run_id
    checkpoints = emitter.of("checkpoint")
    assert [c["step"] for c in checkpoints] == [4, 8, 12]
    assert [c["uri"] for c in checkpoints] == [str(output_dir / f"checkpoint-{n}") for n in (4, 8, 12)]
    assert [c["meta"]["container_path"] for c in checkpoints] == [
        f"/data/outputs/{ctx.run_id}/checkpoint-{n}" for n in (4, 8, 12)]
    assert all(c["size_bytes"] >= 1024 for c in checkpoints)
    assert outcome.result is not None and outcome.result["latest_checkpoint"] == checkpoints[-1]["uri"]
    assert outcome.result["metrics"]["train_loss"] == 0.8
    losses = [m["metrics"]["loss"] for m in emitter.of("metrics") if "loss" in m["metrics"]]
    assert losses[0] == 1.0 and len(losses) == 6
    assert any(m["metrics"].get("learning_rate") == 2e-05 for m in emitter.of("metrics"))
    assert any(m["metrics"].get("train_loss") == 0.8 for m in emitter.of("metrics"))
    progress = emitter.of("progress")
    assert progress[-1] == {"progress": 1.0, "step": 12, "total": 12, "epoch": None, "epochs": None}
    assert [p["progress"] for p in progress] == sorted(p["progress"] for p in progress)
    lines = emitter.log_text.splitlines()
    assert "{'loss': 1.0000, 'grad_norm': 0.5, 'learning_rate': 2e-05, 'epoch': 0.17}" in lines
    assert "num_train_epochs: 1" in lines and "42" in lines  # the YAML and the dataset, read at /data
    assert "working directory: /app" in lines
    assert "CUDA_VISIBLE_DEVICES=" in lines  # a cpu runner passes no GPUs
    artifacts = {a["kind"]: a for a in emitter.of("artifact")}
    assert artifacts["config"]["uri"] == str(bench.host_root / "train.yaml")
    assert artifacts["tensorboard"]["name"] == "runs/run0/events.out.tfevents.1700000000.host.1.0"
    assert artifacts["tensorboard"]["meta"] == {"copied": False}
    assert not bench.group_alive(bench.pgid_of(ctx.run_id))
    assert bench.processes() == []


async def test_key_value_lines_and_the_targets_patterns_are_metrics(bench: Bench):
    settings = bench.settings()
    command = "echo 'step=3 loss=0.25 lr=1e-4'; echo 'eval accuracy: 0.91'"
    ctx = bench.context(settings, command)

    targets = bench.targets(metric_patterns=[r"eval accuracy: (?P<eval_acc>[0-9.]+)"])
    outcome = await DockerExecutor(settings, targets).run(ctx)

    assert isinstance(outcome, Completed), outcome
    metrics = [m["metrics"] for m in ctx.emit.of("metrics")]  # type: ignore[attr-defined]
    assert {"step": 3.0, "loss": 0.25, "lr": 1e-4}.items() <= metrics[0].items()
    assert {"eval_acc": 0.91} in metrics


async def test_host_runs_docker_with_an_argument_vector_and_the_command_stays_one_argument(bench: Bench):
    settings = bench.settings()
    command = 'echo "a b; c" && echo $((40 + 2)) > /data/ran; echo {output_dir}'
    ctx = bench.context(settings, command)

    outcome = await DockerExecutor(settings, bench.targets(tap=True)).run(ctx)

    assert isinstance(outcome, Completed), outcome
    assert (bench.host_root / "ran").read_text() == "42\n"  # the shell ran inside the container
    start = next(argv for argv in bench.docker_calls() if argv[:2] == ["exec", "-i"])
    assert start[-1] == command.replace("{output_dir}", f"/data/outputs/{ctx.run_id}")
    files = [f"{RUN_DIR}/{ctx.run_id}/attempt-1/job.{n}" for n in ("log", "pid", "exit")]
    assert start[-5:-1] == ["/app", *files]
    assert "a b; c" in ctx.emit.log_text  # type: ignore[attr-defined]
    assert f"/data/outputs/{ctx.run_id}" in ctx.emit.log_text.splitlines()  # type: ignore[attr-defined]


async def test_stdout_and_stderr_lines_are_log_events(bench: Bench):
    settings = bench.settings()
    ctx = bench.context(settings, "echo to-out; echo to-err >&2; printf 'no newline at the end'")

    outcome = await DockerExecutor(settings, bench.targets()).run(ctx)

    assert isinstance(outcome, Completed), outcome
    lines = ctx.emit.log_text.splitlines()  # type: ignore[attr-defined]
    assert {"to-out", "to-err", "no newline at the end"} <= set(lines)


async def test_cancel_ends_the_process_group_in_the_container_and_records_the_latest_checkpoint(bench: Bench):
    settings = bench.settings(cancel_grace_s=0.5)
    ctx = bench.context(settings, train_command("--stubborn_worker", max_steps=400, save_steps=3))
    emitter: RecordingEmitter = ctx.emit  # type: ignore[assignment]
    task = asyncio.create_task(DockerExecutor(settings, bench.targets(tap=True)).run(ctx))
    await wait_for(lambda: len(emitter.of("checkpoint")) >= 1)
    pgid = bench.pgid_of(ctx.run_id)
    assert bench.group_alive(pgid)

    ctx.cancel_requested.set()
    canceled_at = time.monotonic()
    outcome = await asyncio.wait_for(task, 30)
    took = time.monotonic() - canceled_at

    assert isinstance(outcome, Canceled), outcome
    assert outcome.reason == "requested"
    assert outcome.checkpoint_id == emitter.of("checkpoint")[-1]["checkpoint_id"]
    assert not bench.group_alive(pgid)
    assert bench.processes() == []
    assert "SIGKILL" in emitter.log_text  # the worker ignored SIGTERM
    assert "received SIGTERM" in emitter.log_text
    signals = [argv[-2] for argv in bench.docker_calls() if "trainforge-signal" in argv]
    assert signals[0] == "TERM" and "KILL" in signals and signals[-1] == "0"
    assert all(argv[-1] == str(pgid) for argv in bench.docker_calls() if "trainforge-signal" in argv)
    print(f"cancel to group gone in the container (grace 0.5 s, SIGKILL needed): {took:.2f}s")


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
    assert bench.group_alive(pgid)

    second = bench.context(settings, command, run_id=run_id, attempt=2)
    outcome = await asyncio.wait_for(DockerExecutor(settings, bench.targets()).run(second), 30)

    assert isinstance(outcome, Completed), outcome
    emitter: RecordingEmitter = second.emit  # type: ignore[assignment]
    assert f"re-attaching to process group {pgid}" in emitter.log_text
    assert not bench.has_attempt(run_id, 2)  # nothing started again
    first_steps = {c["step"] for c in first.emit.of("checkpoint")}  # type: ignore[attr-defined]
    second_steps = [c["step"] for c in emitter.of("checkpoint")]
    assert not first_steps & set(second_steps)
    assert sorted(first_steps | set(second_steps)) == [5, 10, 15, 20, 25, 30, 35, 40]
    assert emitter.of("progress")[-1]["step"] == 40
    assert "Resuming training" not in emitter.log_text
    assert not bench.group_alive(pgid)


async def test_an_attempt_cancelled_in_restart_mode_ends_its_command_instead_of_letting_go(bench: Bench):
    settings = bench.settings(runner_reattach="restart")
    ctx = bench.context(settings, train_command("--stubborn_worker", max_steps=400, save_steps=3))
    task = asyncio.create_task(DockerExecutor(settings, bench.targets()).run(ctx))
    await wait_for(lambda: len(ctx.emit.of("checkpoint")) >= 1)  # type: ignore[attr-defined]
    pgid = bench.pgid_of(ctx.run_id)

    task.cancel()  # the runner goes away: closing the wrapper's stdin ends the group (the worker ignores TERM)
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not bench.group_alive(pgid)
    assert bench.processes() == []
    assert bench.engine.read(bench.container, f"{RUN_DIR}/{ctx.run_id}/attempt-1/job.exit") is not None


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
    outcome = await asyncio.wait_for(DockerExecutor(settings, bench.targets()).run(second), 30)

    assert isinstance(outcome, Completed), outcome
    emitter: RecordingEmitter = second.emit  # type: ignore[assignment]
    text = emitter.log_text
    assert text.index(f"ending process group {old_pgid}") < text.index("docker exec into")
    assert not bench.group_alive(old_pgid)
    inside = latest["uri"].replace(str(bench.host_root), "/data")
    assert f"Resuming training from {inside} at step {latest['step']}" in text
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
    inside = f"/data/outputs/{first.run_id}/checkpoint-2"
    assert checkpoint["meta"]["container_path"] == inside
    lines = second.emit.log_text.splitlines()  # type: ignore[attr-defined]
    assert f"TRAINFORGE_RESUME_FROM={inside}" in lines
    assert f"resume argument: '{inside}'" in lines
    assert f"Resuming training from {inside} at step 2" in lines
    assert [c["step"] for c in second.emit.of("checkpoint")] == [4, 6]  # type: ignore[attr-defined]


async def test_gpu_runner_passes_its_gpus_and_no_driver_means_no_gpu_samples(bench: Bench):
    settings = bench.settings()
    ctx = bench.context(settings, train_command(max_steps=2, save_steps=2), device="cuda:0,1")

    outcome = await DockerExecutor(settings, bench.targets(gpu_sample_s=0.05)).run(ctx)

    assert isinstance(outcome, Completed), outcome
    assert "CUDA_VISIBLE_DEVICES=0,1" in ctx.emit.log_text.splitlines()  # type: ignore[attr-defined]
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
    assert not bench.group_alive(bench.pgid_of(ctx.run_id))


async def test_container_that_is_stopped_or_missing_fails_the_run_as_infrastructure_with_the_reason(
    bench: Bench,
):
    settings = bench.settings()
    bench.engine.cli("stop", "-t", "0", bench.container)

    stopped = await DockerExecutor(settings, bench.targets(tap=True)).run(bench.context(settings, "echo never"))
    missing = await DockerExecutor(settings, bench.targets(container="tf-ghost")).run(
        bench.context(settings, "echo never"))

    assert isinstance(stopped, Failed) and stopped.cause == FailureCause.INFRASTRUCTURE, stopped
    assert f"container {bench.container!r} of target 'llm' is not running" in stopped.message
    assert isinstance(missing, Failed) and missing.cause == FailureCause.INFRASTRUCTURE, missing
    assert "container 'tf-ghost' of target 'llm' is not available" in missing.message
    assert "No such container: tf-ghost" in missing.message
    assert not any(argv[0] == "exec" for argv in bench.docker_calls())


async def test_a_container_stopped_while_the_command_runs_fails_the_run_as_infrastructure(bench: Bench):
    settings = bench.settings()
    ctx = bench.context(settings, train_command(max_steps=400, save_steps=2))
    task = asyncio.create_task(DockerExecutor(settings, bench.targets()).run(ctx))
    await wait_for(lambda: len(ctx.emit.of("checkpoint")) >= 1)  # type: ignore[attr-defined]

    stop = await asyncio.create_subprocess_exec(bench.engine.docker, "kill", bench.container,
                                                stdout=asyncio.subprocess.DEVNULL)
    await stop.wait()
    outcome = await asyncio.wait_for(task, 30)

    assert isinstance(outcome, Failed) and outcome.cause == FailureCause.INFRASTRUCTURE, outcome
    assert outcome.error_type == "ContainerUnavailable"
    assert f"container {bench.container!r} of target 'llm' is not running" in outcome.message


async def test_missing_docker_executable_fails_as_infrastructure(bench: Bench):
    settings = bench.settings()
    ctx = bench.context(settings, "echo never")

    outcome = await DockerExecutor(settings, bench.targets(docker=str(bench.tmp / "no-docker"))).run(ctx)

    assert isinstance(outcome, Failed) and outcome.cause == FailureCause.INFRASTRUCTURE, outcome
    assert "cannot run the docker executable" in outcome.message


async def test_unknown_target_is_refused_naming_it(bench: Bench):
    settings = bench.settings()
    ctx = bench.context(settings, "echo never", target="gpt-big")

    outcome = await DockerExecutor(settings, bench.targets(tap=True)).run(ctx)

    assert isinstance(outcome, Failed) and outcome.cause == FailureCause.USER, outcome
    assert "unknown container target 'gpt-big'" in outcome.message and "llm" in outcome.message
    assert bench.docker_calls() == []


async def test_missing_dataset_and_training_yaml_fail_fast_naming_each(bench: Bench):
    settings = bench.settings()
    ctx = bench.context(settings, "echo never", dataset_name="gone.json", training_yaml_name="gone.yaml")

    outcome = await DockerExecutor(settings, bench.targets(tap=True)).run(ctx)

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


def docker_clients(process: psutil.Process) -> list[psutil.Process]:
    return [child for child in process.children(recursive=True) if "exec" in child.cmdline()[1:3]]


@pytest.mark.parametrize("killed", ["runner", "runner and docker client"])
async def test_a_runner_killed_with_9_takes_the_command_in_the_container_with_it_and_the_next_attempt_resumes(
    bench: Bench, settings: Settings, killed: str
) -> None:
    """The command in the container outlives its host-side `docker exec` client, and the client outlives a runner
    killed with -9. Either way the exec's stdin ends (the runner's end of the pipe closes; or the daemon closes
    it when its client is gone) and the wrapper ends the command's group. The runner's next process runs the
    next attempt: one copy of the command at a time, resumed from the last checkpoint."""
    settings = msgspec.structs.replace(settings, runner_targets_file=bench.targets_file(), runner_reattach="reattach")
    command = "echo $$ >> /data/pids; " + train_command(max_steps=400, save_steps=2, step_time=0.05)
    job = container_job(command, backend="docker", target="llm")
    pids = bench.host_root / "pids"
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings)
        with reaped_processes() as started:
            async with RunEvents(js, settings, job) as events:
                runner = start_runner_process(settings, "docker-r1", bench.tmp / "runner.log")
                started.append(runner)
                await publish_job(js, settings, job)
                await events.wait_for_type("run.checkpoint", timeout=60)
                first = int(pids.read_text().split()[0])
                assert bench.alive(first)
                victims = [psutil.Process(runner.pid)]
                if killed == "runner and docker client":
                    victims += docker_clients(victims[0])
                    assert len(victims) == 2
                for victim in victims:
                    victim.kill()
                runner.wait()
                await until(lambda: not bench.alive(first), timeout=settings.cancel_grace_s + 10)
                await until(lambda: bench.processes() == [], timeout=10)  # the wrapper, too, winds down

                again = start_runner_process(settings, "docker-r1", bench.tmp / "runner.log")
                started.append(again)
                claimed = await events.wait_for(lambda e: e.type == "run.started" and e.attempt > 1, timeout=60)
                await events.wait_for(lambda e: e.type == "run.checkpoint" and e.attempt == claimed.attempt,
                                      timeout=60)
                await request_cancel(nc, js, settings, job.run_id)
                done = await events.wait_for_type(*TERMINAL, timeout=30)
        assert done.type == "run.canceled", done
        assert claimed.resumed_from is not None  # type: ignore[attr-defined]
        resumed = [line for line in events.log_lines(attempt=claimed.attempt) if "Resuming training" in line]
        assert len(resumed) == 1, events.log_lines(attempt=claimed.attempt)
        assert len(pids.read_text().split()) == 2  # attempt 1, then attempt 2: one copy at a time
        assert bench.processes() == []
    finally:
        await nc.close()


class DetachedStage:
    """Two runner ids on one bus (their "hosts" share this test's container), reattach mode and requeue stops,
    and a docker run whose command loops until a file appears. `leave_running()` starts it on runner "docker-a"
    and stops that runner: the command keeps running, its claim is marked detached."""

    def __init__(self, bench: Bench, settings: Settings, js: nats.js.JetStreamContext) -> None:
        from runner.agent import RunnerAgent

        self.bench = bench
        self.settings = msgspec.structs.replace(
            settings, runner_targets_file=bench.targets_file(), runner_reattach="reattach", shutdown_action="requeue",
            shutdown_grace_s=0.1, job_max_deliver=30, attempt_hold_s=2.0,
        )
        self.js = js
        root = bench.host_root
        self.pids, self.steps, self.finish = root / "pids", root / "steps", root / "finish"
        self.job = container_job(
            "echo $$ >> /data/pids; i=0; while [ ! -e /data/finish ]; do i=$((i+1)); "
            'echo "step $i" >> /data/steps; echo "step $i"; sleep 0.05; done; echo finished',
            backend="docker", target="llm",
        )
        self.agents: list[tuple[RunnerAgent, asyncio.Task[None]]] = []
        self.pid: int | None = None

    async def start(self, runner_id: str):  # noqa: ANN201 - a RunnerAgent
        from runner.agent import RunnerAgent
        from tests.integration.runner_support import POOL

        agent = RunnerAgent(self.settings, POOL, runner_id=runner_id)
        self.agents.append((agent, asyncio.create_task(agent.run())))
        await asyncio.wait_for(agent.ready.wait(), 30)
        return agent

    def lines(self, path: Path) -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    def alive(self) -> bool:
        assert self.pid is not None
        return self.bench.alive(self.pid)

    async def claim(self):  # noqa: ANN201 - the run's ClaimRecord, or None once deleted
        from nats.js.errors import KeyNotFoundError

        from runner.claims import ClaimRecord
        from shared.subjects import Subjects

        claims = await self.js.key_value(Subjects(self.settings.bus_prefix).attempts_bucket)
        try:
            return msgspec.json.decode((await claims.get(self.job.run_id)).value or b"", type=ClaimRecord)
        except KeyNotFoundError:
            return None

    async def leave_running(self, events: RunEvents) -> None:
        first = await self.start("docker-a")
        await publish_job(self.js, self.settings, self.job)
        await until(lambda: len(self.lines(self.steps)) >= 3, timeout=30)
        self.pid = int(self.lines(self.pids)[0])
        await asyncio.wait_for(first.stop(), 30)
        await self.agents[0][1]
        assert self.alive()  # left running
        record = await self.claim()
        assert record.detached and record.runner_id == "docker-a" and record.instance == first.instance
        assert (await events.wait_for_type("run.requeued", attempt=1)).reason == "runner shutdown"  # type: ignore[attr-defined]

    async def stand_by(self, caplog: pytest.LogCaptureFixture):  # noqa: ANN201 - the standing-by RunnerAgent
        """Another host's runner gets the redelivery and starts nothing, however long the claim is silent."""
        other = await self.start("docker-b")
        await until(lambda: "claim detached" in caplog.text, timeout=30)
        seen = len(self.lines(self.steps))
        await until(lambda: len(self.lines(self.steps)) >= seen + 10, timeout=30)  # silent claim: no takeover
        assert self.job.run_id in other.active_runs
        assert self.lines(self.pids) == [str(self.pid)]
        assert (await self.claim()).detached
        return other

    async def close(self) -> None:
        for agent, task in reversed(self.agents):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(agent.stop(), 30)
            if not task.done():  # a stop that hangs fails the test loudly instead of hanging it
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def detached_stage(bench: Bench, settings: Settings):  # noqa: ANN201
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await ensure_topology(js, settings)
    stage = DetachedStage(bench, settings, js)
    try:
        async with RunEvents(js, stage.settings, stage.job) as events:
            yield stage, events, nc
    finally:
        await stage.close()
        await nc.close()


async def test_a_command_left_running_by_a_requeue_stop_runs_once_another_runner_stands_by_its_owner_reattaches(
    bench: Bench, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """shutdown_action=requeue in reattach mode: the stopping runner lets go of the command (it keeps running)
    and marks the claim detached; a runner of another id that gets the redelivery stands by however long the
    claim is silent (no second copy); the same runner id, restarted, takes the run back and reattaches."""
    caplog.set_level("INFO", logger="runner")
    async with detached_stage(bench, settings) as (stage, events, _):
        await stage.leave_running(events)
        await stage.stand_by(caplog)
        back = await stage.start("docker-a")  # the same runner id again: adopts the claim, B hands the job back
        async with asyncio.timeout(60):
            while (record := await stage.claim()).instance != back.instance or record.detached:
                await asyncio.sleep(0.05)
        await events.wait_for(lambda e: e.type == "run.log" and any(
            "re-attaching to process group" in line.text for line in e.lines), timeout=30)  # type: ignore[attr-defined]
        assert stage.job.run_id in back.active_runs
        stage.finish.touch()
        done = await events.wait_for_type("run.completed", "run.failed", "run.canceled", timeout=30)
    pid, lines = stage.pid, stage.lines
    assert done.type == "run.completed", done
    assert done.attempt > 2
    assert lines(stage.pids) == [str(pid)]  # one copy of the command, ever
    assert any(f"re-attaching to process group {pid}" in line
               for line in events.log_lines("system", attempt=done.attempt))
    claimed = {e.attempt for e in events.events if e.type == "run.claimed"}
    assert claimed == {1, done.attempt}  # the standby's attempts published nothing
    assert lines(stage.steps)[-1] == f"step {len(lines(stage.steps))}"


async def test_a_run_canceled_while_another_runner_stands_by_on_its_detached_claim_ends_canceled_and_its_owner_ends_the_command(
    bench: Bench, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancel while the command runs on, left by a stopped runner: the standby ends the run canceled at once
    (acknowledged, nothing started); when the owner's runner id comes back, it ends the command in the container
    and deletes the claim: no copy of a canceled run keeps running, and nothing starts it again."""
    caplog.set_level("INFO", logger="runner")
    async with detached_stage(bench, settings) as (stage, events, nc):
        await stage.leave_running(events)
        other = await stage.stand_by(caplog)
        await request_cancel(nc, stage.js, stage.settings, stage.job.run_id)
        done = await events.wait_for_type("run.completed", "run.failed", "run.canceled", timeout=30)
        assert done.type == "run.canceled" and "left running by runner docker-a" in done.reason, done  # type: ignore[attr-defined]
        await until(lambda: stage.job.run_id not in other.active_runs, timeout=30)
        assert stage.alive()  # the owner's host is away: nothing here can end it yet
        assert (await stage.claim()).detached

        await stage.start("docker-a")  # the owner is back: it ends the command of the ended run
        await until(lambda: not stage.alive(), timeout=stage.settings.cancel_grace_s + 30)
        assert await stage.claim() is None
        assert f"ended process group {stage.pid}" in caplog.text
    assert stage.lines(stage.pids) == [str(stage.pid)]
    assert [e.type for e in events.events if e.type in ("run.claimed", "run.started")] == ["run.claimed", "run.started"]


GROUP_STATES = (
    'pg=$1; for f in /proc/[0-9]*/stat; do read -r line < "$f" 2>/dev/null || continue; '
    'rest=${line##*) }; set -- $rest; [ "$3" = "$pg" ] && echo "$1"; done; true'
)
"""The state letter (R, S, T, ...) of every process of a group, read from /proc inside the container."""


def _group_states(bench: Bench, pgid: int) -> set[str]:
    """States of the group's live processes. A zombie ("Z") is left out: a child (a `sleep` of a step) that exits
    as the group is stopped stays a zombie until its stopped parent runs again and reaps it."""
    return set(bench.engine.sh(bench.container, GROUP_STATES, str(pgid)).stdout.split()) - {"Z"}


async def test_pause_stops_the_process_group_in_the_container_and_resume_continues_it(bench: Bench):
    settings = bench.settings(cancel_grace_s=0.5)
    ctx = bench.context(settings, train_command(max_steps=400, save_steps=3, step_time=0.05))
    emitter: RecordingEmitter = ctx.emit  # type: ignore[assignment]
    task = asyncio.create_task(DockerExecutor(settings, bench.targets(tap=True)).run(ctx))
    await wait_for(lambda: len(emitter.of("checkpoint")) >= 1, timeout=60)
    pgid = bench.pgid_of(ctx.run_id)
    assert ctx.pauser is not None

    await ctx.pauser.pause()
    await wait_for(lambda: _group_states(bench, pgid) == {"T"}, timeout=60)
    await ctx.pauser.resume()
    await wait_for(lambda: bool(_group_states(bench, pgid)) and "T" not in _group_states(bench, pgid), timeout=60)
    await ctx.pauser.pause()  # canceled while paused: the stopped group still ends
    await wait_for(lambda: _group_states(bench, pgid) == {"T"}, timeout=60)
    ctx.cancel_requested.set()
    outcome = await asyncio.wait_for(task, 30)

    assert isinstance(outcome, Canceled), outcome
    assert not bench.group_alive(pgid)
    signals = [argv[-2] for argv in bench.docker_calls() if "trainforge-signal" in argv]
    assert signals[:4] == ["STOP", "CONT", "STOP", "TERM"], signals
    assert ctx.pauser is None


async def test_with_the_nats_store_checkpoints_go_to_the_object_store_and_another_host_resumes_from_one(
    bench: Bench, settings: Settings, tmp_path: Path
):
    """`artifact_store = nats`: each checkpoint folder is uploaded (one tar); a runner with a state folder and
    an output folder of its own (nothing shared with the first) fetches it and the command resumes from it."""
    import nats

    from shared.artifacts import NatsObjectStore

    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings)
        first_host = bench.settings(artifact_store="nats", bus_prefix=settings.bus_prefix)
        first = bench.context(first_host, train_command(max_steps=4, save_steps=2))
        assert isinstance(await DockerExecutor(first_host, bench.targets(), js=js).run(first), Completed)
        checkpoint = first.emit.of("checkpoint")[0]  # type: ignore[attr-defined]
        assert checkpoint["uri"].startswith(f"{NatsObjectStore.SCHEME}://")
        assert checkpoint["meta"]["host_path"].endswith(f"outputs/{first.run_id}/checkpoint-2")

        other_root = tmp_path / "other-host"  # the second host: its own output folder, same container layout
        other_root.mkdir()
        for name in ("alpaca.json", "train.yaml"):
            (other_root / name).write_bytes((bench.host_root / name).read_bytes())
        second_host = Settings.from_mapping({"state_dir": tmp_path / "state-b", "cancel_grace_s": 0.5,
                                             "artifact_store": "nats", "bus_prefix": settings.bus_prefix})
        with bench.engine.container("second-host", {other_root: "/data"}) as container:
            targets = parse_targets({"targets": {"llm": {
                "container": container, "workdir": "/app", "host_root": str(other_root), "container_root": "/data",
                "output_dir": "outputs/{run_id}", "run_dir": RUN_DIR, "poll_s": 0.1}}})
            resume = ResumeFrom(source_run_id=first.run_id, checkpoint_id=checkpoint["checkpoint_id"],
                                uri=checkpoint["uri"], step=2)
            second = bench.context(second_host, train_command(max_steps=6, save_steps=2), resume=resume)
            outcome = await DockerExecutor(second_host, targets, js=js).run(second)
        assert isinstance(outcome, Completed), outcome
        inside = f"/data/outputs/{second.run_id}/checkpoint-2"
        assert f"Resuming training from {inside} at step 2" in second.emit.log_text.splitlines()  # type: ignore[attr-defined]
        assert (other_root / "outputs" / second.run_id / "checkpoint-2").is_dir()
        assert [c["step"] for c in second.emit.of("checkpoint")] == [4, 6], (second.emit.of("checkpoint"), second.emit.log_text)  # type: ignore[attr-defined]
    finally:
        await nc.close()
