"""What the client returns: msgspec Structs with the fields the API answers (`GET /api/v1/...`).

Unknown fields are ignored (a newer server may add some); `tests/unit/test_client_types.py` checks that each
Struct has the fields of the gateway view it mirrors. Run events are the platform's own event contracts
(`shared.contracts.events`: `RunProgress`, `RunMetrics`, `RunCheckpoint`, `RunLog`, `RunCompleted`, ...).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from shared.contracts.events import (
    RunArtifact,
    RunCanceled,
    RunCancelRequested,
    RunCheckpoint,
    RunClaimed,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunLog,
    RunMetrics,
    RunProgress,
    RunQueued,
    RunRequeued,
    RunStarted,
)

__all__ = [
    "TERMINAL_STATUSES",
    "Artifact",
    "AugmentPreview",
    "AugmentedBox",
    "AugmentedImage",
    "Box",
    "Checkpoint",
    "ClassScore",
    "Dataset",
    "DatasetDetail",
    "DatasetStats",
    "ImagePrediction",
    "LogLine",
    "MetricsPoint",
    "Model",
    "ModelDetail",
    "ModelVersion",
    "PerClassMetrics",
    "Project",
    "QueueInfo",
    "Run",
    "RunArtifact",
    "RunCancelRequested",
    "RunCanceled",
    "RunCheckpoint",
    "RunClaimed",
    "RunCompleted",
    "RunDetail",
    "RunEvent",
    "RunFailed",
    "RunLog",
    "RunMetrics",
    "RunProgress",
    "RunQueued",
    "RunRequeued",
    "RunStarted",
    "ValMetrics",
]

TERMINAL_STATUSES = frozenset({"completed", "failed", "canceled"})


class View(msgspec.Struct, kw_only=True):
    """Base of the API's answers."""


class Project(View, kw_only=True):
    id: str
    name: str
    owner_id: str | None
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


class Checkpoint(View, kw_only=True):
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


class Artifact(View, kw_only=True):
    id: str
    run_id: str | None
    name: str
    kind: str
    """`model` (exported or trained weights), `image`, `file`, ..."""
    uri: str
    size_bytes: int | None
    media_type: str | None
    meta: dict[str, Any]
    created_at: datetime


class LogLine(View, kw_only=True):
    position: int
    attempt: int
    ts: datetime
    stream: str
    text: str


class MetricsPoint(View, kw_only=True):
    """One `run.metrics` event as the projection keeps it (`GET /runs/{id}/metrics`)."""

    position: int
    attempt: int
    ts: datetime
    step: int | None
    epoch: int | None
    metrics: dict[str, float]


class QueueInfo(View, kw_only=True):
    position: int | None
    reason: str | None


class Run(View, kw_only=True):
    id: str
    project_id: str
    kind: str
    pool: str
    priority: int
    status: str
    """queued, claimed, running, canceling, completed, failed, canceled."""
    spec: dict[str, Any]
    progress: float
    """Fraction done, 0..1."""
    progress_detail: dict[str, Any] | None
    latest_metrics: dict[str, Any]
    attempt: int
    runner_id: str | None
    failure_cause: str | None
    error: str | None
    exit_code: int | None
    result: dict[str, Any] | None
    cancel_requested: bool
    resume_of: str | None
    resume_checkpoint_id: str | None
    requirements: dict[str, Any] | None
    options: dict[str, Any] = {}
    registration: dict[str, Any] | None = None
    """A completed `yolo.train`: the library version its best weights became (`model`, `version`)."""
    created_at: datetime
    enqueued_at: datetime | None
    claimed_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class RunDetail(Run, kw_only=True):
    queue: QueueInfo | None = None
    checkpoints: list[Checkpoint] = []
    """Latest first, up to 20."""
    artifacts: list[Artifact] = []
    """Latest first, up to 50."""
    recent_logs: list[LogLine] = []


class Dataset(View, kw_only=True):
    id: str
    name: str
    owner_id: str | None
    status: str
    source: str
    source_path: str | None
    format: str | None
    task: str | None
    classes: list[str]
    splits: dict[str, int]
    images: int
    instances: int
    images_without_labels: int
    broken_images: int
    problems_total: int
    last_version: int = 0
    created_at: datetime
    updated_at: datetime


class DatasetDetail(Dataset, kw_only=True):
    format_reason: str | None = None
    split_by: str | None = None
    ratios: dict[str, float] | None = None
    seed: int | None = None
    kpt_shape: list[int] | None = None
    report: dict[str, Any] | None = None


class AugmentedBox(View, kw_only=True):
    class_id: int
    class_name: str
    cx: float
    cy: float
    w: float
    h: float
    """Normalised centre and size, as the training batch holds them."""
    x1: float
    y1: float
    x2: float
    y2: float
    """Pixel corners in the augmented image."""


