"""What the REST API takes and gives: msgspec Structs, documented in the OpenAPI schema.

Request types reject unknown fields (`forbid_unknown_fields=True`): a typo is a 422, not a silent default.
The run-creation types are derived from the bus's `RunSpec` union, so every run kind added there is accepted
here with no change: each member gets a `Create<Spec>` twin with the REST-only fields `pool`, `priority` and
`requirements`.
"""

from __future__ import annotations

import typing
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from shared.contracts.commands import Requirements, RunSpec, RunSpecBase
from shared.contracts.common import TOKEN_RE

PROJECT_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

ProjectName = Annotated[str, Meta(pattern=PROJECT_NAME_RE, description="Unique; letters, digits, '.', '_', '-'")]
Text = Annotated[str, Meta(max_length=10_000)]
Short = Annotated[str, Meta(max_length=128)]
Tag = Annotated[str, Meta(min_length=1, max_length=64)]
Tags = Annotated[list[Tag], Meta(max_length=50)]
Pool = Annotated[str, Meta(pattern=TOKEN_RE.pattern, description="Runner pool that runs the job")]
Priority = Annotated[int, Meta(ge=0, le=100)]
ProjectStatus = Literal["active", "archived"]


class Request(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Base of REST request bodies."""


class RunRequirements(Requirements, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """What a runner must have to take the run: device kind (`cpu`, `cuda`, `any`), GPU memory, GPU count."""


# -- projects --------------------------------------------------------------------------------------------


class ProjectCreate(Request):
    name: ProjectName
    description: Text = ""
    objective: Text = ""
    task_type: Annotated[str, Meta(max_length=64)] = ""
    owner: Short = ""
    dataset_name: Annotated[str, Meta(max_length=256)] = ""
    training_yaml_name: Annotated[str, Meta(max_length=256)] = ""
    tags: Tags = []


class ProjectUpdate(Request):
    """Only the fields present change."""

    name: ProjectName | UnsetType = UNSET
    description: Text | UnsetType = UNSET
    objective: Text | UnsetType = UNSET
    task_type: Annotated[str, Meta(max_length=64)] | UnsetType = UNSET
    owner: Short | UnsetType = UNSET
    dataset_name: Annotated[str, Meta(max_length=256)] | UnsetType = UNSET
    training_yaml_name: Annotated[str, Meta(max_length=256)] | UnsetType = UNSET
    tags: Tags | UnsetType = UNSET
    status: ProjectStatus | UnsetType = UNSET


class ProjectView(msgspec.Struct, kw_only=True):
    id: str
    name: str
    description: str
    objective: str
    task_type: str
    owner: str
    dataset_name: str
    training_yaml_name: str
    tags: list[str]
    status: str
    runs_started: int
    created_at: datetime
    updated_at: datetime


# -- runs ------------------------------------------------------------------------------------------------


def _run_spec_members() -> tuple[type[RunSpecBase], ...]:
    return typing.get_args(RunSpec) or (RunSpec,)  # type: ignore[return-value]


def _create_type(spec_cls: type[RunSpecBase]) -> type[msgspec.Struct]:
    return msgspec.defstruct(
        f"Create{spec_cls.__name__}",
        [("pool", Pool, "cpu"), ("priority", Priority, 50), ("requirements", RunRequirements | None, None)],
        bases=(spec_cls,),
        tag=spec_cls.__struct_config__.tag,
        forbid_unknown_fields=True,
        kw_only=True,
        frozen=True,
        module=__name__,
    )


RUN_CREATE_TYPES: dict[type[msgspec.Struct], type[RunSpecBase]] = {
    _create_type(cls): cls for cls in _run_spec_members()
}
"""REST request type → the bus spec it becomes."""

RunCreate = typing.Union[tuple(RUN_CREATE_TYPES)]  # type: ignore[valid-type]  # noqa: UP007
"""Body of `POST /projects/{ref}/runs`: a run spec tagged by `kind`, plus `pool` and `priority`."""


def to_run_spec(request: msgspec.Struct) -> tuple[RunSpecBase, str, int, Requirements | None]:
    """(bus spec, pool, priority, requirements) of a run-creation request."""
    spec_cls = RUN_CREATE_TYPES[type(request)]
    spec = spec_cls(**{name: getattr(request, name) for name in spec_cls.__struct_fields__})
    req = request.requirements  # type: ignore[attr-defined]
    requirements = msgspec.convert(msgspec.to_builtins(req), Requirements) if req is not None else None
    return spec, request.pool, request.priority, requirements  # type: ignore[attr-defined]


class ResumeRequest(Request):
    checkpoint_id: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    """Checkpoint of the source run to start from. Default: its latest resumable one."""
    pool: Pool | None = None
    """Pool for the new run. Default: the source run's pool."""


class CheckpointView(msgspec.Struct, kw_only=True):
    id: str
    run_id: str
    attempt: int
    uri: str
    step: int | None
    epoch: int | None
    size_bytes: int | None
    resumable: bool
    meta: dict[str, Any]
    created_at: datetime


class ArtifactView(msgspec.Struct, kw_only=True):
    id: str
    run_id: str | None
    name: str
    kind: str
    uri: str
    size_bytes: int | None
    media_type: str | None
    meta: dict[str, Any]
    created_at: datetime


class LogLineView(msgspec.Struct, kw_only=True):
    position: int
    """Position of the run.log event the line came in (SSE id; use it as `after`)."""
    attempt: int
    ts: datetime
    stream: str
    text: str


class MetricsView(msgspec.Struct, kw_only=True):
    position: int
    attempt: int
    ts: datetime
    step: int | None
    epoch: int | None
    metrics: dict[str, float]


class RunView(msgspec.Struct, kw_only=True):
    id: str
    project_id: str
    kind: str
    pool: str
    priority: int
    status: str
    spec: dict[str, Any]
    progress: float
    """Fraction done, 0..1."""
    progress_detail: dict[str, Any] | None
    latest_metrics: dict[str, Any]
    attempt: int
    runner_id: str | None
    failure_cause: str | None
    """For a failed run: `user` (the job failed) or `infrastructure` (the platform did)."""
    error: str | None
    exit_code: int | None
    result: dict[str, Any] | None
    cancel_requested: bool
    resume_of: str | None
    resume_checkpoint_id: str | None
    requirements: dict[str, Any] | None
    created_at: datetime
    enqueued_at: datetime | None
    claimed_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class QueueInfo(msgspec.Struct, kw_only=True):
    """Where a queued run stands in the gateway's line."""

    position: int | None
    """1 = the next run of its pool to start; None until the dispatcher has looked at it."""
    reason: str | None
    """Why it does not start now (a limit, no fitting runner, all runners busy)."""


class QueueEntry(msgspec.Struct, kw_only=True):
    position: int | None
    reason: str | None
    run_id: str
    project_id: str
    owner_id: str | None
    pool: str
    kind: str
    priority: int
    requirements: dict[str, Any] | None
    created_at: datetime


class QueuePage(msgspec.Struct, kw_only=True):
    items: list[QueueEntry]
    """The line: by pool, then place in it."""
    total: int


class RunDetail(RunView, kw_only=True):
    queue: QueueInfo | None = None
    """For a run the gateway holds back (queued, not yet handed to a runner): its place in line and why."""
    checkpoints: list[CheckpointView]
    """Latest first, up to 20."""
    artifacts: list[ArtifactView]
    """Latest first, up to 50."""
    recent_logs: list[LogLineView]
    """The last 50 log lines, oldest first."""


# -- pages -----------------------------------------------------------------------------------------------


class ProjectPage(msgspec.Struct, kw_only=True):
    items: list[ProjectView]
    total: int
    limit: int
    offset: int


class RunPage(msgspec.Struct, kw_only=True):
    items: list[RunView]
    total: int
    limit: int
    offset: int


class CheckpointPage(msgspec.Struct, kw_only=True):
    items: list[CheckpointView]
    total: int
    limit: int
    offset: int


class ArtifactPage(msgspec.Struct, kw_only=True):
    items: list[ArtifactView]
    total: int
    limit: int
    offset: int


class LogPage(msgspec.Struct, kw_only=True):
    items: list[LogLineView]
    next_after: int
    """Pass as `after` to read on; equal to `after` when nothing new came."""


class MetricsPage(msgspec.Struct, kw_only=True):
    items: list[MetricsView]
    next_after: int


# -- rows → views ----------------------------------------------------------------------------------------

_V = typing.TypeVar("_V", bound=msgspec.Struct)


def from_row(view: type[_V], row: object, **extra: Any) -> _V:
    """A view filled from the same-named attributes of an ORM row (plus `extra`)."""
    values = {name: getattr(row, name) for name in view.__struct_fields__ if name not in extra}
    return view(**values, **extra)
