"""`yolo.predict`: run a model (weights or an exported ONNX/TorchScript file) on images.

The result lists, per image, its boxes (xyxy pixels, class, name, confidence) or, for classification, the
class probabilities (top 5). Annotated images become artifacts when `save` is set.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from runner.executors.base import Completed, Outcome
from runner.yolo.bridge import JobBridge, LogForwarder
from runner.yolo.inputs import ModelSource
from shared.contracts.yolo import YoloPredictSpec


def run_predict(
    spec: YoloPredictSpec, model: ModelSource, sources: list[Path], device: str, folder: Path, bridge: JobBridge
) -> Outcome:
    from ultralytics import YOLO

    bridge.raise_if_canceled()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    yolo = YOLO(model.source)
    images: list[dict[str, Any]] = []
    started = time.monotonic()
    with LogForwarder(bridge):
        for index, source in enumerate(sources):
            bridge.raise_if_canceled()
            (result,) = yolo.predict(
                source=str(source),
                conf=spec.conf,
                iou=spec.iou,
                imgsz=spec.imgsz,
                max_det=spec.max_det,
                device=device,
                save=False,
                verbose=False,
            )
            entry = describe_result(result, index=index, source=spec.sources[index])
            if spec.save:
                annotated = folder / f"{index:05d}_{source.stem}.jpg"
                result.save(filename=str(annotated))
                entry["annotated_uri"] = bridge.artifact(
                    annotated, name=f"predict/{annotated.name}", kind="image", meta={"source": spec.sources[index]}
                )
            images.append(entry)
            bridge.progress((index + 1) / len(sources), step=index + 1, total=len(sources))
    return Completed(
        result={
            "task": yolo.task,
            "images": images,
            "count": len(images),
            "elapsed_s": round(time.monotonic() - started, 3),
        }
    )


def describe_result(result: Any, *, index: int, source: str) -> dict[str, Any]:
    names = result.names
    height, width = result.orig_shape
    entry: dict[str, Any] = {
        "index": index,
        "source": source,
        "width": int(width),
        "height": int(height),
        "speed_ms": {k: round(float(v), 3) for k, v in (result.speed or {}).items() if v is not None},
    }
    if result.probs is not None:
        probs = result.probs
        entry["classes"] = [
            {"class_id": int(c), "name": names[int(c)], "score": float(s)}
            for c, s in zip(probs.top5, probs.top5conf.tolist(), strict=False)
        ]
    if result.boxes is not None:
        boxes = result.boxes
        entry["boxes"] = [
            {
                "xyxy": [round(float(v), 2) for v in xyxy],
                "class_id": int(c),
                "name": names[int(c)],
                "score": round(float(s), 5),
            }
            for xyxy, c, s in zip(boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist(), strict=False)
        ]
    return entry
