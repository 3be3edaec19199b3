"""What the REST API takes and gives: msgspec Structs, documented in the OpenAPI schema.

Request types reject unknown fields (`forbid_unknown_fields=True`): a typo is a 422, not a silent default.
The run-creation types are derived from the bus's `RunSpec` union, so every run kind added there is accepted
here with no change: each member gets a `Create<Spec>` twin with the REST-only fields `pool`, `priority` and
`requirements`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
import typing
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect
from msgspec import UNSET, Meta, UnsetType

from shared import names
from shared.contracts.commands import Requirements, RunSpec, RunSpecBase
from shared.contracts.common import TOKEN_RE

PROJECT_NAME_RE = names.NAME

ProjectName = Annotated[str, Meta(pattern=PROJECT_NAME_RE, description="Unique per owner; letters, digits, '.', '_', '-'")]
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


TargetName = Annotated[str, Meta(pattern=names.SHORT_NAME)]


class ProjectCreate(Request):
    name: ProjectName
    description: Text = ""
    objective: Text = ""
    task_type: Annotated[str, Meta(max_length=64)] = ""
    owner: Short = ""
    dataset_name: Annotated[str, Meta(max_length=256)] = ""
    training_yaml_name: Annotated[str, Meta(max_length=256)] = ""
    container_target: TargetName | None = None
    """Default container target of the project's `container` runs with backend `docker`."""
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
    container_target: TargetName | None | UnsetType = UNSET
    tags: Tags | UnsetType = UNSET
    status: ProjectStatus | UnsetType = UNSET


class MemberSet(Request):
    role: Literal["owner", "member", "viewer"]
    """owner: everything, members too; member: runs and configs; viewer: reads only."""


class ProjectView(msgspec.Struct, kw_only=True):
    id: str
    name: str
    owner_id: str | None
    """The user who created the project."""
    description: str
    objective: str
    task_type: str
    owner: str
    dataset_name: str
    training_yaml_name: str
    container_target: str | None
    tags: list[str]
    status: str
    runs_started: int
    created_at: datetime
    updated_at: datetime


# -- runs ------------------------------------------------------------------------------------------------


def _run_spec_members() -> tuple[type[RunSpecBase], ...]:
    return typing.get_args(RunSpec) or (RunSpec,)  # type: ignore[return-value]


