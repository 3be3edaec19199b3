"""Backend `local` of `container` runs: the start command in bash, in a working folder on the runner's host.

Only when the operator enabled it (`Settings.runner_local_backend`): it runs whatever the run's owner wrote.
The command goes to bash as one argument (`bash -c <command>`), never pasted into another command line. The
job gets its own session and process group, so a cancel, a timeout or the end of the main process stops every
process it started: SIGTERM to the group, SIGKILL after `Settings.cancel_grace_s`, until none is left.

A runner that dies (kill -9) takes the job with it, so that a next attempt on another host never runs beside
an orphan: bash gets `PR_SET_PDEATHSIG` = SIGKILL, and the runner's watchdog (`group_watchdog`: one small
`bash` beside the runner that knows the group of every job running now) SIGKILLs the whole group when the
runner is gone.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal

from runner.executors.base import Canceled, Completed, ExecutorError, Failed, Outcome, RunContext
from runner.executors.group_watchdog import GroupWatchdog
from runner.executors.pipes import WatchedPipe, drain
from shared.contracts import ContainerSpec, FailureCause
from shared.settings import Settings

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
RESERVED_ENV_PREFIX = "TRAINFORGE_"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READ_CHUNK = 64 * 1024
MAX_LINE_CHARS = 8 * 1024
LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")
PIPE_DRAIN_S = 5.0
"""After the process group is gone, how long a reader may wait on a pipe that gives nothing more (a stray pipe
holder) before it is given up on; a reader still publishing what it read is waited for (`pipes.drain`)."""
PR_SET_PDEATHSIG = 1
JOB_RECORD = ".trainforge-job.json"
"""In the run's working folder while its command runs: process group and start time, so that the next
attempt on this host can end what an attempt whose runner died (kill -9) left running."""


SETPRIV = shutil.which("setpriv")
"""util-linux `setpriv --pdeathsig`: sets the parent-death signal and execs the command (same pid), so the
child needs no Python code between fork and exec (`preexec_fn`), which makes CPython fork the whole runner
process the slow way, on the event loop; without it, `_die_with_parent` does the same as a `preexec_fn`."""


def _spawn_options(argv: list[str], sig: signal.Signals) -> tuple[list[str], dict[str, Any]]:
    """`argv` and the keyword arguments of `create_subprocess_exec` for a child that gets `sig` when the
    runner (its parent thread) dies."""
    if SETPRIV is not None:
        return [SETPRIV, f"--pdeathsig={sig.name}", "--", *argv], {}
    return argv, {"preexec_fn": lambda: _die_with_parent(sig)}


def _die_with_parent(sig: signal.Signals) -> None:
    """In a child between fork and exec: receive `sig` when the runner (its parent thread) dies."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[19]


def record_job(workdir: Path, pgid: int, attempt: int) -> None:
    record = {"pgid": pgid, "start_time": _start_time(pgid), "attempt": attempt}
    (workdir / JOB_RECORD).write_text(json.dumps(record))


async def end_leftover_job(ctx: RunContext, workdir: Path, grace_s: float) -> None:
    """End the process group an earlier attempt of this run left behind on this host, if it still runs."""
    path = workdir / JOB_RECORD
    try:
        record = json.loads(path.read_text())
        pgid, started = int(record["pgid"]), record.get("start_time")
    except (OSError, ValueError, KeyError, TypeError):
        return
    # The same pid with the same start time is the same process, not a recycled pid.
    if await group_alive(pgid) and (started is None or _start_time(pgid) in (started, None)):
        await ctx.emit.log(
            f"ending process group {pgid} left running by attempt {record.get('attempt')} (its runner stopped)",
            "system",
        )
        await stop_process_group(pgid, grace_s)
    path.unlink(missing_ok=True)


def resolve_workdir(work_root: Path, workdir: str | None, run_id: str) -> Path:
    """The run's working folder under `work_root`; `ExecutorError` for a path that leaves it."""
    relative = workdir if workdir is not None else run_id
    if not relative or PurePosixPath(relative).is_absolute() or "\x00" in relative:
        raise ExecutorError(f"workdir must be a relative path inside the runner's work root, got {workdir!r}")
    root = work_root.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ExecutorError(f"workdir {workdir!r} leaves the runner's work root")
    return path