class AugmentedImage(View, kw_only=True):
    index: int
    source: str
    width: int
    height: int
    media_type: str
    image: str
    """Base64 JPEG; `data()` decodes it."""
    boxes: list[AugmentedBox]

    def data(self) -> bytes:
        """The image file's bytes (JPEG)."""
        import base64

        return base64.b64decode(self.image)


class AugmentPreview(View, kw_only=True):
    """What Ultralytics' training augmentation made of a dataset's images (`Client.augment`)."""

    dataset_id: str
    dataset_name: str
    version: int
    seed: int
    imgsz: int
    settings: dict[str, float]
    jpeg_quality: int
    train_images: int
    images: list[AugmentedImage]


class DatasetStats(View, kw_only=True):
    """A dataset's statistics (`Client.dataset_stats`); the nested parts as the API answers them
    (docs/datasets.md, Statistics)."""

    task: str
    classes: list[str]
    images: int
    instances: int
    splits: dict[str, dict[str, Any]]
    class_balance: list[dict[str, Any]]
    imbalance_ratio: float | None
    boxes_normalised: dict[str, Any] | None
    boxes_pixels: dict[str, Any] | None
    boxes_per_image: dict[str, Any]
    image_sizes: dict[str, Any]
    images_without_labels: int
    duplicates: list[dict[str, Any]]
    duplicate_groups: int
    leaks: int
    leaks_by_splits: dict[str, int]
    tiny_boxes: list[dict[str, Any]]
    tiny_boxes_total: int
    near_empty_boxes_total: int
    tiny_box_px: float
    near_empty_area: float
    dataset_id: str
    dataset_name: str
    version: int
    computed_at: datetime


class ModelVersion(View, kw_only=True):
    id: str
    model_id: str
    model_name: str
    version: int
    ref: str
    """`library:<model>:<version>`: how a run names these weights."""
    format: str
    task: str
    class_names: list[str]
    metrics: dict[str, Any]
    size_bytes: int
    sha256: str = ""
    source_run_id: str | None
    dataset_id: str | None
    parent_version_id: str | None
    created_at: datetime
    dataset_version: int | None = None


class Sample(View, kw_only=True):
    """One image of a dataset's working copy; annotations in pixels."""

    id: str
    split: str
    name: str
    sha256: str
    width: int | None
    height: int | None
    annotations: list[dict[str, Any]]
    tags: list[str]
    problems: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime


class DatasetVersion(View, kw_only=True):
    """A frozen version of a dataset; `ref` (`name:N`) is what a run's `dataset` names."""

    number: int
    ref: str
    classes: list[str]
    images: int
    instances: int
    splits: dict[str, Any]
    changes: dict[str, Any] | None
    used_by_models: int
    created_at: datetime


class Model(View, kw_only=True):
    id: str
    name: str
    task: str
    description: str
    versions_count: int
    latest: ModelVersion | None
    created_at: datetime
    updated_at: datetime


class ModelDetail(Model, kw_only=True):
    versions: list[ModelVersion]


class Box(View, kw_only=True):
    """A detected object: corners in pixels of the original image."""

    xyxy: list[float]
    class_id: int
    name: str
    score: float


class ClassScore(View, kw_only=True):
    class_id: int
    name: str
    score: float


class ImagePrediction(View, kw_only=True):
    """One image's predictions: `boxes` (detection-like models) or `classes` (top 5 of a classifier)."""

    width: int
    height: int
    speed_ms: dict[str, float] = {}
    boxes: list[Box] = []
    classes: list[ClassScore] = []
    annotated_artifact_id: str | None = None
    run_id: str = ""
    """The `yolo.predict` run that made it."""


class PerClassMetrics(View, kw_only=True):
    class_id: int
    name: str
    precision: float
    recall: float
    ap50: float
    ap50_95: float


class ValMetrics(View, kw_only=True):
    """Validation metrics (a `yolo.val` run's result). Detection-like tasks fill mAP50, mAP50-95, precision,
    recall, F1 and per-class AP; classification fills top1 and top5."""

    task: str
    metrics: dict[str, float]
    """Ultralytics' `results_dict`, as reported."""
    fitness: float | None = None
    speed_ms: dict[str, float] = {}
    precision: float | None = None
    recall: float | None = None
    mAP50: float | None = None  # noqa: N815 - the metric's name
    mAP50_95: float | None = msgspec.field(default=None, name="mAP50-95")  # noqa: N815
    f1: float | None = None
    per_class: list[PerClassMetrics] = []
    top1: float | None = None
    top5: float | None = None
    run_id: str = ""