def field_docs(cls: type) -> dict[str, str]:
    """The docstrings under a Struct's fields (`name: type = default` then a string), its bases' too: what the
    OpenAPI document shows as each request field's description (msgspec itself keeps no field docstrings)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__ in ("builtins", "msgspec") or klass.__module__.startswith("msgspec."):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in itertools.pairwise(body):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _documented(tp: Any, description: str | None, default: Any = msgspec.NODEFAULT) -> Any:
    """`tp` with a description and (for fields the REST request leaves UNSET) the spec's default, both shown in
    the OpenAPI document (Litestar reads `extra_json_schema["extra"]` as extra schema keys)."""
    extra: dict[str, Any] = {}
    if default is not msgspec.NODEFAULT and default is not None:
        extra["extra"] = {"default": msgspec.to_builtins(default)}
    extra_keys = _bounds(msgspec.inspect.type_info(tp))
    if extra_keys:
        extra.setdefault("extra", {}).update(extra_keys)
    if description is None and not extra:
        return tp
    return Annotated[tp, Meta(description=description, extra_json_schema=extra or None)]


_BOUNDS = {"ge": "minimum", "gt": "exclusive_minimum", "le": "maximum", "lt": "exclusive_maximum",
           "min_length": "min_length", "max_length": "max_length"}


def _bounds(info: Any) -> dict[str, Any]:
    """The bounds of a type as OpenAPI schema keys. Litestar drops those of 0 and every bound of an optional
    type (`Annotated[str, Meta(max_length=...)] | None`); given again as extra keys, they reach the document."""
    if isinstance(info, msgspec.inspect.UnionType):
        arms = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(arms) != 1:
            return {}
        info = arms[0]
    if not isinstance(info, msgspec.inspect.IntType | msgspec.inspect.FloatType | msgspec.inspect.StrType):
        return {}
    return {key: getattr(info, name) for name, key in _BOUNDS.items() if getattr(info, name, None) is not None}


def _spec_default(f: msgspec.structs.FieldInfo) -> Any:
    if f.default is not msgspec.NODEFAULT:
        return f.default
    if f.default_factory is not msgspec.NODEFAULT:
        return f.default_factory()
    return msgspec.NODEFAULT


def _create_type(spec_cls: type[RunSpecBase]) -> type[msgspec.Struct]:
    overlay = REQUEST_OVERLAYS.get(spec_cls.__struct_config__.tag)  # type: ignore[arg-type]
    if overlay is not None:
        return _request_type(spec_cls, overlay)
    docs = field_docs(spec_cls)
    described: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for f in msgspec.structs.fields(spec_cls):  # the spec's fields again, with their docstrings
        if f.name in docs or _bounds(msgspec.inspect.type_info(f.type)):
            default = (f.default if f.default is not msgspec.NODEFAULT
                       else msgspec.field(default_factory=f.default_factory)
                       if f.default_factory is not msgspec.NODEFAULT else msgspec.NODEFAULT)
            tp = _documented(f.type, docs.get(f.name))
            described.append((f.name, tp) if default is msgspec.NODEFAULT else (f.name, tp, default))
    return msgspec.defstruct(
        f"Create{spec_cls.__name__}",
        [*described, ("pool", Pool, "cpu"), ("priority", Priority, 50),
         ("requirements", RunRequirements | None, None)],
        bases=(spec_cls,),
        tag=spec_cls.__struct_config__.tag,
        forbid_unknown_fields=True,
        kw_only=True,
        frozen=True,
        module=__name__,
    )


# -- run kinds whose spec the gateway completes ------------------------------------------------------------
# Clients never send server paths: a `yolo.*` request names a registered dataset, a model (built-in name,
# library version or artifact), a saved architecture, uploaded images; `gateway.services.yolo_specs` turns
# those references into the spec's paths and URIs. Every field of these requests is optional (UNSET), so
# that a saved configuration (`config`) can supply what the request leaves out; the spec's defaults apply
# to what neither gives.


class RunRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, tag_field="kind"):
    """Base of REST run requests that `gateway.services.yolo_specs.resolve_spec` turns into a bus spec."""

    def params(self) -> dict[str, Any]:
        """The fields the client set, as JSON values (no `kind`)."""
        values = msgspec.to_builtins(self)
        values.pop("kind", None)
        return values


Ref = Annotated[str, Meta(min_length=1, max_length=256)]
Name = Annotated[str, Meta(pattern=names.NAME,
                           description="Letters, digits, `.`, `_`, `-`; up to 128")]
ImageRef = Annotated[str, Meta(min_length=1, max_length=512)]


@dataclasses.dataclass(frozen=True)
class RequestOverlay:
    """How a run kind's REST request differs from its bus spec."""

    server_fields: frozenset[str]
    """Spec fields only the gateway fills in (paths); a client sending one gets a 422."""
    added: tuple[tuple[str, Any, str], ...]
    """REST-only fields: (name, type, description)."""


_DATASET = ("dataset", Ref, "Registered dataset, by id or name: its latest version; `name:3` for version 3")
_CONFIG = ("config", Name, "Saved configuration of the project whose params fill what this request leaves out")
_MODEL_DOC = ("A built-in name (`yolov8n`, `yolo11s-cls`: the pretrained `.pt` when the deployment has it, else "
              "the untrained architecture), `library:<model>[:<version>]` or `library:<version id>` (weights "
              "library), or `artifact:<id>` (an exported or trained model file of a run)")

