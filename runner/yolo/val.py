"""`yolo.val`: validate a model on a dataset split; metrics as the result, plots as artifacts."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from runner.executors.base import Completed, Outcome
from runner.yolo.bridge import JobBridge, LogForwarder
from runner.yolo.files import publish_run_folder
from runner.yolo.inputs import ModelSource
from shared.contracts.yolo import YoloValSpec


def run_val(spec: YoloValSpec, model: ModelSource, data: str, device: str, folder: Path, bridge: JobBridge) -> Outcome:
    from ultralytics import YOLO

    bridge.raise_if_canceled()
    if folder.exists():
        shutil.rmtree(folder)
    yolo = YOLO(model.source)
    args: dict[str, Any] = {
        "data": data,
        "split": spec.split,
        "imgsz": spec.imgsz,
        "batch": spec.batch,
        "iou": spec.iou,
        "device": device,
        "plots": True,
        "project": str(folder.parent),
        "name": folder.name,
        "exist_ok": True,
    }
    if spec.conf is not None:
        args["conf"] = spec.conf
    with LogForwarder(bridge):
        metrics = yolo.val(**args)
    result = summarize_metrics(metrics, yolo.task)
    bridge.metrics(result["metrics"])
    publish_run_folder(folder, bridge)
    return Completed(result=result)


def summarize_metrics(metrics: Any, task: str) -> dict[str, Any]:
    """Ultralytics' validation metrics as plain JSON: detection-like (boxes) or classification."""
    raw = {k: float(v) for k, v in metrics.results_dict.items()}
    result: dict[str, Any] = {
        "task": task,
        "metrics": raw,
        "speed_ms": {k: round(float(v), 3) for k, v in metrics.speed.items()},
        "fitness": float(metrics.fitness),
    }
    box = getattr(metrics, "box", None)
    if box is not None and task != "classify":
        names = metrics.names
        f1 = box.f1 if len(box.f1) else [0.0]
        result |= {
            "precision": float(box.mp),
            "recall": float(box.mr),
            "mAP50": float(box.map50),
            "mAP50-95": float(box.map),
            "f1": float(sum(f1) / len(f1)),
            "per_class": [
                {
                    "class_id": int(c),
                    "name": names.get(int(c), str(c)) if isinstance(names, dict) else str(c),
                    "precision": float(box.p[i]),
                    "recall": float(box.r[i]),
                    "ap50": float(box.ap50[i]),
                    "ap50_95": float(box.ap[i]),
                }
                for i, c in enumerate(box.ap_class_index)
            ],
        }
    elif task == "classify":
        result |= {"top1": float(metrics.top1), "top5": float(metrics.top5)}
    return result
