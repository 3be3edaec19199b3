"""Backend `docker` of `container` runs: the start command runs inside one of the runner's container targets.

One attempt:
1. resolve the target (unknown name → failed, cause user), check the project's dataset and training YAML
   under the target's host root (missing → failed, cause user, the same message as the gateway's 400);
2. check the container runs (`docker inspect`); not running, or no docker → failed, cause infrastructure;
3. look for a command of an earlier attempt still running in the container (after a runner crash):
   setting `runner_reattach` = `reattach` follows it, `restart` ends it first;
4. otherwise start the command with the wrapper (see `docker_argv`): in its own process group, output to a
   log file inside the container, streamed back through the `docker exec` client, whose stdin the runner
   holds open: when the runner dies, the end of that input makes the wrapper end the command's group;
5. while it runs: log lines → log events, metrics and progress parsed from them, `checkpoint-*` folders of
   the output folder → checkpoint events, GPU use sampled;
6. cancel (or the run's timeout): SIGTERM to the process group inside the container, SIGKILL after
   `cancel_grace_s`, then check the group is gone. Killing the `docker exec` client alone would leave the
   training running in the container.

If the runner dies (kill -9), the wrapper sees the end of its input and ends the command (SIGTERM,
`cancel_grace_s`, SIGKILL), so a next attempt elsewhere never runs beside an orphan. If this coroutine is
cancelled while the command runs (the runner goes away without canceling the run), the runner lets go on
purpose with `runner_reattach` = `reattach` (a byte on the wrapper's stdin: the command keeps running for the
next attempt on this host to re-attach to) and ends the command like a dead runner's otherwise. The same holds
when the runner stops and gives the run back (`RunContext.let_go`, shutdown_action `requeue`). Either way it
sets `RunContext.detached` when the wrapper confirmed: the agent keeps the attempt claim, marked detached, so
only this runner id runs the run next (`runner.claims`).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import posixpath
import re
import shlex
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import anyio
import msgspec

from runner.checkpoints_watch import (
    CheckpointWatcher,
    find_tensorboard_files,
    keep_artifact,
    list_checkpoints,
)
from runner.executors.base import Canceled, Completed, ExecutorError, Failed, Outcome, RunContext
from runner.executors.docker_argv import (
    DETACH_BYTE,
    DETACHED_MARK,
    EXIT_MARK,
    NO_SUCH_GROUP,
    PGID_MARK,
    AttemptFiles,
    Signal,
    attempt_files,
    follow_argv,
    inspect_argv,
    probe_argv,
    signal_argv,
    start_argv,
)
from runner.executors.pipes import WatchedPipe, drain
from runner.gpu_sampler import cuda_indices, sample_gpus
from runner.logparse import Progress, parse_line
from runner.preflight import check_files, resolve_under
from runner.targets import ContainerTarget, Targets, load_targets
from shared.artifacts import ArtifactError, ArtifactStore, NatsObjectStore, artifact_store
from shared.contracts import ContainerSpec, FailureCause
from shared.contracts.common import TOKEN_RE
from shared.contracts.preflight import PreflightReply
from shared.settings import Settings

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
TOKEN_SUBST_RE = re.compile(r"\{(resume_from|output_dir|dataset|training_yaml)\}")
"""Tokens of a start command, each replaced in one pass by its shell-quoted value (docs/containers.md)."""
MAX_LOG_LINE = 4000
PROGRESS_EVERY_S = 0.5
CR_LOG_EVERY_S = 1.0
STATE_SAVE_EVERY_S = 1.0
DOCKER_CALL_TIMEOUT_S = 30.0
KILL_CONFIRM_S = 5.0
PIPE_IDLE_S = 10.0
"""After the command ended, how long a reader may wait on an output pipe giving nothing (a stray holder)."""
DETACH_CONFIRM_S = 5.0
"""How long the runner waits for the wrapper to confirm that it let go (`DETACHED_MARK`)."""
CONTAINER_STATE_SETTLE_S = 2.0
"""How long a container that ended a command's exec session may still show as running (see `_container_gone`)."""
LET_GO = "let go"
"""A stop reason: the runner stops and gives the run back (`RunContext.let_go`); the command keeps running."""
STATE_FILE = "docker-state.json"


class DockerUnavailable(Exception):
    """The docker executable cannot be run."""


