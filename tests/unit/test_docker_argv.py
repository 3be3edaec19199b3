from pathlib import Path

import pytest

from runner.executors.base import ExecutorError, RunContext
from runner.executors.docker import plan_attempt
from runner.executors.docker_argv import (
    FOLLOW,
    PROBE,
    SIGNAL,
    WRAPPER,
    attempt_files,
    follow_argv,
    inspect_argv,
    probe_argv,
    signal_argv,
    start_argv,
)
from runner.gpu_sampler import cuda_indices
from runner.targets import ContainerTarget, parse_targets
from shared.contracts import ContainerSpec, Job, ResumeFrom
from shared.settings import Settings
from tests.fakes.recording_emitter import RecordingEmitter

HOSTILE = "python train.py; rm -rf / && $(reboot) `id` 'quoted' \"double\" {x}"


def target(**overrides: object) -> ContainerTarget:
    raw = {
        "container": "llama-factory",
        "workdir": "/app",
        "host_root": "/srv/llm",
        "container_root": "/data",
        "output_dir": "outputs/{run_id}",
        "docker": "/usr/bin/docker",
        **overrides,
    }
    return parse_targets({"targets": {"llm": raw}}).get("llm")


def context(command: str, *, device: str = "cpu", resume: ResumeFrom | None = None, **spec: object) -> RunContext:
    job = Job(
        run_id="run1",
        project_id="p1",
        pool="gpu",
        spec=ContainerSpec(start_command=command, backend="docker", target="llm", **spec),  # type: ignore[arg-type]
        resume=resume,
    )
    return RunContext(
        job=job, attempt=2, runner_id="r1", device=device, settings=Settings(), emit=RecordingEmitter(), workdir=Path("/tmp/x")
    )


def test_start_argv_is_docker_exec_env_bash_with_the_fixed_wrapper_and_client_strings_as_arguments():
    t = target()
    files = attempt_files(t, "run1", 2)
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "X": "a b; c"}
    argv = start_argv(t, env=env, workdir="/app/sub dir", files=files, command=HOSTILE, grace_s=2.5)
    assert argv == [
        "/usr/bin/docker", "exec", "-i", "llama-factory",
        "env", "LANG=C.UTF-8", "CUDA_VISIBLE_DEVICES=0,1", "X=a b; c",
        "bash", "-c", WRAPPER, "trainforge-wrapper",
        "25",  # the grace period in tenths of a second
        "/app/sub dir",
        "/tmp/trainforge/run1/attempt-2/job.log",
        "/tmp/trainforge/run1/attempt-2/job.pid",
        "/tmp/trainforge/run1/attempt-2/job.exit",
        HOSTILE,
    ]  # fmt: skip


def test_scripts_are_constants_without_client_text():
    for script in (WRAPPER, FOLLOW, PROBE, SIGNAL):
        assert "rm -rf" not in script
        assert "{" not in script.replace("${", "").replace("{ echo", "").replace("guard() {", "").replace("relay() {", "")


def test_other_argument_vectors():
    t = target()
    files = attempt_files(t, "run1", 1)
    assert inspect_argv(t) == ["/usr/bin/docker", "inspect", "--type", "container", "--format", "{{.State.Running}}", "llama-factory"]
    follow = follow_argv(t, files, 1234, grace_s=0.01)
    assert follow[-6:] == ["trainforge-follow", "1", files.log, files.pid, files.exit, "1234"]
    assert follow[:6] == ["/usr/bin/docker", "exec", "-i", "llama-factory", "bash", "-c"]
    assert probe_argv(t, "run1")[-2:] == ["trainforge-probe", "/tmp/trainforge/run1"]
    assert signal_argv(t, 4242, "TERM") == [
        "/usr/bin/docker", "exec", "llama-factory", "bash", "-c", SIGNAL, "trainforge-signal", "TERM", "4242",
    ]  # fmt: skip


