"""YOLO run kinds (Ultralytics, run in-process by a runner): train, val, export, predict.

Paths in these specs (`data`, `model` weights, `sources`) are resolved by the gateway before the job is
published: a path on the runner's host, or an artifact-store URI (`file://...`, `nats-os://...`). A bare model
name (`yolov8n`, `yolo11s`, `yolov8n-cls`) means `<pretrained_dir>/<name>.pt` when the runner has it, else an
untrained model built from Ultralytics' `<name>.yaml`.

`YoloTrainSpec.extra` passes further Ultralytics train arguments through an allow-list
(`TRAIN_EXTRA_ARGS`, built from `ultralytics/cfg/default.yaml`); `validate_train_extra` names every bad entry.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from shared import names as _names
from shared.contracts.runspec import RunSpecBase

Device = Annotated[str, msgspec.Meta(pattern=_names.whole(r"auto|cpu|cuda(:\d{1,2})?"))]
"""`auto` (the runner's device), `cpu`, or `cuda:N`."""
ModelRef = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
PathRef = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
ImageSize = Annotated[int, msgspec.Meta(ge=32, le=8192)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

Optimizer = Literal["auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp"]
ExportFormat = Literal[
    "torchscript",
    "onnx",
    "openvino",
    "engine",
    "coreml",
    "coreai",
    "saved_model",
    "pb",
    "edgetpu",
    "litert",
    "paddle",
    "mnn",
    "ncnn",
    "imx",
    "rknn",
    "executorch",
    "axelera",
    "deepx",
    "qnn",
    "hailo",
    "ascend",
    "xilinx",
]
"""Ultralytics export formats (`format=`); `runner.yolo.export.export_formats()` says which this runner can make."""


class YoloTrainSpec(RunSpecBase, frozen=True, kw_only=True, tag="yolo.train"):
    model: ModelRef | None = "yolov8n"
    """Model name, or weights (path/URI). With `model_yaml`: weights to transfer into that architecture, or None."""
    model_yaml: Annotated[str, msgspec.Meta(min_length=1, max_length=65_536)] | None = None
    """A custom model architecture (Ultralytics model YAML), given inline."""
    data: PathRef
    """data.yaml (detect/segment/pose/obb) or a classification folder, on the runner's host."""
    dataset_id: str | None = None
    dataset_sha256: Sha256 | None = None
    """Content hash of the dataset's archive (`shared.dataset_archive`): a runner that cannot read `data` in
    place fetches the dataset by it."""
    dataset_version: int | None = None
    """The version of the dataset `data` is (the gateway fills both in from a run's `dataset`)."""
    epochs: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    batch: Annotated[int, msgspec.Meta(ge=-1, le=4096)] = 16
    """Batch size; -1 lets Ultralytics choose it from GPU memory (CUDA only)."""
    imgsz: ImageSize = 640
    lr0: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.01
    optimizer: Optimizer = "auto"
    device: Device = "auto"
    patience: Annotated[int, msgspec.Meta(ge=0)] = 100
    save_period: int = -1
    """Keep a numbered checkpoint every N epochs (besides the latest); < 1 disables."""
    seed: Annotated[int, msgspec.Meta(ge=0)] = 0
    extra: dict[str, Any] = {}
    """Further Ultralytics train arguments, see `TRAIN_EXTRA_ARGS`."""

    def __post_init__(self) -> None:
        if self.model is None and self.model_yaml is None:
            raise ValueError("one of `model` or `model_yaml` is required")
        if self.batch == 0:
            raise ValueError("`batch` must be >= 1, or -1 for automatic")


class YoloValSpec(RunSpecBase, frozen=True, kw_only=True, tag="yolo.val"):
    model: ModelRef
    data: PathRef
    dataset_id: str | None = None
    dataset_sha256: Sha256 | None = None
    dataset_version: int | None = None
    split: Literal["val", "test", "train"] = "val"
    imgsz: ImageSize = 640
    batch: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 16
    conf: Fraction | None = None
    """Confidence threshold; None: Ultralytics' validation default (0.001)."""
    iou: Fraction = 0.7
    device: Device = "auto"


class YoloExportSpec(RunSpecBase, frozen=True, kw_only=True, tag="yolo.export"):
    model: ModelRef
    format: ExportFormat = "onnx"
    half: bool = False
    int8: bool = False
    dynamic: bool = False
    simplify: bool = True
    opset: Annotated[int, msgspec.Meta(ge=7, le=30)] | None = None
    batch: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1
    imgsz: ImageSize = 640
    data: PathRef | None = None
    """Calibration data for int8 export."""
    device: Device = "auto"


class YoloPredictSpec(RunSpecBase, frozen=True, kw_only=True, tag="yolo.predict"):
    model: ModelRef
    """Weights (.pt), or an exported model (.onnx, .torchscript), or a model name."""
    sources: Annotated[list[PathRef], msgspec.Meta(min_length=1, max_length=10_000)]
    """Image paths or artifact URIs."""
    conf: Fraction = 0.25
    iou: Fraction = 0.7
    imgsz: ImageSize = 640
    max_det: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 300
    save: bool = True
    """Store annotated images as artifacts."""
    device: Device = "auto"


YoloSpec = YoloTrainSpec | YoloValSpec | YoloExportSpec | YoloPredictSpec


# -- train `extra`: the allow-list --------------------------------------------------------------------------
# Kinds: bool, int (with a minimum), number (int or float), fraction (number in [0, 1]), or a set of strings;
# a few arguments take several shapes and have their own check below. Left out on purpose: what Trainforge
# controls (task, mode, model, data, project, name, exist_ok, resume, save, save_dir, device, cfg, and the
# spec's own fields), arguments that read files from the host (pretrained as a path, distill_model, tracker),
# `time` (Ultralytics overwrites the stop flag with it, breaking cancel), and predict/export-only arguments.

_BOOL = "bool"
_NUMBER = "number"
_FRACTION = "fraction"

TRAIN_EXTRA_ARGS: dict[str, Any] = {
    # training loop
    "cache": "cache",
    "workers": ("int", 0),
    "pretrained": _BOOL,
    "cls_remap": _BOOL,
    "verbose": _BOOL,
    "deterministic": _BOOL,
    "single_cls": _BOOL,
    "rect": _BOOL,
    "cos_lr": _BOOL,
    "close_mosaic": ("int", 0),
    "amp": "amp",
    "fraction": "fraction_arg",
    "profile": _BOOL,
    "freeze": "freeze",
    "multi_scale": _FRACTION,
    "compile": "compile",
    "channels_last": _BOOL,
    "quantize": "quantize",
    # task-specific
    "overlap_mask": _BOOL,
    "mask_ratio": ("int", 1),
    "dropout": _FRACTION,
    # validation during training
    "val": _BOOL,
    "split": frozenset({"val", "test", "train"}),
    "save_json": _BOOL,
    "conf": _FRACTION,
    "iou": _FRACTION,
    "max_det": ("int", 1),
    "plots": _BOOL,
    "classes": "classes",
    # hyperparameters
    "lrf": _FRACTION,
    "momentum": _FRACTION,
    "weight_decay": _FRACTION,
    "warmup_epochs": _NUMBER,
    "warmup_momentum": _FRACTION,
    "warmup_bias_lr": _FRACTION,
    "box": _NUMBER,
    "cls": _NUMBER,
    "cls_pw": _FRACTION,
    "dfl": _NUMBER,
    "pose": _NUMBER,
    "kobj": _NUMBER,
    "rle": _NUMBER,
    "angle": _NUMBER,
    "dis": _NUMBER,
    "dlog": _NUMBER,
    "dgrad": _NUMBER,
    "dlam": _FRACTION,
    "nbs": ("int", 1),
    # augmentation
    "hsv_h": _FRACTION,
    "hsv_s": _FRACTION,
    "hsv_v": _FRACTION,
    "degrees": _NUMBER,
    "translate": _FRACTION,
    "scale": "scale",
    "shear": _NUMBER,
    "perspective": _FRACTION,
    "flipud": _FRACTION,
    "fliplr": _FRACTION,
    "bgr": _FRACTION,
    "mosaic": _FRACTION,
    "mixup": _FRACTION,
    "cutmix": _FRACTION,
    "copy_paste": _FRACTION,
    "copy_paste_mode": frozenset({"flip", "mixup"}),
    "auto_augment": frozenset({"randaugment", "autoaugment", "augmix"}),
    "erasing": _FRACTION,
}
"""Ultralytics train arguments accepted in `YoloTrainSpec.extra`, with the kind of value each takes."""

SPEC_FIELDS = frozenset({"epochs", "batch", "imgsz", "lr0", "optimizer", "device", "patience", "save_period", "seed"})
CONTROLLED_ARGS = frozenset(
    {"task", "mode", "model", "data", "project", "name", "exist_ok", "resume", "save", "save_dir", "cfg", "time"}
)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_extra_value(kind: Any, value: Any) -> str | None:
    """None when `value` fits `kind`, else what is wrong."""
    if value is None:
        return "must not be null"
    if kind == _BOOL:
        return None if isinstance(value, bool) else "must be a boolean"
    if kind == _NUMBER:
        return None if _is_number(value) else "must be a number"
    if kind == _FRACTION:
        if not _is_number(value):
            return "must be a number between 0 and 1"
        return None if 0.0 <= value <= 1.0 else "must be between 0 and 1"
    if isinstance(kind, tuple):  # ("int", minimum)
        if not _is_int(value):
            return "must be an integer"
        return None if value >= kind[1] else f"must be >= {kind[1]}"
    if isinstance(kind, frozenset):
        return None if value in kind else "must be one of " + ", ".join(sorted(kind))
    return _SPECIAL_CHECKS[kind](value)


def _check_cache(value: Any) -> str | None:
    return None if isinstance(value, bool) or value in {"ram", "disk"} else "must be true, false, 'ram' or 'disk'"


def _check_amp(value: Any) -> str | None:
    ok = isinstance(value, bool) or (isinstance(value, str) and value.lower() in {"fp16", "bf16", "fp32"})
    return None if ok else "must be true, false, 'fp16', 'bf16' or 'fp32'"


def _check_fraction_arg(value: Any) -> str | None:
    if isinstance(value, list):
        ok = len(value) in {2, 3} and all(
            (_is_int(x) and x >= 0) or (isinstance(x, float) and 0.0 <= x <= 1.0) for x in value
        )
        return None if ok else "must be a ratio in (0, 1], a count > 1, or [train, val(, test)] counts/ratios"
    if _is_int(value):
        return None if value >= 1 else "must be a ratio in (0, 1] or a count > 1"
    if isinstance(value, float):
        return None if 0.0 < value <= 1.0 else "must be a ratio in (0, 1] or a count > 1"
    return "must be a number or a list"


def _check_freeze(value: Any) -> str | None:
    if _is_int(value):
        return None if value >= 0 else "must be >= 0"
    if isinstance(value, list) and all(_is_int(x) or isinstance(x, str) for x in value):
        return None
    return "must be an integer (first N layers) or a list of layer indices or module names"


def _check_compile(value: Any) -> str | None:
    modes = {"default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"}
    return None if isinstance(value, bool) or value in modes else "must be a boolean or a torch.compile mode"


def _check_quantize(value: Any) -> str | None:
    if value in {8, 16, 32} and not isinstance(value, bool):
        return None
    valid = {"8", "16", "32", "int8", "fp16", "fp32", "w8a8", "w16a16", "w32a32", "w8a16", "w8a32"}
    return None if isinstance(value, str) and value.lower() in valid else "must be 8, 16, 32 or a scheme like 'int8'"


def _check_classes(value: Any) -> str | None:
    if _is_int(value) and value >= 0:
        return None
    if isinstance(value, list) and value and all(_is_int(x) and x >= 0 for x in value):
        return None
    return "must be a class index or a list of class indices"


def _check_scale(value: Any) -> str | None:
    if _is_number(value):
        return None if 0.0 <= value <= 1.0 else "must be between 0 and 1"
    if isinstance(value, list) and len(value) == 2 and all(_is_number(x) for x in value):
        return None
    return "must be a number between 0 and 1 or a [min, max] pair"


_SPECIAL_CHECKS = {
    "cache": _check_cache,
    "amp": _check_amp,
    "fraction_arg": _check_fraction_arg,
    "freeze": _check_freeze,
    "compile": _check_compile,
    "quantize": _check_quantize,
    "classes": _check_classes,
    "scale": _check_scale,
}


def validate_train_extra(extra: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems with `YoloTrainSpec.extra`, as (field path, message); empty when it is acceptable."""
    problems: list[tuple[str, str]] = []
    for key, value in extra.items():
        path = f"extra.{key}"
        if key in SPEC_FIELDS:
            problems.append((path, f"set `{key}` as a field of the spec, not in `extra`"))
        elif key in CONTROLLED_ARGS:
            problems.append((path, f"`{key}` is set by Trainforge and cannot be overridden"))
        elif key not in TRAIN_EXTRA_ARGS:
            problems.append((path, "unknown or unsupported Ultralytics train argument"))
        elif (message := _check_extra_value(TRAIN_EXTRA_ARGS[key], value)) is not None:
            problems.append((path, message))
    return problems