class DockerExecutor:
    kinds: ClassVar[tuple[str, ...]] = ("container",)
    uses_bus: ClassVar[bool] = True
    """The registry passes the runner's JetStream connection: with `artifact_store = nats`, checkpoints and
    artifacts go to the object store, so a runner on another host can resume from them."""

    def __init__(self, settings: Settings, targets: Targets | None = None, js=None) -> None:  # noqa: ANN001
        self.settings = settings
        self.targets = targets if targets is not None else load_targets(settings.runner_targets_file)
        self.store: ArtifactStore | None = None
        if settings.artifact_store == "nats" and js is not None:
            self.store = artifact_store(settings, js)

    async def run(self, ctx: RunContext) -> Outcome:
        spec = ctx.job.spec
        if not isinstance(spec, ContainerSpec) or spec.backend != "docker":
            message = "the docker executor runs container runs with backend 'docker'"
            return Failed(FailureCause.INFRASTRUCTURE, "UnsupportedSpec", message)
        try:
            target = self.targets.get(spec.target)
        except KeyError as exc:
            return Failed(FailureCause.USER, "UnknownTarget", str(exc.args[0]))
        try:
            resume_path = await self._fetched_resume(ctx, target)
            plan = plan_attempt(ctx, spec, target, resume_path)
            missing = await check_files(target, spec.dataset_name, spec.training_yaml_name)
        except ExecutorError as exc:
            return Failed(FailureCause.USER, "InvalidRun", str(exc))
        if missing:
            message = PreflightReply(ok=False, missing=missing).message(target.name)
            return Failed(FailureCause.USER, "MissingFiles", message)
        if ctx.cancel_requested.is_set():
            return Canceled(checkpoint_id=ctx.last_checkpoint_id)
        return await _Attempt(ctx, target, plan, store=self.store).run()

    async def _fetched_resume(self, ctx: RunContext, target: ContainerTarget) -> Path | None:
        """A checkpoint in the object store (another host's), unpacked into this run's output folder here."""
        resume = ctx.resume or ctx.job.resume
        if resume is None or not resume.uri.startswith(f"{NatsObjectStore.SCHEME}://"):
            return None
        output_dir = target.host_output_dir(ctx.run_id)
        if self.store is None or not self.store.owns(resume.uri) or output_dir is None:
            raise ExecutorError(f"this runner cannot read the checkpoint {resume.uri} (artifact store "
                                f"{self.settings.artifact_store}, output folder {output_dir})")
        from runner.folder_artifacts import fetch_folder

        return await fetch_folder(self.store, resume.uri, output_dir)


# -- what one attempt runs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    files: AttemptFiles
    workdir: str
    env: dict[str, str]
    command: str
    host_output_dir: Path | None
    host_training_yaml: Path | None
    gpus: list[int]
    timeout_s: float | None


def plan_attempt(ctx: RunContext, spec: ContainerSpec, target: ContainerTarget, resume_path: Path | None = None,
                 ) -> Plan:
    """Paths, environment and start command of one attempt (`resume_path`: the checkpoint to resume from on this
    host, when it was fetched from the artifact store). Raises `ExecutorError` for a spec this target cannot run
    as given."""
    if not TOKEN_RE.match(ctx.run_id):
        raise ExecutorError(f"invalid run id {ctx.run_id!r}")
    if "\x00" in spec.start_command:
        raise ExecutorError("the start command contains a NUL character")
    workdir = _container_workdir(target.workdir, spec.workdir)
    output_dir = target.host_output_dir(ctx.run_id)
    root = target.host_root
    dataset = resolve_under(root, spec.dataset_name) if spec.dataset_name else None
    training_yaml = resolve_under(root, spec.training_yaml_name) if spec.training_yaml_name else None
    values: dict[str, str | None] = {
        "resume_from": target.to_container(resume_path) if resume_path else _resume_path(ctx, target),
        "output_dir": target.to_container(output_dir) if output_dir else None,
        "dataset": target.to_container(dataset) if dataset else None,
        "training_yaml": target.to_container(training_yaml) if training_yaml else None,
    }
    command = TOKEN_SUBST_RE.sub(lambda m: shlex.quote(values[m[1]] or ""), spec.start_command)
    env = {**target.env, **spec.env}
    for key, value in env.items():
        if not ENV_NAME_RE.match(key):
            raise ExecutorError(f"invalid environment variable name {key!r}")
        if "\x00" in value:
            raise ExecutorError(f"environment variable {key} contains a NUL character")
    gpus = cuda_indices(ctx.device)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    env["TRAINFORGE_RUN_ID"] = ctx.run_id
    env["TRAINFORGE_ATTEMPT"] = str(ctx.attempt)
    for name, key in (
        ("resume_from", "TRAINFORGE_RESUME_FROM"),
        ("output_dir", "TRAINFORGE_OUTPUT_DIR"),
        ("dataset", "TRAINFORGE_DATASET"),
        ("training_yaml", "TRAINFORGE_TRAINING_YAML"),
    ):
        if values[name]:
            env[key] = values[name]  # type: ignore[assignment]
        else:
            env.pop(key, None)
    return Plan(
        files=attempt_files(target, ctx.run_id, ctx.attempt),
        workdir=workdir,
        env=env,
        command=command,
        host_output_dir=output_dir,
        host_training_yaml=training_yaml,
        gpus=gpus,
        timeout_s=spec.timeout_s,
    )


