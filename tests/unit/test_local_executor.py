"""The local backend of container runs: bash on this host, output as log lines, every process stopped."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import pytest

from runner.executors.base import Canceled, Completed, Failed, RunContext
from runner.executors.local import LocalExecutor, group_members, resolve_workdir
from shared.contracts import ContainerSpec, FailureCause, Job, ResumeFrom
from shared.settings import Settings


class RecordingEmitter:
    """Keeps what the executor reports (the agent's emitter publishes it; not needed here)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    async def log(self, text: str, stream: Literal["stdout", "stderr", "system"] = "stdout") -> None:
        self.lines.append((stream, text))

    def out(self, stream: str = "stdout") -> list[str]:
        return [text for s, text in self.lines if s == stream]

    async def progress(self, *args: Any, **kwargs: Any) -> None: ...
    async def metrics(self, *args: Any, **kwargs: Any) -> None: ...
    async def checkpoint(self, *args: Any, **kwargs: Any) -> str:
        return "c"

    async def artifact(self, *args: Any, **kwargs: Any) -> str:
        return "a"


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", runner_local_backend=True, cancel_grace_s=1.0)


def make_ctx(settings: Settings, command: str, *, attempt: int = 1, resume: ResumeFrom | None = None,
             **spec: Any) -> RunContext:
    job = Job(run_id=uuid.uuid4().hex, project_id="p1", pool="cpu",
              spec=ContainerSpec(start_command=command, **spec))
    return RunContext(job=job, attempt=attempt, runner_id="r1", device="cpu", settings=settings,
                      emit=RecordingEmitter(), workdir=settings.work_root / job.run_id, resume=resume)


def pid_from(ctx: RunContext) -> int:
    return int(ctx.emit.out()[0])  # type: ignore[attr-defined]


async def wait_for_line(ctx: RunContext, text: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in ctx.emit.out():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"no line {text!r}: {ctx.emit.lines}"  # type: ignore[attr-defined]
        await asyncio.sleep(0.02)


async def test_output_lines_arrive_in_order_and_exit_zero_completes(local_settings: Settings) -> None:
    ctx = make_ctx(local_settings, "for i in 1 2 3; do echo line $i; done; echo oops >&2; pwd")
    outcome = await LocalExecutor(local_settings).run(ctx)
    assert outcome == Completed(exit_code=0)
    assert ctx.emit.out() == ["line 1", "line 2", "line 3", str(local_settings.work_root / ctx.run_id)]  # type: ignore[attr-defined]
    assert ctx.emit.out("stderr") == ["oops"]  # type: ignore[attr-defined]


class StalledBus(RecordingEmitter):
    """Publishes the first line of output, then stalls (as during a NATS outage) until `back` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.back = asyncio.Event()

    async def log(self, text: str, stream: Literal["stdout", "stderr", "system"] = "stdout") -> None:
        if stream != "system" and self.out() + self.out("stderr"):
            await self.back.wait()
        await super().log(text, stream)


async def test_lines_read_while_the_bus_stalls_are_all_published_after_the_command_ended(
    local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader is slow because publishing is, not because a stray process holds the pipe: it is waited
    for past the pipe-drain bound, and no line is lost (the run used to complete without its last lines)."""
    monkeypatch.setattr("runner.executors.local.PIPE_DRAIN_S", 0.05)
    ctx = make_ctx(local_settings, "echo $$; for i in $(seq 1 50); do echo line $i; done")
    bus = StalledBus()
    ctx.emit = bus
    task = asyncio.create_task(LocalExecutor(local_settings).run(ctx))
    deadline = time.monotonic() + 30
    while not bus.out():
        assert time.monotonic() < deadline, "no first line"
        await asyncio.sleep(0.01)
    pid = int(bus.out()[0])
    while _alive(pid):  # the command has ended; its output waits in the pipe behind the stalled bus
        assert time.monotonic() < deadline, "the command did not end"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # well past the drain bound: the reader is still publishing, not idle at the pipe
    bus.back.set()
    outcome = await asyncio.wait_for(task, 30)
    assert isinstance(outcome, Completed), outcome
    assert bus.out()[1:] == [f"line {i}" for i in range(1, 51)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_nonzero_exit_fails_with_cause_user_and_the_exit_code(local_settings: Settings) -> None:
    outcome = await LocalExecutor(local_settings).run(make_ctx(local_settings, "echo bad; exit 3"))
    assert isinstance(outcome, Failed)
    assert (outcome.cause, outcome.error_type, outcome.exit_code) == (FailureCause.USER, "NonZeroExit", 3)


async def test_disabled_local_backend_fails_with_a_clear_message(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, runner_local_backend=False)
    outcome = await LocalExecutor(settings).run(make_ctx(settings, "touch should-not-exist"))
    assert isinstance(outcome, Failed) and outcome.cause == FailureCause.USER
    assert "disabled" in outcome.message and "TRAINFORGE_RUNNER_LOCAL_BACKEND" in outcome.message
    assert not list(tmp_path.rglob("should-not-exist"))


@pytest.mark.parametrize("workdir", ["/etc", "../outside", "a/../../outside", ""])
async def test_workdir_outside_the_work_root_is_refused(local_settings: Settings, workdir: str) -> None:
    outcome = await LocalExecutor(local_settings).run(make_ctx(local_settings, "true", workdir=workdir))
    assert isinstance(outcome, Failed) and outcome.cause == FailureCause.USER and outcome.error_type == "InvalidSpec"


def test_workdir_through_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    assert resolve_workdir(root, "sub/dir", "r") == root / "sub" / "dir"
    with pytest.raises(Exception, match="leaves"):
        resolve_workdir(root, "link/x", "r")


async def test_the_job_sees_a_minimal_environment_with_its_run_variables(
    local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_SECRET", "s3cret")
    resume = ResumeFrom(source_run_id="old", checkpoint_id="c1", uri="/ckpt/last.pt")
    ctx = make_ctx(local_settings, 'echo "$TRAINFORGE_RUN_ID $TRAINFORGE_ATTEMPT $TRAINFORGE_RESUME_FROM '
                   '$MY_VAR [${RUNNER_SECRET:-}]"', attempt=2, resume=resume, env={"MY_VAR": "a b;c"})
    assert await LocalExecutor(local_settings).run(ctx) == Completed()
    assert ctx.emit.out() == [f"{ctx.run_id} 2 /ckpt/last.pt a b;c []"]  # type: ignore[attr-defined]


async def test_reserved_or_invalid_env_names_are_refused(local_settings: Settings) -> None:
    for env in ({"TRAINFORGE_ATTEMPT": "9"}, {"BAD-NAME": "x"}):
        outcome = await LocalExecutor(local_settings).run(make_ctx(local_settings, "true", env=env))
        assert isinstance(outcome, Failed) and outcome.error_type == "InvalidSpec"


async def test_cancel_stops_the_whole_process_group_even_children_ignoring_sigterm(local_settings: Settings) -> None:
    command = "echo $$; (trap '' TERM; sleep 600) & sleep 600 & echo ready; wait"
    ctx = make_ctx(local_settings, command)
    run = asyncio.create_task(LocalExecutor(local_settings).run(ctx))
    await wait_for_line(ctx, "ready")
    pgid = pid_from(ctx)
    assert len(group_members(pgid)) >= 3
    started = time.monotonic()
    ctx.cancel_requested.set()
    assert await asyncio.wait_for(run, 10) == Canceled()
    assert time.monotonic() - started < local_settings.cancel_grace_s + 2
    assert group_members(pgid) == []


async def test_timeout_fails_the_run_and_leaves_no_process(local_settings: Settings) -> None:
    ctx = make_ctx(local_settings, "echo $$; sleep 600", timeout_s=0.5)
    outcome = await asyncio.wait_for(LocalExecutor(local_settings).run(ctx), 10)
    assert isinstance(outcome, Failed) and outcome.error_type == "Timeout" and outcome.cause == FailureCause.USER
    assert group_members(pid_from(ctx)) == []


async def test_background_processes_left_behind_by_the_command_are_stopped(local_settings: Settings) -> None:
    ctx = make_ctx(local_settings, "echo $$; sleep 600 & echo done")
    outcome = await asyncio.wait_for(LocalExecutor(local_settings).run(ctx), 10)
    assert outcome == Completed()
    assert group_members(pid_from(ctx)) == []


async def test_carriage_returns_split_lines_and_overlong_lines_are_cut(local_settings: Settings) -> None:
    ctx = make_ctx(local_settings, r"printf 'a\r\nb\rc\n\nlast'; head -c 20000 /dev/zero | tr '\0' x")
    assert await LocalExecutor(local_settings).run(ctx) == Completed()
    out = ctx.emit.out()  # type: ignore[attr-defined]
    assert out[:4] == ["a", "b", "c", ""]
    assert out[4].startswith("last") and all(len(line) <= 8192 for line in out)
    assert sum(len(line) for line in out[4:]) == 4 + 20000


async def test_a_killed_command_reports_the_signal(local_settings: Settings) -> None:
    outcome = await LocalExecutor(local_settings).run(make_ctx(local_settings, "kill -KILL $$"))
    assert isinstance(outcome, Failed) and outcome.error_type == "KilledBySignal" and outcome.exit_code == 137
    assert os.getpid() > 0
