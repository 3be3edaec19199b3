"""What the gateway asks a runner that has Ultralytics: validate a model YAML, list the export formats,
preview the training augmentation of a dataset.

Core NATS request/reply on `Subjects.yolo_service(operation)`; runners with Ultralytics installed answer in
the queue group `Subjects.yolo_service_group`, so exactly one of them replies. No responder (no such runner
online) or no reply within the request's bound: the gateway answers 503. Bodies are JSON (msgspec).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from shared.contracts.yolo import YoloPredictSpec

ARCHITECTURE = "architecture"
EXPORT_FORMATS = "export_formats"
AUGMENT = "augment"


class ArchitectureBudget(msgspec.Struct, frozen=True, kw_only=True):
    max_params: int
    max_gflops: float
    max_activation_mb: float


class ArchitectureCheck(msgspec.Struct, frozen=True, kw_only=True):
    """Validate `yaml` (build it, one forward pass at `imgsz`) in a child process of the runner limited to
    `memory_mb` of address space and `timeout_s` of wall time (the gateway's settings)."""

    yaml: str
    imgsz: int
    channels: int = 3
    memory_mb: int
    timeout_s: float
    budget: ArchitectureBudget


class ExportFormatsQuery(msgspec.Struct, frozen=True, kw_only=True):
    """No fields: every format Ultralytics knows, with whether the answering runner can produce it."""


class AugmentPreview(msgspec.Struct, frozen=True, kw_only=True):
    """Build the training dataset of `data` (a prepared data YAML on a path the runner reads, as a training
    gets it) with Ultralytics' own training transforms for `settings` (Ultralytics' argument names: mosaic,
    hsv_h, fliplr, ...; a missing one is Ultralytics' default) and answer `count` augmented images, seeded
    by `seed`, in a child process limited to `memory_mb` and `timeout_s`. `max_bytes`: the answer must fit
    (the bus's message size); JPEG quality goes down until it does. Result: see `runner.yolo.augment`."""

    data: str
    task: str
    imgsz: int
    seed: int
    count: int
    settings: dict[str, float] = {}
    draw_boxes: bool = True
    memory_mb: int
    timeout_s: float
    max_bytes: int = 1_000_000


class ServiceReply(msgspec.Struct, frozen=True, kw_only=True):
    """`ok`: `result` is the answer (an architecture report, valid or not; the export formats).
    `unavailable`: the runner could not work it out (validation process crashed, timed out, could not load
    torch); `error` says why, in a sentence for a 503."""

    status: Literal["ok", "unavailable"]
    result: Any = None
    error: str = ""
    runner_id: str = ""
    retry_after_s: int | None = None


class PredictRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Synchronous predict (`Subjects.predict(pool)`): run `spec` at once on a model the runner keeps loaded,
    answer its result, then record the run `run_id` (its row made by the gateway) with the usual events:
    run.claimed, run.started, run.artifact per annotated image, run.completed (or run.failed)."""

    run_id: str
    project_id: str
    spec: YoloPredictSpec
    images: list[bytes] = []
    """The images themselves (JSON: base64), in the order of `spec.sources`; given, the runner reads these and
    not the sources (the gateway stores the upload meanwhile, for the run's record)."""


class PredictReply(msgspec.Struct, frozen=True, kw_only=True):
    """`ok`: `result` as a `yolo.predict` run's (task, images, count, elapsed_s; an annotated image's
    `annotated_artifact_id` is recorded just after the answer). `failed`: the request itself is at fault
    (`error`: why; the run is recorded failed, cause `user`). `unavailable`: the runner could not do it."""

    status: Literal["ok", "failed", "unavailable"]
    result: dict[str, Any] | None = None
    error: str = ""
    runner_id: str = ""
    cached: bool = False
    """Whether the model was loaded already."""


architecture_check_decoder = msgspec.json.Decoder(ArchitectureCheck)
augment_preview_decoder = msgspec.json.Decoder(AugmentPreview)
service_reply_decoder = msgspec.json.Decoder(ServiceReply)
predict_request_decoder = msgspec.json.Decoder(PredictRequest)
predict_reply_decoder = msgspec.json.Decoder(PredictReply)