def _container_workdir(base: str, sub: str | None) -> str:
    if not sub:
        return base
    if PurePosixPath(sub).is_absolute():
        raise ExecutorError(f"workdir {sub!r} must be relative to the target's working directory")
    joined = posixpath.normpath(posixpath.join(base, sub))
    if joined != base and not joined.startswith(base.rstrip("/") + "/"):
        raise ExecutorError(f"workdir {sub!r} is outside the target's working directory")
    return joined


def _resume_path(ctx: RunContext, target: ContainerTarget) -> str | None:
    resume = ctx.resume or ctx.job.resume
    if resume is None:
        return None
    uri = resume.uri.removeprefix("file://")
    return target.to_container(uri) if uri.startswith("/") else uri


# -- what survives a runner crash (on this host) --------------------------------------------------------


class _Checkpoint(msgspec.Struct):
    id: str
    step: int
    uri: str


class _State(msgspec.Struct):
    """Kept in the run's scratch folder so a later attempt on this host knows what was already reported."""

    baseline: list[str] | None = None
    """checkpoint-* folders that were in the output folder before the run started (not its own)."""
    checkpoints: dict[str, _Checkpoint] = {}
    follow_dir: str | None = None
    offset: int = 0
    """Bytes of `follow_dir`'s log already turned into events."""
    target: str | None = None
    """The target the command runs in (`end_left_running` finds a command left running by it)."""

    @staticmethod
    def load(path: Path) -> _State:
        try:
            return msgspec.json.decode(path.read_bytes(), type=_State)
        except (FileNotFoundError, msgspec.DecodeError):
            return _State()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(self))
        tmp.replace(path)


# -- one attempt ------------------------------------------------------------------------------------------