def test_plan_substitutes_tokens_shell_quoted_and_maps_host_paths_into_the_container():
    resume = ResumeFrom(source_run_id="r0", checkpoint_id="c1", uri="/srv/llm/outputs/r0/it's here/checkpoint-40")
    ctx = context(
        "llamafactory-cli train {training_yaml} --resume {resume_from} --out {output_dir} --data {dataset} ${HOME} {other}",
        resume=resume,
        dataset_name="data/alpaca.json",
        training_yaml_name="sft.yaml",
    )
    plan = plan_attempt(ctx, ctx.job.spec, target())
    assert plan.command == (
        "llamafactory-cli train /data/sft.yaml --resume '/data/outputs/r0/it'\"'\"'s here/checkpoint-40' "
        "--out /data/outputs/run1 --data /data/data/alpaca.json ${HOME} {other}"
    )
    assert plan.env["TRAINFORGE_RESUME_FROM"] == "/data/outputs/r0/it's here/checkpoint-40"
    assert plan.env["TRAINFORGE_OUTPUT_DIR"] == "/data/outputs/run1"
    assert plan.env["TRAINFORGE_TRAINING_YAML"] == "/data/sft.yaml"
    assert plan.env["TRAINFORGE_ATTEMPT"] == "2"
    assert plan.host_output_dir == Path("/srv/llm/outputs/run1")
    assert plan.files.dir == "/tmp/trainforge/run1/attempt-2"


def test_plan_without_resume_gives_an_empty_argument_and_no_resume_variable():
    ctx = context("train --resume_from {resume_from}")
    plan = plan_attempt(ctx, ctx.job.spec, target())
    assert plan.command == "train --resume_from ''"
    assert "TRAINFORGE_RESUME_FROM" not in plan.env


def test_substituted_values_are_not_substituted_again():
    resume = ResumeFrom(source_run_id="r0", checkpoint_id="c1", uri="/srv/llm/{output_dir}")
    ctx = context("x {resume_from}", resume=resume)
    assert plan_attempt(ctx, ctx.job.spec, target()).command == "x '/data/{output_dir}'"


def test_plan_env_layers_target_then_run_then_runner_values():
    ctx = context("x", device="cuda:1", env={"HF_HOME": "/run", "CUDA_VISIBLE_DEVICES": "7", "TRAINFORGE_RUN_ID": "evil"})
    plan = plan_attempt(ctx, ctx.job.spec, target(env={"HF_HOME": "/target", "WANDB_MODE": "offline"}))
    assert plan.env["HF_HOME"] == "/run"
    assert plan.env["WANDB_MODE"] == "offline"
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "1"
    assert plan.env["TRAINFORGE_RUN_ID"] == "run1"
    assert plan.gpus == [1]


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"env": {"-u PATH": "x"}}, "invalid environment variable name"),
        ({"env": {"A": "x\x00y"}}, "NUL"),
        ({"workdir": "../etc"}, "outside the target's working directory"),
        ({"workdir": "/etc"}, "must be relative"),
        ({"dataset_name": "../../etc/passwd"}, "outside the target's root"),
    ],
)
def test_plan_refuses_what_the_target_cannot_run(spec: dict, error: str):
    ctx = context("x", **spec)
    with pytest.raises(ExecutorError, match=error):
        plan_attempt(ctx, ctx.job.spec, target())


def test_plan_workdir_is_relative_to_the_target_workdir():
    ctx = context("x", workdir="examples/./sft")
    assert plan_attempt(ctx, ctx.job.spec, target()).workdir == "/app/examples/sft"


@pytest.mark.parametrize(
    ("device", "indices"), [("cpu", []), ("cuda:0", [0]), ("cuda:0,1", [0, 1]), ("3", [3]), ("cuda", [])]
)
def test_gpu_indices_of_a_runner_device(device: str, indices: list[int]):
    assert cuda_indices(device) == indices