def job_environment(ctx: RunContext, spec: ContainerSpec, workdir: Path) -> dict[str, str]:
    """A small, safe environment: nothing of the runner's own (no secrets), the run's variables on top."""
    for name in spec.env:
        if not ENV_NAME_RE.match(name):
            raise ExecutorError(f"invalid environment variable name {name!r}")
        if name.upper().startswith(RESERVED_ENV_PREFIX):
            raise ExecutorError(f"environment variable {name!r}: the TRAINFORGE_ prefix is reserved")
    env = {
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(spec.env)
    env["TRAINFORGE_RUN_ID"] = ctx.run_id
    env["TRAINFORGE_ATTEMPT"] = str(ctx.attempt)
    env["TRAINFORGE_RESUME_FROM"] = ctx.resume.uri if ctx.resume else ""
    return env


class LocalExecutor:
    """Runs `ContainerSpec(backend="local")` jobs with bash on this host."""

    kinds: ClassVar[tuple[str, ...]] = ("container",)

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._watchdog = GroupWatchdog(_spawn_options)

    async def aclose(self) -> None:
        """The runner stops (no job of this executor runs any more)."""
        await self._watchdog.aclose()

    async def run(self, ctx: RunContext) -> Outcome:
        spec = ctx.job.spec
        if not isinstance(spec, ContainerSpec) or spec.backend != "local":
            return Failed(FailureCause.INFRASTRUCTURE, "WrongExecutor", "LocalExecutor runs container/local jobs only")
        if not self._settings.runner_local_backend:
            return Failed(
                FailureCause.USER,
                "LocalBackendDisabled",
                "backend 'local' is disabled on this runner (the operator enables it with "
                "TRAINFORGE_RUNNER_LOCAL_BACKEND=true); use backend 'docker' or another pool",
            )
        try:
            workdir = resolve_workdir(self._settings.work_root, spec.workdir, ctx.run_id)
            env = job_environment(ctx, spec, workdir)
        except ExecutorError as exc:
            return Failed(FailureCause.USER, "InvalidSpec", str(exc))
        workdir.mkdir(parents=True, exist_ok=True)
        await end_leftover_job(ctx, workdir, self._settings.cancel_grace_s)
        await ctx.emit.log(f"local: bash -c <start_command> in {workdir}", "system")
        try:
            argv, options = _spawn_options(["bash", "-c", spec.start_command], signal.SIGKILL)
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                **options,
            )
        except ValueError as exc:  # e.g. a NUL byte in the command or an env value
            return Failed(FailureCause.USER, "InvalidSpec", f"cannot start the command: {exc}")
        except OSError as exc:
            return Failed(FailureCause.INFRASTRUCTURE, type(exc).__name__, f"cannot start bash: {exc}")
        record_job(workdir, process.pid, ctx.attempt)
        if not await self._watchdog.guard(process.pid):
            await ctx.emit.log("no watchdog: if this runner is killed, what the command started may outlive it",
                               "system")
        try:
            return await self._supervise(ctx, spec, process)
        finally:
            if not await group_alive(process.pid):
                self._watchdog.release(process.pid)
                (workdir / JOB_RECORD).unlink(missing_ok=True)

    async def _supervise(self, ctx: RunContext, spec: ContainerSpec, process: asyncio.subprocess.Process) -> Outcome:
        assert process.stdout is not None and process.stderr is not None
        pgid = process.pid  # session leader: its pid is the group id
        ctx.pauser = GroupPauser(pgid)
        pipes = [WatchedPipe(process.stdout), WatchedPipe(process.stderr)]
        readers = [
            asyncio.create_task(_pump_lines(pipes[0], "stdout", ctx.emit.log)),
            asyncio.create_task(_pump_lines(pipes[1], "stderr", ctx.emit.log)),
        ]
        exited = asyncio.create_task(_main_process_exit(process))
        cancel = asyncio.create_task(ctx.cancel_requested.wait())
        stop_reason: Literal["cancel", "timeout"] | None = None
        reader_error: BaseException | None = None
        loop = asyncio.get_running_loop()
        deadline = None if spec.timeout_s is None else loop.time() + spec.timeout_s
        waiting: set[asyncio.Future[object]] = {exited, cancel, *readers}
        try:
            while reader_error is None:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if exited in done:
                    break
                if cancel in done or not done:
                    stop_reason = "cancel" if cancel in done else "timeout"
                    await ctx.emit.log(
                        "stopping the job: "
                        + ("cancel requested" if stop_reason == "cancel" else f"timeout of {spec.timeout_s:g} s"),
                        "system",
                    )
                    break
                for task in done:  # a reader ended: end of its pipe, or its lines could not be published
                    waiting.discard(task)
                    reader_error = reader_error or task.exception()
            # Whatever ended the main process, leave no process of the job behind.
            await stop_process_group(pgid, self._settings.cancel_grace_s)
            await exited
            if reader_error is not None:
                raise reader_error
            await drain(list(zip(readers, pipes, strict=True)), PIPE_DRAIN_S)
            with contextlib.suppress(TimeoutError):  # asyncio's wait() also waits for the pipes to close
                await asyncio.wait_for(process.wait(), 1.0)
        finally:
            ctx.pauser = None
            cancel.cancel()
            if not exited.done():  # we are being cancelled ourselves: still stop the job
                await asyncio.shield(stop_process_group(pgid, self._settings.cancel_grace_s))
                exited.cancel()
            for task in readers:
                task.cancel()
        code = process.returncode
        assert code is not None
        if stop_reason == "cancel":
            return Canceled()
        if stop_reason == "timeout":
            return Failed(FailureCause.USER, "Timeout", f"the command ran longer than timeout_s={spec.timeout_s:g}")
        if code == 0:
            return Completed(exit_code=0)
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            return Failed(FailureCause.USER, "KilledBySignal", f"the command was killed by {name}", exit_code=128 - code)
        return Failed(FailureCause.USER, "NonZeroExit", f"the command exited with code {code}", exit_code=code)