@dataclass
class _Attempt:
    ctx: RunContext
    target: ContainerTarget
    plan: Plan
    store: ArtifactStore | None = None
    """The object store checkpoints and artifacts are uploaded to (`nats`), or None: host paths."""
    unrecorded: list[Any] = field(default_factory=list)
    """Checkpoints the watcher found that have no checkpoint event yet."""
    state: _State = field(default_factory=_State)
    pgid: int | None = None
    exit_status: int | None = None
    container_gone: str | None = None
    """Why the container is not available, when the `docker exec` client ended without the wrapper's status."""
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    stdout_tail: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    last_metrics: dict[str, float] = field(default_factory=dict)
    main_total: int = 0
    last_step: int | None = None
    pending_progress: Progress | None = None
    progress_at: float = 0.0
    cr_logged_at: float = 0.0
    saved_at: float = 0.0
    pgid_known: asyncio.Event = field(default_factory=asyncio.Event)
    detached: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def state_path(self) -> Path:
        return self.ctx.workdir / STATE_FILE

    async def run(self) -> Outcome:
        self.state = await anyio.to_thread.run_sync(_State.load, self.state_path)
        try:
            if problem := await self._container_problem():
                return Failed(FailureCause.INFRASTRUCTURE, "ContainerUnavailable", problem)
            argv = await self._start_or_reattach()
        except DockerUnavailable as exc:
            return Failed(FailureCause.INFRASTRUCTURE, "DockerUnavailable", str(exc))
        if isinstance(argv, Failed):
            return argv
        return await self._supervise(argv)

    # -- before the command runs ------------------------------------------------------------------------
    async def _container_problem(self) -> str | None:
        rc, out, err = await self._docker(inspect_argv(self.target))
        where = f"container {self.target.container!r} of target {self.target.name!r}"
        if rc != 0:
            return f"{where} is not available: {err.strip() or f'docker inspect exited with status {rc}'}"
        if out.strip() != "true":
            return f"{where} is not running"
        return None

    async def _container_gone(self) -> str | None:
        """Why the container went away, after a `docker exec` client ended without the wrapper's exit status;
        None when it still runs. A container killed under the command ends its exec sessions a moment before
        the daemon records it stopped: asked again for up to `CONTAINER_STATE_SETTLE_S`."""
        deadline = time.monotonic() + CONTAINER_STATE_SETTLE_S
        while True:
            try:
                problem = await self._container_problem()
            except DockerUnavailable:
                return None
            if problem is not None or time.monotonic() >= deadline:
                return problem
            await asyncio.sleep(0.2)

    async def _start_or_reattach(self) -> list[str] | Failed:
        emit = self.ctx.emit
        previous = await self._find_previous()
        if previous is not None:
            pgid, folder = previous
            if self.settings.runner_reattach == "reattach":
                message = f"re-attaching to process group {pgid} of an earlier attempt ({folder})"
                await emit.log(message, "system")
                offset = self.state.offset if self.state.follow_dir == folder else 0
                self.state.follow_dir, self.state.offset = folder, offset
                self.pgid = pgid
                grace_s = self.settings.cancel_grace_s
                return follow_argv(self.target, AttemptFiles(folder), offset, grace_s=grace_s)
            await emit.log(f"ending process group {pgid} left by an earlier attempt ({folder})", "system")
            if not await self._stop_group(pgid):
                where = f"in {self.target.container!r}"
                message = f"process group {pgid} of an earlier attempt is still running {where} after SIGKILL"
                return Failed(FailureCause.INFRASTRUCTURE, "StaleProcess", message)
        if self.state.baseline is None and self.plan.host_output_dir is not None:
            existing = await anyio.to_thread.run_sync(list_checkpoints, self.plan.host_output_dir)
            self.state.baseline = sorted(existing)
        self.state.follow_dir, self.state.offset = self.plan.files.dir, 0
        self.state.target = self.target.name
        await self._save_state()
        if self.plan.host_training_yaml is not None:
            await self._artifact(self.plan.host_training_yaml, self.plan.host_training_yaml.name, "config")
        plan = self.plan
        where = f"{self.target.container!r} (target {self.target.name!r}), in {plan.workdir}"
        await emit.log(f"docker exec into {where}: {plan.command}", "system")
        return start_argv(
            self.target, env=plan.env, workdir=plan.workdir, files=plan.files, command=plan.command,
            grace_s=self.settings.cancel_grace_s,
        )

    async def _find_previous(self) -> tuple[int, str] | None:
        rc, out, _ = await self._docker(probe_argv(self.target, self.ctx.run_id))
        line = out.strip()
        if rc != 0 or not line:
            return None
        pgid, _, folder = line.partition(" ")
        return (int(pgid), folder) if pgid.isdigit() else None

    # -- while it runs -----------------------------------------------------------------------------------
    async def _supervise(self, argv: list[str]) -> Outcome:
        try:
            proc = await _spawn(argv, hold_stdin=True)
        except OSError as exc:
            return Failed(FailureCause.INFRASTRUCTURE, "DockerUnavailable", _no_docker(self.target, exc))
        assert proc.stdout is not None and proc.stderr is not None
        pipes = [WatchedPipe(proc.stdout), WatchedPipe(proc.stderr)]
        readers = [
            asyncio.create_task(self._read_stdout(pipes[0])),
            asyncio.create_task(self._read_stderr(pipes[1])),
        ]
        helpers = [asyncio.create_task(sample_gpus(self.plan.gpus, self.target.gpu_sample_s, self.ctx.emit))]
        watcher = None
        if self.plan.host_output_dir is not None:
            known = [*(self.state.baseline or []), *self.state.checkpoints]
            watcher = CheckpointWatcher(self.plan.host_output_dir, known=known)
            helpers.append(asyncio.create_task(self._watch_checkpoints(watcher)))
        stop_reason: str | None = None
        stopped = True
        self.ctx.pauser = _GroupInContainer(self)
        try:
            stop_reason = await self._wait(proc)
            if stop_reason == "canceled" and self.ctx.let_go and self.settings.runner_reattach == "reattach":
                stop_reason = LET_GO  # the runner stops and gives the run back: leave the command running
            elif stop_reason is not None:
                stopped = await self._stop_command()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), KILL_CONFIRM_S + 5)
            if stop_reason != LET_GO:  # every line read is published, however slow the bus (`pipes.drain`)
                await drain(list(zip(readers, pipes, strict=True)), PIPE_IDLE_S)
        finally:
            self.ctx.pauser = None
            for task in helpers:
                task.cancel()
            if proc.returncode is None:  # the runner is going away, or the client hangs
                detach = self.settings.runner_reattach == "reattach" and stop_reason in (None, LET_GO)
                await asyncio.shield(self._let_go(proc, detach=detach))
                self.ctx.detached = self.detached.is_set()
            elif proc.stdin is not None:
                proc.stdin.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*helpers, *readers, return_exceptions=True)
            await asyncio.shield(self._save_state())
        if stop_reason is None and self.exit_status is None:  # the client ended without the wrapper's status
            self.container_gone = await self._container_gone()
        await self._flush_progress()
        if watcher is not None:  # a command left running is not over: its next attempt reports the rest
            await self._emit_checkpoints(watcher, final=stop_reason != LET_GO)
            if stop_reason != LET_GO:
                await self._tensorboard_artifacts()
        await self._save_state()
        return self._outcome(stop_reason, stopped, proc.returncode)

    async def _wait(self, proc: asyncio.subprocess.Process) -> str | None:
        """None when the client exited; "canceled" or "timeout" when the command must be stopped."""
        exited = asyncio.create_task(proc.wait())
        canceled = asyncio.create_task(self.ctx.cancel_requested.wait())
        try:
            done, _ = await asyncio.wait(
                {exited, canceled}, timeout=self.plan.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            canceled.cancel()
            exited.cancel()
        if exited in done:
            return None
        return "canceled" if canceled in done else "timeout"

    async def _let_go(self, proc: asyncio.subprocess.Process, *, detach: bool) -> None:
        """Stop watching a command whose `docker exec` client still runs. With `detach`, tell the wrapper to
        leave the command running (for a next attempt on this host to re-attach to); otherwise, or when it
        does not confirm, close its stdin: the wrapper ends the command's group (SIGTERM, grace, SIGKILL)."""
        assert proc.stdin is not None
        if detach:
            with contextlib.suppress(OSError):  # ConnectionResetError, BrokenPipeError: the client is gone
                proc.stdin.write(DETACH_BYTE)
                await proc.stdin.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.detached.wait(), DETACH_CONFIRM_S)
        proc.stdin.close()
        if not self.detached.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), self.settings.cancel_grace_s + KILL_CONFIRM_S)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()

    async def _stop_command(self) -> bool:
        if self.pgid is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pgid_known.wait(), 3)
        pgid = self.pgid
        if pgid is None:
            with contextlib.suppress(DockerUnavailable):
                if (previous := await self._find_previous()) is not None:
                    pgid = previous[0]
        if pgid is None:
            return True
        await self.ctx.emit.log(f"stopping process group {pgid} in {self.target.container!r}", "system")
        try:
            return await self._stop_group(pgid)
        except DockerUnavailable as exc:
            await self.ctx.emit.log(f"could not stop process group {pgid}: {exc}", "system")
            return False

    async def _stop_group(self, pgid: int) -> bool:
        """SIGTERM, grace period, SIGKILL; True once the group is confirmed gone."""

        async def gone(rc: int) -> bool:  # the group is gone, or the whole container is
            return rc == NO_SUCH_GROUP or (rc != 0 and await self._container_problem() is not None)

        async def before_kill() -> None:
            grace = self.settings.cancel_grace_s
            await self.ctx.emit.log(f"process group {pgid} still running after {grace:g}s: SIGKILL", "system")

        ended = await stop_group(lambda signal: self._signal(pgid, signal), self.settings.cancel_grace_s, gone,
                                 before_kill)
        return ended is not None

    async def _signal(self, pgid: int, signal: Signal) -> int:
        rc, _, _ = await self._docker(signal_argv(self.target, pgid, signal))
        return rc

    # -- output ------------------------------------------------------------------------------------------
    async def _read_stdout(self, stream: WatchedPipe) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        buffer = ""
        while chunk := await stream.read(65536):
            self.state.offset += len(chunk)
            buffer += decoder.decode(chunk)
            start = 0
            for match in re.finditer(r"\r\n|\r|\n", buffer):
                await self._line(buffer[start : match.start()], carriage=match.group() == "\r")
                start = match.end()
            buffer = buffer[start:]
            if len(buffer) > 65536:
                await self._line(buffer, carriage=False)
                buffer = ""
            if time.monotonic() - self.saved_at >= STATE_SAVE_EVERY_S:
                await self._save_state()
        buffer += decoder.decode(b"", final=True)
        if buffer:
            await self._line(buffer, carriage=False)

    async def _line(self, text: str, *, carriage: bool) -> None:
        if not text.strip():
            return
        now = time.monotonic()
        if not carriage or now - self.cr_logged_at >= CR_LOG_EVERY_S:
            if carriage:
                self.cr_logged_at = now
            await self.ctx.emit.log(text[:MAX_LOG_LINE], "stdout")
            if not carriage:
                self.stdout_tail.append(text[:200])
        info = parse_line(text, self.target.patterns)
        if info.progress is not None:
            await self._progress(info.progress)
        if info.metrics:
            self.last_metrics.update(info.metrics)
            await self.ctx.emit.metrics(info.metrics, step=self.last_step)

    async def _progress(self, progress: Progress) -> None:
        if progress.total is not None:
            if progress.total < self.main_total:
                return  # a smaller bar (evaluation) inside the training bar
            self.main_total = progress.total
            self.last_step = progress.step
        self.pending_progress = progress
        if time.monotonic() - self.progress_at >= PROGRESS_EVERY_S or progress.fraction == 1.0:
            await self._flush_progress()

    async def _flush_progress(self) -> None:
        progress, self.pending_progress = self.pending_progress, None
        if progress is None or progress.fraction is None:
            return
        self.progress_at = time.monotonic()
        p = progress
        await self.ctx.emit.progress(p.fraction, step=p.step, total=p.total, epoch=p.epoch, epochs=p.epochs)

    async def _read_stderr(self, stream: WatchedPipe) -> None:
        while raw := await stream.readline():
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            if text.startswith(PGID_MARK) and text[len(PGID_MARK) :].isdigit():
                self.pgid = int(text[len(PGID_MARK) :])
                self.pgid_known.set()
            elif text.startswith(EXIT_MARK) and text[len(EXIT_MARK) :].lstrip("-").isdigit():
                self.exit_status = int(text[len(EXIT_MARK) :])
            elif text == DETACHED_MARK:
                self.detached.set()
            elif text.strip():
                self.stderr_tail.append(text[:MAX_LOG_LINE])
                await self.ctx.emit.log(text[:MAX_LOG_LINE], "stderr")

    # -- checkpoints and artifacts --------------------------------------------------------------------------
    async def _watch_checkpoints(self, watcher: CheckpointWatcher) -> None:
        while True:
            await asyncio.sleep(self.target.poll_s)
            await self._emit_checkpoints(watcher, final=False)

    async def _emit_checkpoints(self, watcher: CheckpointWatcher, *, final: bool) -> None:
        # found but not yet recorded: kept until recorded, so that a poll cancelled mid-upload (the command ended)
        # leaves its checkpoints to the final poll instead of losing them
        self.unrecorded.extend(await watcher.poll(final=final))
        while self.unrecorded:
            found = self.unrecorded[0]
            uri, meta = str(found.path), {"container_path": self.target.to_container(found.path)}
            if self.store is not None:
                from runner.folder_artifacts import put_folder

                key = f"runs/{self.ctx.run_id}/checkpoints/{found.path.name}.tar"
                uri = await put_folder(self.store, key, found.path)
                meta["host_path"] = str(found.path)
            checkpoint_id = await self.ctx.emit.checkpoint(
                uri,
                step=found.step,
                size_bytes=found.size_bytes,
                meta=meta,
            )
            recorded = _Checkpoint(id=checkpoint_id, step=found.step, uri=str(found.path))
            self.state.checkpoints[found.path.name] = recorded
            self.unrecorded.pop(0)
            await self._save_state()

    @property
    def latest_checkpoint(self) -> _Checkpoint | None:
        return max(self.state.checkpoints.values(), key=lambda c: c.step, default=None)

    async def _tensorboard_artifacts(self) -> None:
        assert self.plan.host_output_dir is not None
        for path in await anyio.to_thread.run_sync(find_tensorboard_files, self.plan.host_output_dir):
            await self._artifact(path, path.relative_to(self.plan.host_output_dir).as_posix(), "tensorboard")

    async def _artifact(self, path: Path, name: str, kind: str) -> None:
        copy_to = self.settings.artifacts_dir / self.ctx.run_id if self.target.copy_artifacts else None
        kept = await anyio.to_thread.run_sync(
            lambda: keep_artifact(path, name=name, copy_to=copy_to, max_bytes=self.target.artifact_max_bytes)
        )
        if kept is None:
            return
        meta = {"copied": kept.copied, **({"note": kept.note} if kept.note else {})}
        uri = kept.uri
        local = Path(kept.uri.removeprefix("file://"))
        if self.store is not None and local.is_absolute() and await anyio.to_thread.run_sync(local.is_file):
            try:
                uri = await self.store.put_file(f"runs/{self.ctx.run_id}/{kept.name}", local)
                meta["host_path"] = str(local)
            except ArtifactError as exc:  # a name the store cannot key: the host path is still recorded
                meta["note"] = f"not uploaded: {exc}"
        await self.ctx.emit.artifact(kept.name, uri, kind=kind, size_bytes=kept.size_bytes, meta=meta)

    # -- the end -----------------------------------------------------------------------------------------
    def _outcome(self, stop_reason: str | None, stopped: bool, client_status: int | None) -> Outcome:
        latest = self.latest_checkpoint
        if stop_reason == LET_GO:
            reason = "runner shutdown: " + ("the command keeps running" if self.ctx.detached else
                                            "the command did not confirm it detached and was ended")
            return Canceled(reason=reason, checkpoint_id=latest.id if latest else self.ctx.last_checkpoint_id)
        if stop_reason == "canceled":
            reason = "requested" if stopped else "requested; the process group was still there after SIGKILL"
            return Canceled(reason=reason, checkpoint_id=latest.id if latest else self.ctx.last_checkpoint_id)
        if stop_reason == "timeout":
            message = f"the command ran longer than {self.plan.timeout_s:g}s and was stopped"
            return Failed(FailureCause.USER, "Timeout", message)
        if self.exit_status is None and self.container_gone is not None:
            message = f"{self.container_gone} (it stopped while the command ran)"
            return Failed(FailureCause.INFRASTRUCTURE, "ContainerUnavailable", message, exit_code=client_status)
        if self.exit_status is None:
            detail = "; ".join(self.stderr_tail) or f"docker exec ended with status {client_status}"
            return Failed(FailureCause.INFRASTRUCTURE, "DockerExecFailed", detail, exit_code=client_status)
        if self.exit_status != 0:
            last = " | ".join(self.stdout_tail)
            message = f"the command exited with status {self.exit_status}"
            message += f"; last output: {last}" if last else ""
            return Failed(FailureCause.USER, "CommandFailed", message, exit_code=self.exit_status)
        return Completed(
            exit_code=0,
            result={"metrics": dict(self.last_metrics), "latest_checkpoint": latest.uri if latest else None},
        )

    # -- plumbing ----------------------------------------------------------------------------------------
    async def _docker(self, argv: list[str]) -> tuple[int, str, str]:
        return await _docker_call(self.target, argv)

    async def _save_state(self) -> None:
        self.saved_at = time.monotonic()
        await anyio.to_thread.run_sync(self.state.save, self.state_path)


