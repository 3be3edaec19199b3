"""Jobs: what the gateway puts on the work-queue stream for a runner pool to claim.

A `Job` wraps one run's `RunSpec`, a tagged union on `kind`. Each later capability adds a spec with its own
tag (`yolo.train`, `yolo.val`, ...); runners that do not know a kind fail the run with cause
`infrastructure` instead of guessing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from shared.contracts.common import utcnow
from shared.contracts.runspec import RunSpecBase  # defined there, imported from here too
from shared.contracts.yolo import YoloExportSpec, YoloPredictSpec, YoloTrainSpec, YoloValSpec

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class ContainerSpec(RunSpecBase, frozen=True, kw_only=True, tag="container"):
    """Run a shell command as a training job.

    backend `local`: bash in a working directory on the runner's host (only when the runner enables it).
    backend `docker`: `docker exec` into one of the runner's configured container targets.
    """

    start_command: Annotated[str, msgspec.Meta(min_length=1, max_length=16_384)]
    backend: Literal["local", "docker"] = "local"
    target: str | None = None
    """Name of a container target the runner knows (backend `docker`)."""
    workdir: str | None = None
    """Working directory, relative to the runner's configured root (local) or the target's workdir (docker)."""
    env: dict[str, str] = {}
    dataset_name: str | None = None
    """The project's dataset (backend `docker`): a file or folder under the target's host root, checked
    before the command starts."""
    training_yaml_name: str | None = None
    """The project's training YAML (backend `docker`): a file under the target's host root, checked too."""
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None


RunSpec = ContainerSpec | YoloTrainSpec | YoloValSpec | YoloExportSpec | YoloPredictSpec
"""Union of every run kind; extended by the YOLO and container issues."""


class ResumeFrom(msgspec.Struct, frozen=True, kw_only=True):
    """Where a resumed run starts: a checkpoint recorded by an earlier run."""

    source_run_id: str
    checkpoint_id: str
    uri: str
    """Location of the checkpoint: a path on the runner's host, or an artifact-store URI."""
    step: int | None = None
    epoch: int | None = None


class Requirements(msgspec.Struct, frozen=True, kw_only=True):
    """What a runner must have to take a run; the dispatcher and the runner both check it."""

    device: Literal["cpu", "cuda", "any"] = "any"
    """Kind of device: `cuda` needs a GPU runner, `cpu` a CPU runner, `any` takes either."""
    min_gpu_memory_mb: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Total memory each GPU must have (implies `device: cuda`)."""
    gpus: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """GPUs the run needs on one runner (counts only for `device: cuda` or a memory minimum)."""

    @property
    def needs_gpu(self) -> bool:
        return self.device == "cuda" or self.min_gpu_memory_mb is not None


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Limits on runs running at once, as the gateway had them when it published the job; 0 = none.

    The runner enforces them with leases in KV `subjects.leases_bucket` when it claims the job."""

    total: int = 0
    per_user: int = 0
    per_project: int = 0


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """The message on `subjects.job(pool)`. Its `Nats-Msg-Id` is the run id, so a retried publish is dropped."""

    v: int = 1
    run_id: str
    project_id: str
    pool: str
    spec: RunSpec
    resume: ResumeFrom | None = None
    owner_id: str | None = None
    priority: int = 50
    created_at: datetime = msgspec.field(default_factory=utcnow)
    requirements: Requirements | None = None
    """What the runner must have (device kind, GPU memory, GPU count); None: anything of the pool."""
    limits: Limits | None = None
    """Concurrency limits the claiming runner enforces with leases; None: none."""
    request_id: str | None = None
    """The `X-Request-ID` of the HTTP request that created the run (runners log it with the job's lines);
    None: not created over HTTP, or by a gateway older than this field."""


job_decoder = msgspec.json.Decoder(Job)