async def _main_process_exit(process: asyncio.subprocess.Process) -> int:
    """When bash itself exits. (`Process.wait()` also waits until its pipes close, which a child left running
    in the background delays for as long as it runs.)"""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or already reaped: the loop below sees it
        pidfd = None
    if pidfd is not None:
        readable = loop.create_future()
        loop.add_reader(pidfd, lambda: readable.done() or readable.set_result(None))
        try:
            await readable
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    while process.returncode is None:  # exited; the child watcher sets the code when it has reaped it  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return process.returncode


async def _pump_lines(
    stream: WatchedPipe,
    name: Literal["stdout", "stderr"],
    emit: Callable[[str, Literal["stdout", "stderr", "system"]], Awaitable[None]],
) -> None:
    """Forward a pipe line by line. `\\r` ends a line too (progress bars); overlong lines are cut."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while True:
        chunk = await stream.read(READ_CHUNK)
        pending += decoder.decode(chunk, final=not chunk)
        held = ""
        if chunk and pending.endswith("\r"):  # maybe the first half of "\r\n": decide with the next chunk
            pending, held = pending[:-1], "\r"
        lines = LINE_BREAK_RE.split(pending)
        pending = lines.pop() + held
        for line in lines:
            await emit(line, name)
        while len(pending) > MAX_LINE_CHARS:
            await emit(pending[:MAX_LINE_CHARS], name)
            pending = pending[MAX_LINE_CHARS:]
        if not chunk:
            if pending:
                await emit(pending, name)
            return


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of a process group. Blocking (it may scan /proc): call it
    from a worker thread. A group with no process at all (the usual case once a job ended) is answered
    by one `killpg(pgid, 0)`, without the scan."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    proc = Path("/proc")
    if not proc.is_dir():
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


async def group_alive(pgid: int) -> bool:
    """Whether a live process of group `pgid` is left: one `killpg(pgid, 0)` here when the group is empty (the
    usual case once a job ended), the /proc scan of `group_members` in a worker thread otherwise."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return bool(await asyncio.to_thread(group_members, pgid))


async def stop_process_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the group, SIGKILL what is left after `grace_s`, and wait until no process of it remains."""
    if not await group_alive(pgid):
        return
    _signal_group(pgid, signal.SIGTERM)
    _signal_group(pgid, signal.SIGCONT)  # a paused (stopped) group gets its SIGTERM only once continued
    if await _wait_group_gone(pgid, grace_s):
        return
    _signal_group(pgid, signal.SIGKILL)
    if not await _wait_group_gone(pgid, 10.0):
        raise ExecutorError(f"processes of group {pgid} survived SIGKILL")


class GroupPauser:
    """Pauses a job in place: SIGSTOP to its whole process group, SIGCONT to continue it."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid

    async def pause(self) -> None:
        _signal_group(self.pgid, signal.SIGSTOP)

    async def resume(self) -> None:
        _signal_group(self.pgid, signal.SIGCONT)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


async def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while await group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)
    return True