async def stop_group(send: Callable[[Signal], Awaitable[int]], grace_s: float, gone: Callable[[int], Awaitable[bool]],
                     before_kill: Callable[[], Awaitable[None]] | None = None) -> Signal | None:
    """End a process group in a container: SIGTERM (and SIGCONT, since a paused group gets its SIGTERM only once
    continued), up to `grace_s` for it to go, then SIGKILL and up to `KILL_CONFIRM_S`. `send` delivers a signal
    ("0" probes) and returns the wrapper's exit status; `gone(status)` of a probe says whether the group is gone.
    Returns the signal that ended it, or None if it is still there after SIGKILL."""
    steps: tuple[tuple[Signal, float], ...] = (("TERM", grace_s), ("KILL", KILL_CONFIRM_S))
    for signal, wait_s in steps:
        if signal == "KILL" and before_kill is not None:
            await before_kill()
        await send(signal)
        if signal == "TERM":
            await send("CONT")
        deadline = time.monotonic() + wait_s
        while not await gone(await send("0")):
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
        else:
            return signal
    return None


async def end_left_running(settings: Settings, run_id: str) -> str:
    """End the command an attempt of `run_id` left running in its container on this host (`RunContext.detached`)
    after the run ended without it, e.g. canceled while this runner was away: SIGTERM to its process group,
    `cancel_grace_s`, SIGKILL. Returns what was done, for the log."""
    state = await anyio.to_thread.run_sync(_State.load, settings.work_root / run_id / STATE_FILE)
    if state.target is None:
        return "this host has no record of its target"
    try:
        targets = await anyio.to_thread.run_sync(load_targets, settings.runner_targets_file)
        target = targets.get(state.target)
    except KeyError:
        return f"its target {state.target!r} is no longer configured here"
    try:
        _, out, _ = await _docker_call(target, probe_argv(target, run_id))
        pgid_text = out.strip().partition(" ")[0]
        if not pgid_text.isdigit():
            return f"its command no longer runs in {target.container!r}"
        pgid = int(pgid_text)

        async def send(signal: Signal) -> int:
            return (await _docker_call(target, signal_argv(target, pgid, signal)))[0]

        async def gone(rc: int) -> bool:  # the group is gone (3), or the container is
            return rc != 0

        ended = await stop_group(send, settings.cancel_grace_s, gone)
        if ended is None:
            return f"process group {pgid} in {target.container!r} still runs after SIGKILL"
        return f"ended process group {pgid} in {target.container!r} (SIG{ended})"
    except DockerUnavailable as exc:
        return f"could not end it: {exc}"