REQUEST_OVERLAYS: dict[str, RequestOverlay] = {
    "yolo.train": RequestOverlay(frozenset({"data", "dataset_id", "dataset_version"}), (
        _DATASET,
        ("architecture", Name, "Saved architecture (POST /architectures) to train; `model` then names weights "
                               "to transfer into it, or is left out"),
        ("register_as", Name, "Weights-library model that receives the best weights (default: the project's "
                              "name, or `<project>-<task>` if that model holds another task)"),
        _CONFIG,
    )),
    "yolo.val": RequestOverlay(frozenset({"data", "dataset_id", "dataset_version"}), (_DATASET, _CONFIG)),
    "yolo.export": RequestOverlay(frozenset({"data"}), (
        ("dataset", Ref, "Calibration dataset for int8 export"), _CONFIG)),
    "yolo.predict": RequestOverlay(frozenset({"sources"}), (
        ("images", Annotated[list[ImageRef], Meta(min_length=1, max_length=1000)],
         "Upload ids (POST /uploads), `dataset:<ref>:<split>:<index>` or `dataset:<ref>:<split>` (a whole split)"),
        _CONFIG,
    )),
}
"""The run kinds whose requests carry references instead of paths."""

FIELD_DOCS = {"model": _MODEL_DOC}


def _request_type(spec_cls: type[RunSpecBase], overlay: RequestOverlay) -> type[msgspec.Struct]:
    fields: list[tuple[str, Any, Any]] = []
    docs = {**field_docs(spec_cls), **FIELD_DOCS}
    for f in msgspec.structs.fields(spec_cls):
        if f.name not in overlay.server_fields:
            tp = _documented(f.type, docs.get(f.name), _spec_default(f))
            fields.append((f.name, typing.Union[tp, UnsetType], UNSET))  # noqa: UP007
    for name, tp, doc in overlay.added:
        fields.append((name, typing.Union[Annotated[tp, Meta(description=doc)], UnsetType], UNSET))  # noqa: UP007
    fields += [("pool", _documented(Pool, None, "cpu") | UnsetType, UNSET),
               ("priority", _documented(Priority, None, 50) | UnsetType, UNSET),
               ("requirements", RunRequirements | None | UnsetType, UNSET)]
    return msgspec.defstruct(
        f"Create{spec_cls.__name__}",
        fields,
        bases=(RunRequest,),
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
REQUEST_TYPES: dict[str, type[msgspec.Struct]] = {
    cls.__struct_config__.tag: request for request, cls in RUN_CREATE_TYPES.items()  # type: ignore[misc]
}
"""Run kind → its REST request type."""

RunCreate = typing.Union[tuple(RUN_CREATE_TYPES)]  # type: ignore[valid-type]  # noqa: UP007
"""Body of `POST /projects/{ref}/runs`: a run spec tagged by `kind`, plus `pool` and `priority`."""


def to_run_spec(
    request: msgspec.Struct,
) -> tuple[RunSpecBase | RunRequest, str | None, int | None, Requirements | None]:
    """(bus spec, pool, priority, requirements) of a run-creation request; for a `RunRequest` the request
    itself and no pool or priority (`create_run` resolves it, and they may come from a saved configuration)."""
    req = request.requirements  # type: ignore[attr-defined]
    requirements = (msgspec.convert(msgspec.to_builtins(req), Requirements)
                    if req is not None and req is not UNSET else None)
    if isinstance(request, RunRequest):
        return request, None, None, requirements
    spec_cls = RUN_CREATE_TYPES[type(request)]
    spec = spec_cls(**{name: getattr(request, name) for name in spec_cls.__struct_fields__})
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
    options: dict[str, Any] = {}
    """What the request named beyond the spec (yolo kinds): model/dataset references as given, config,
    register_as, model_version_id."""
    registration: dict[str, Any] | None = None
    """A completed `yolo.train` run: the library version its best weights became (`model`, `version`,
    `model_version_id`), or `error`."""
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


# -- webhooks (docs/operations.md, "Webhooks") -------------------------------------------------------------
WebhookEventType = Annotated[str, Meta(pattern=r"^run\.[a-z_]{1,40}$", description="An event type: run.completed, ...")]


class WebhookCreate(Request):
    url: Annotated[str, Meta(min_length=1, max_length=2048, description="http(s) URL the events are POSTed to")]
    event_types: Annotated[list[WebhookEventType], Meta(min_length=1, max_length=32)] = msgspec.field(
        default_factory=lambda: ["run.completed", "run.failed", "run.canceled"])
    """The event types wanted; the terminal ones by default."""
    secret: Annotated[str, Meta(min_length=16, max_length=256)] | None = None
    """HMAC key of the signatures; unset: one is generated. Returned in this answer only."""


class WebhookView(msgspec.Struct, kw_only=True):
    id: str
    project_id: str
    url: str
    event_types: list[str]
    created_at: datetime


class WebhookCreated(WebhookView, kw_only=True):
    secret: str
    """Shown this once: keep it where the receiver can read it."""


class WebhookPage(msgspec.Struct, kw_only=True):
    items: list[WebhookView]
    total: int
    limit: int
    offset: int


class WebhookDeliveryView(msgspec.Struct, kw_only=True):
    id: str
    """Sent as `Trainforge-Delivery`, the same on every attempt."""
    webhook_id: str
    event_id: str
    event_type: str
    run_id: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


class WebhookDeliveryPage(msgspec.Struct, kw_only=True):
    items: list[WebhookDeliveryView]
    total: int
    limit: int
    offset: int


# -- sweeps (docs/operations.md, "Sweeps") -----------------------------------------------------------------
SweepValue = float | int | str | bool
SweepParam = Literal["lr0", "batch", "imgsz", "optimizer", "epochs", "hsv_h", "hsv_s", "hsv_v", "degrees",
                     "translate", "scale", "shear", "perspective", "flipud", "fliplr", "mosaic", "mixup",
                     "copy_paste", "erasing", "close_mosaic"]
"""What a sweep may vary: training settings and (through `extra`) Ultralytics' augmentation settings."""


class SweepCreate(Request):
    spec: dict[str, Any]
    """A yolo.train run request (as for `POST /projects/{ref}/runs`, `kind` optional) every trial starts from."""
    space: Annotated[dict[SweepParam, Annotated[list[SweepValue], Meta(min_length=1, max_length=64)]],
                     Meta(min_length=1)]
    """Values to try, per setting: `{"lr0": [0.01, 0.001], "optimizer": ["SGD", "AdamW"], "fliplr": [0, 0.5]}`."""
    method: Literal["grid", "random"] = "grid"
    """grid: every combination (the first `trials` of them); random: `trials` combinations drawn with `seed`."""
    trials: Annotated[int, Meta(ge=1, le=200)] | None = None
    """How many trials; grid default: every combination."""
    metric: Annotated[str, Meta(min_length=1, max_length=256)] = "metrics/mAP50-95(B)"
    """A key of the trials' latest metrics (`GET /runs/{id}`, `latest_metrics`)."""
    direction: Literal["maximize", "minimize"] = "maximize"
    parallelism: Annotated[int, Meta(ge=1, le=64)] = 2
    """At most this many trials unfinished at once."""
    seed: Annotated[int, Meta(ge=0)] = 0


class SweepTrialView(msgspec.Struct, kw_only=True):
    index: int
    params: dict[str, Any]
    run_id: str | None
    status: str
    """pending (not started yet), the run's status, or completed / failed / canceled."""
    value: float | None
    """The sweep's metric, once the trial completed."""
    error: str | None = None


class SweepView(msgspec.Struct, kw_only=True):
    id: str
    project_id: str
    status: Literal["running", "completed", "canceled"]
    method: str
    metric: str
    direction: str
    parallelism: int
    space: dict[str, Any]
    base: dict[str, Any]
    best_trial: int | None
    best_run_id: str | None = None
    best_value: float | None = None
    created_at: datetime
    finished_at: datetime | None
    trials: list[SweepTrialView] = []


class SweepPage(msgspec.Struct, kw_only=True):
    items: list[SweepView]
    total: int
    limit: int
    offset: int
