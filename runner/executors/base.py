"""What an executor is given and what it returns.

An executor runs one attempt of one run. It reports through `ctx.emit` (logs, progress, metrics,
checkpoints, artifacts), watches `ctx.cancel_requested`, and returns an `Outcome`. The agent publishes
run.claimed/run.started before it and the terminal event after it, then acks the job. Executors never ack,
never touch NATS directly, and never block the event loop: CPU-bound work goes to a worker thread or process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from shared.contracts import FailureCause, Job, ResumeFrom
from shared.settings import Settings


class Emitter(Protocol):
    """Publishes events of the current run attempt, numbering them. All methods are coroutines on the
    runner's event loop; from a worker thread call them with `anyio.from_thread.run(...)`."""

    async def log(self, text: str, stream: Literal["stdout", "stderr", "system"] = "stdout") -> None:
        """Queue one log line; lines are sent in small batches (flushed at least every 200 ms)."""

    async def progress(
        self,
        progress: float,
        *,
        step: int | None = None,
        total: int | None = None,
        epoch: int | None = None,
        epochs: int | None = None,
        batch: int | None = None,
        batches: int | None = None,
        losses: dict[str, float] | None = None,
        eta_s: float | None = None,
        message: str | None = None,
    ) -> None: ...

    async def metrics(self, metrics: dict[str, float], *, step: int | None = None, epoch: int | None = None) -> None: ...

    async def checkpoint(
        self,
        uri: str,
        *,
        step: int | None = None,
        epoch: int | None = None,
        size_bytes: int | None = None,
        resumable: bool = True,
        meta: dict[str, Any] | None = None,
    ) -> str:
        """Record a checkpoint; returns its checkpoint id."""
        ...

    async def artifact(
        self,
        name: str,
        uri: str,
        *,
        kind: str = "file",
        size_bytes: int | None = None,
        media_type: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> str:
        """Record an artifact; returns its artifact id."""
        ...


class Pauser(Protocol):
    """How an executor stops its run in place and continues it (`RunContext.pauser`)."""

    async def pause(self) -> None:
        """Stop the run in place; return once it is stopped (or will stop at its next safe point)."""

    async def resume(self) -> None:
        """Continue it from where it stopped."""


@dataclass
class RunContext:
    job: Job
    attempt: int
    runner_id: str
    device: str
    settings: Settings
    emit: Emitter
    workdir: Path
    """A scratch folder for this run on this runner (kept across attempts on the same host)."""
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    resume: ResumeFrom | None = None
    """Where to continue from: the job's explicit resume source, or the latest checkpoint an earlier
    attempt of this run recorded (after a runner died)."""
    last_checkpoint_id: str | None = None
    """Updated by the emitter: the newest checkpoint of this attempt."""
    holds_claim: Callable[[], bool] = lambda: True
    """Whether this attempt surely still holds the run (its claim renewed within the last heartbeats): an
    executor deletes nothing a next attempt may resume from unless it does (`runner.claims`)."""
    let_go: bool = False
    """Set by the agent with `cancel_requested` when the runner stops and gives the run back (shutdown_action
    `requeue`): the run is not canceled, so an executor that can leave its command running for the next attempt
    on this host (docker, `runner_reattach = reattach`) may do that instead of stopping it."""
    detached: bool = False
    """Set by the executor: it returned (or was cancelled) with the command still running. The agent then keeps
    the run's attempt claim, marked detached, so that no other runner starts the command beside it."""

    pauser: Pauser | None = None
    """Set by an executor while its run can be paused (its processes started, its training loop running)."""
    paused: bool = False
    """Set by the agent: the run is paused now."""
    pause_expired: bool = False
    """Set by the agent with `cancel_requested` when the run stayed paused longer than `pause_max_s`."""

    @property
    def run_id(self) -> str:
        return self.job.run_id

    @property
    def project_id(self) -> str:
        return self.job.project_id


@dataclass(frozen=True)
class Completed:
    exit_code: int | None = 0
    result: dict[str, Any] | None = None


@dataclass(frozen=True)
class Failed:
    cause: FailureCause
    error_type: str
    message: str
    exit_code: int | None = None


@dataclass(frozen=True)
class Canceled:
    reason: str = "requested"
    checkpoint_id: str | None = None


Outcome = Completed | Failed | Canceled


class Executor(Protocol):
    kinds: ClassVar[tuple[str, ...]]
    """The `spec.kind` values this executor runs."""

    async def run(self, ctx: RunContext) -> Outcome: ...


class ExecutorError(Exception):
    """The job cannot run as given (bad spec for this runner, missing file, ...): fails with cause `user`."""