async def _docker_call(target: ContainerTarget, argv: list[str]) -> tuple[int, str, str]:
    try:
        proc = await _spawn(argv)
    except OSError as exc:
        raise DockerUnavailable(_no_docker(target, exc)) from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), DOCKER_CALL_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        message = f"{argv[0]} {argv[1]} did not answer within {DOCKER_CALL_TIMEOUT_S:g}s"
        raise DockerUnavailable(message) from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
    return proc.returncode or 0, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _no_docker(target: ContainerTarget, exc: OSError) -> str:
    return f"cannot run the docker executable {target.docker!r}: {exc.strerror or exc}"


async def _spawn(argv: list[str], *, hold_stdin: bool = False) -> asyncio.subprocess.Process:
    """Run `argv` (never through a shell), its output piped back; with `hold_stdin`, its stdin is a pipe this
    process holds (its end closes when the runner dies, whatever way)."""
    pipe = asyncio.subprocess.PIPE
    stdin = pipe if hold_stdin else asyncio.subprocess.DEVNULL
    return await asyncio.create_subprocess_exec(*argv, stdin=stdin, stdout=pipe, stderr=pipe)


class _GroupInContainer:
    """Pauses a docker run in place: SIGSTOP/SIGCONT of its process group inside the container, sent with the
    in-container signal script (`docker exec ... kill -STOP -- -PGID`)."""

    def __init__(self, attempt: _Attempt) -> None:
        self._attempt = attempt

    async def _group(self) -> int:
        if self._attempt.pgid is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._attempt.pgid_known.wait(), 3)
        if self._attempt.pgid is None:
            raise ExecutorError("the command's process group in the container is not known yet")
        return self._attempt.pgid

    async def pause(self) -> None:
        pgid = await self._group()
        if await self._attempt._signal(pgid, "STOP") != 0:
            raise ExecutorError(f"could not stop process group {pgid} in {self._attempt.target.container!r}")

    async def resume(self) -> None:
        pgid = await self._group()
        if await self._attempt._signal(pgid, "CONT") != 0:
            raise ExecutorError(f"could not continue process group {pgid} in {self._attempt.target.container!r}")
