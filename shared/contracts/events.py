"""Events: what happens to a run, published by runners (and by the gateway for queue-side changes).

Every event carries its id, run id, project id, attempt, runner id, a sequence number monotonic per
(run, attempt), and a timestamp. (run_id, attempt, seq) identifies an event: the projection into Postgres is
idempotent on it, and it is the `Nats-Msg-Id` on the wire. Attempt 0 belongs to the gateway (run.queued,
run.cancel_requested, cancel of a run not yet claimed); attempt N >= 1 is the N-th delivery of the job.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from shared.contracts.common import FailureCause, new_id, utcnow


class EventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    event_id: str = msgspec.field(default_factory=new_id)
    run_id: str
    project_id: str
    attempt: int
    runner_id: str
    seq: int
    ts: datetime = msgspec.field(default_factory=utcnow)

    @property
    def type(self) -> str:
        return type(self).__struct_config__.tag  # type: ignore[return-value]

    @property
    def msg_id(self) -> str:
        """The de-duplication id on the wire (`Nats-Msg-Id`)."""
        return f"{self.run_id}:{self.attempt}:{self.seq}"


class RunQueued(EventBase, frozen=True, kw_only=True, tag="run.queued"):
    kind: str
    pool: str
    resume_of: str | None = None


class RunClaimed(EventBase, frozen=True, kw_only=True, tag="run.claimed"):
    host: str = ""
    device: str = ""


class RunStarted(EventBase, frozen=True, kw_only=True, tag="run.started"):
    resumed_from: str | None = None
    """Checkpoint id the attempt started from, if any."""


class RunProgress(EventBase, frozen=True, kw_only=True, tag="run.progress"):
    progress: float
    """Fraction done, 0..1."""
    step: int | None = None
    total: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    batch: int | None = None
    batches: int | None = None
    losses: dict[str, float] = {}
    eta_s: float | None = None
    message: str | None = None


class RunMetrics(EventBase, frozen=True, kw_only=True, tag="run.metrics"):
    metrics: dict[str, float]
    step: int | None = None
    epoch: int | None = None


class LogLine(msgspec.Struct, frozen=True):
    stream: Literal["stdout", "stderr", "system"]
    text: str


class RunLog(EventBase, frozen=True, kw_only=True, tag="run.log"):
    lines: list[LogLine]


class RunCheckpoint(EventBase, frozen=True, kw_only=True, tag="run.checkpoint"):
    checkpoint_id: str = msgspec.field(default_factory=new_id)
    uri: str
    step: int | None = None
    epoch: int | None = None
    size_bytes: int | None = None
    resumable: bool = True
    meta: dict[str, Any] = {}


class RunArtifact(EventBase, frozen=True, kw_only=True, tag="run.artifact"):
    artifact_id: str = msgspec.field(default_factory=new_id)
    name: str
    uri: str
    kind: str = "file"
    size_bytes: int | None = None
    media_type: str | None = None
    meta: dict[str, Any] = {}


class RunCompleted(EventBase, frozen=True, kw_only=True, tag="run.completed"):
    exit_code: int | None = None
    result: dict[str, Any] | None = None


class RunFailed(EventBase, frozen=True, kw_only=True, tag="run.failed"):
    cause: FailureCause
    error_type: str
    message: str
    exit_code: int | None = None


class RunCancelRequested(EventBase, frozen=True, kw_only=True, tag="run.cancel_requested"):
    requested_by: str | None = None


class RunCanceled(EventBase, frozen=True, kw_only=True, tag="run.canceled"):
    reason: str = "requested"
    checkpoint_id: str | None = None


class RunPaused(EventBase, frozen=True, kw_only=True, tag="run.paused"):
    """The runner stopped the run in place (SIGSTOP of its processes; YOLO: at the next batch boundary)."""

    requested_by: str | None = None


class RunUnpaused(EventBase, frozen=True, kw_only=True, tag="run.unpaused"):
    """The runner continued a paused run (SIGCONT; YOLO: from the batch it stopped at)."""

    requested_by: str | None = None
    paused_s: float | None = None
    """How long it was paused."""


class RunRequeued(EventBase, frozen=True, kw_only=True, tag="run.requeued"):
    """A runner gave the job back (for example on shutdown); the next attempt continues it."""

    reason: str


class DeviceInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    kind: Literal["cpu", "cuda"] = "cpu"
    index: int | None = None
    memory_total_mb: int | None = None
    memory_used_mb: int | None = None
    utilization: float | None = None
    temperature_c: float | None = None


class HostStats(msgspec.Struct, frozen=True, kw_only=True):
    """What a runner's host has and uses, sampled for every heartbeat (psutil; GPUs through NVML)."""

    cpu_percent: float | None = None
    """CPU use of the whole host since the previous sample, 0..100."""
    cpu_count: int | None = None
    memory_total_mb: int | None = None
    memory_used_mb: int | None = None
    memory_available_mb: int | None = None
    disk_total_mb: int | None = None
    """The file system of the runner's state folder."""
    disk_free_mb: int | None = None
    load1: float | None = None
    gpus: list[DeviceInfo] = []
    """Every NVIDIA GPU of the host (empty without a driver), not only the runner's own device."""


class RunnerHeartbeat(EventBase, frozen=True, kw_only=True, tag="runner.heartbeat"):
    """Periodic liveness of a runner. run_id/project_id are empty; attempt is 0."""

    run_id: str = ""
    project_id: str = ""
    attempt: int = 0
    host: str = ""
    pool: str = ""
    devices: list[DeviceInfo] = []
    slots: int = 1
    active_runs: list[str] = []
    state: Literal["idle", "busy", "draining", "stopped"] = "idle"
    kinds: list[str] = []
    device: str = ""
    """The runner's device as configured (`cpu`, `cuda:0`)."""
    host_stats: HostStats | None = None
    instance: str = ""
    """Unique per runner process: a new value under the same `runner_id` means the runner restarted."""
    released_runs: list[str] = []
    """Runs the previous process of this runner id held when it died; this process freed their attempt claims
    and handed them on (they run again as a next attempt). Sent by every heartbeat of the new process."""
    targets: list[str] = []
    """Names of the container targets this runner may `docker exec` into (its targets file), sorted."""


RunEvent = (
    RunQueued
    | RunClaimed
    | RunStarted
    | RunProgress
    | RunMetrics
    | RunLog
    | RunCheckpoint
    | RunArtifact
    | RunCompleted
    | RunFailed
    | RunCancelRequested
    | RunCanceled
    | RunRequeued
    | RunPaused
    | RunUnpaused
)
Event = RunEvent | RunnerHeartbeat

TERMINAL_EVENT_TYPES = frozenset({"run.completed", "run.failed", "run.canceled"})

event_decoder = msgspec.json.Decoder(Event)
encoder = msgspec.json.Encoder()
