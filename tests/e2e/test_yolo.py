"""YOLO jobs as a product, through a real `trainforge up`: datasets uploaded as zips, trainings with per-epoch
metrics, checkpoints and artifacts, weights registered in the library, export and predict (also with the
exported files), synchronous predict, cancel/resume, and a runner killed mid-training.

Untrained models built from Ultralytics' YAMLs (nothing is downloaded), tiny generated datasets, 64 px.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.datagen import make_classify_dataset, make_detect_dataset
from tests.dataset_factories import make_coco, zip_folder
from tests.e2e.stackctl import Stack, ok

pytestmark = pytest.mark.slow

TERMINAL = {"completed", "failed", "canceled"}
ASSETS = Path(next(iter(importlib.util.find_spec("ultralytics").submodule_search_locations))) / "assets"  # type: ignore[union-attr, arg-type]
TRAIN = {"kind": "yolo.train", "imgsz": 64, "batch": 8, "extra": {"plots": False}}


def upload_dataset(api: httpx.Client, name: str, folder: Path) -> dict[str, Any]:
    archive = zip_folder(folder, folder.parent / f"{name}.zip")
    with archive.open("rb") as handle:
        return ok(api.post("/datasets", files={"file": (archive.name, handle, "application/zip")},
                           data={"name": name}, timeout=120), 201)


def start(api: httpx.Client, project: str, body: dict[str, Any]) -> dict[str, Any]:
    if api.get(f"/projects/{project}").status_code == 404:
        ok(api.post("/projects", json={"name": project}), 201)
    return ok(api.post(f"/projects/{project}/runs", json=body), 201)


def epochs_of(api: httpx.Client, run_id: str) -> list[tuple[int, int]]:
    """(attempt, epoch) of the run's per-epoch metrics, in order."""
    items = ok(api.get(f"/runs/{run_id}/metrics", params={"limit": 1000}))["items"]
    return [(m["attempt"], m["epoch"]) for m in items if m["epoch"] is not None]


def wait_checkpoint(api: httpx.Client, run_id: str, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        items = ok(api.get(f"/runs/{run_id}/checkpoints"))["items"]
        if items:
            return items[0]
        run = ok(api.get(f"/runs/{run_id}"))
        assert run["status"] not in TERMINAL, run
        assert time.monotonic() < deadline, f"no checkpoint of run {run_id} after {timeout}s"
        time.sleep(0.2)


def wait_registration(api: httpx.Client, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (registration := ok(api.get(f"/runs/{run_id}"))["registration"]) is None:
        assert time.monotonic() < deadline, "the weights were never registered"
        time.sleep(0.2)
    return registration


def upload_image(api: httpx.Client, path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        return ok(api.post("/uploads", files={"file": (path.name, handle, "image/jpeg")}), 201)


def check_predictions(result: dict[str, Any], sizes: list[tuple[int, int]]) -> None:
    assert result["task"] == "detect" and result["count"] == len(sizes)
    for entry, (width, height) in zip(result["images"], sizes, strict=True):
        assert (entry["width"], entry["height"]) == (width, height)
        assert isinstance(entry["boxes"], list) and entry["speed_ms"]
        for box in entry["boxes"]:
            assert len(box["xyxy"]) == 4 and 0 <= box["score"] <= 1 and box["name"] in {"a", "b"}


def test_detect_training_registers_a_model_that_validates_exports_and_predicts(stack: Stack, tmp_path: Path) -> None:
    with stack.api() as api:
        dataset = upload_dataset(api, "rects", make_detect_dataset(tmp_path / "rects", imgsz=128).parent)
        assert dataset["format"] == "yolo" and dataset["splits"] == {"train": 16, "val": 8}
        run = start(api, "shapes", {**TRAIN, "dataset": "rects", "model": "yolov8n", "epochs": 2,
                                    "register_as": "rects-det"})
        final = stack.wait_run(run["id"], TERMINAL, timeout=120)
        assert final["status"] == "completed", final["error"]
        assert [e for _, e in epochs_of(api, run["id"])] == [1, 2]
        assert {"metrics/mAP50(B)", "train/box_loss", "fitness"} <= set(final["latest_metrics"])
        checkpoints = ok(api.get(f"/runs/{run['id']}/checkpoints"))["items"]
        assert checkpoints and all(c["resumable"] for c in checkpoints) and checkpoints[0]["epoch"] == 2
        names = {a["name"] for a in ok(api.get(f"/runs/{run['id']}/artifacts", params={"limit": 200}))["items"]}
        assert {"weights/best.pt", "weights/last.pt", "results.csv", "args.yaml"} <= names

        registration = wait_registration(api, run["id"])
        assert (registration["model"], registration["version"]) == ("rects-det", 1)
        version = ok(api.get("/models/rects-det/versions/1"))
        assert version["source_run_id"] == run["id"] and version["dataset_id"] == dataset["id"]
        assert version["class_names"] == ["a", "b"] and version["task"] == "detect" and version["metrics"]

        val = start(api, "shapes", {"kind": "yolo.val", "model": "library:rects-det", "dataset": "rects",
                                    "imgsz": 64, "batch": 8, "conf": 0.25})
        exports = {fmt: start(api, "shapes", {"kind": "yolo.export", "model": "library:rects-det:1",
                                              "format": fmt, "imgsz": 128}) for fmt in ("torchscript", "onnx")}
        val = stack.wait_run(val["id"], TERMINAL, timeout=60)
        assert val["status"] == "completed", val["error"]
        assert "mAP50-95" in val["result"] and val["result"]["per_class"] is not None
        bus, zidane = upload_image(api, ASSETS / "bus.jpg"), upload_image(api, ASSETS / "zidane.jpg")
        sizes = [(810, 1080), (1280, 720)]
        for fmt, export in exports.items():
            done = stack.wait_run(export["id"], TERMINAL, timeout=60)
            assert done["status"] == "completed", done["error"]
            assert done["result"]["format"] == fmt and done["result"]["size_bytes"] > 0
            artifact = next(a for a in ok(api.get(f"/runs/{export['id']}/artifacts"))["items"] if a["kind"] == "model")
            assert artifact["size_bytes"] == done["result"]["size_bytes"]
            head = api.get(f"/artifacts/{artifact['id']}/download", headers={"Range": "bytes=0-99"})
            assert head.status_code == 206 and len(head.content) == 100

            predict = start(api, "shapes", {"kind": "yolo.predict", "model": f"artifact:{artifact['id']}",
                                            "images": [bus["id"], zidane["id"]], "imgsz": 128, "conf": 0.25})
            predicted = stack.wait_run(predict["id"], TERMINAL, timeout=60)
            assert predicted["status"] == "completed", predicted["error"]
            check_predictions(predicted["result"], sizes)
            kinds = [a["kind"] for a in ok(api.get(f"/runs/{predict['id']}/artifacts"))["items"]]
            assert kinds.count("image") == 2

        for path, size in zip((ASSETS / "bus.jpg", ASSETS / "zidane.jpg"), sizes, strict=True):
            with path.open("rb") as handle:
                answer = ok(api.post("/models/rects-det/predict", files={"file": (path.name, handle, "image/jpeg")},
                                     data={"imgsz": "128", "conf": "0.25", "max_det": "50"}, timeout=90))
            assert answer["model"] == "rects-det" and answer["version"] == 1 and answer["task"] == "detect"
            (image,) = answer["images"]
            assert (image["width"], image["height"]) == size and len(image["boxes"]) <= 50
            assert "source" not in image
            annotated = api.get(f"/artifacts/{image['annotated_artifact_id']}/download")
            assert annotated.status_code == 200 and annotated.content[:2] == b"\xff\xd8"


def test_classify_and_coco_datasets_train(stack: Stack, tmp_path: Path) -> None:
    with stack.api() as api:
        letters = upload_dataset(api, "letters", make_classify_dataset(tmp_path / "letters", n_train=8, n_val=4))
        assert letters["task"] == "classify"
        make_coco(tmp_path / "coco", n=12)
        coco = upload_dataset(api, "coco-shapes", tmp_path / "coco")
        assert coco["format"] == "coco" and coco["classes"] == ["cat", "dog", "bird"]

        classify = start(api, "mixed", {**TRAIN, "dataset": "letters", "model": "yolov8n-cls", "epochs": 2})
        detect = start(api, "mixed", {**TRAIN, "dataset": "coco-shapes", "model": "yolov8n", "epochs": 1})
        classify = stack.wait_run(classify["id"], TERMINAL, timeout=120)
        assert classify["status"] == "completed", classify["error"]
        assert [e for _, e in epochs_of(api, classify["id"])] == [1, 2]
        assert "metrics/accuracy_top1" in classify["latest_metrics"]
        detect = stack.wait_run(detect["id"], TERMINAL, timeout=120)
        assert detect["status"] == "completed", detect["error"]
        assert [e for _, e in epochs_of(api, detect["id"])] == [1]
        # One project, two tasks: the project's model takes the first, `<project>-<task>` the other.
        registered = {wait_registration(api, r["id"])["model"] for r in (classify, detect)}
        assert registered in ({"mixed", "mixed-detect"}, {"mixed", "mixed-classify"})


def test_cancel_ends_training_within_5s_with_a_checkpoint_and_resume_continues_at_the_next_epoch(
    stack: Stack, tmp_path: Path
) -> None:
    with stack.api() as api:
        upload_dataset(api, "rects", make_detect_dataset(tmp_path / "rects", imgsz=128).parent)
        run = start(api, "cancel", {**TRAIN, "dataset": "rects", "epochs": 4})
        wait_checkpoint(api, run["id"])
        started = time.monotonic()
        ok(api.post(f"/runs/{run['id']}/cancel"), 202)
        canceled = stack.wait_run(run["id"], TERMINAL, timeout=5)
        assert canceled["status"] == "canceled" and time.monotonic() - started < 5
        checkpoint = ok(api.get(f"/runs/{run['id']}/checkpoints"))["items"][0]
        assert checkpoint["resumable"] and 1 <= checkpoint["epoch"] < 4
        trained = [e for _, e in epochs_of(api, run["id"])]
        assert trained == list(range(1, checkpoint["epoch"] + 1))

        resumed = ok(api.post(f"/runs/{run['id']}/resume"), 201)
        assert resumed["resume_checkpoint_id"] == checkpoint["id"]
        done = stack.wait_run(resumed["id"], TERMINAL, timeout=120)
        assert done["status"] == "completed", done["error"]
        assert [e for _, e in epochs_of(api, resumed["id"])] == list(range(checkpoint["epoch"] + 1, 5))


@pytest.mark.parametrize("stack", [2], indirect=True)
def test_a_runner_killed_mid_training_is_resumed_by_the_next_attempt_from_the_latest_checkpoint(
    stack: Stack, tmp_path: Path
) -> None:
    with stack.api() as api:
        upload_dataset(api, "rects", make_detect_dataset(tmp_path / "rects", imgsz=128).parent)
        run = start(api, "kill", {**TRAIN, "dataset": "rects", "epochs": 4})
        wait_checkpoint(api, run["id"])
        victim = ok(api.get(f"/runs/{run['id']}"))["runner_id"]
        os.kill(stack.child("", runner_id=victim)["pid"], signal.SIGKILL)

        final = stack.wait_run(run["id"], TERMINAL, timeout=150)
        assert final["status"] == "completed", final["error"]
        assert final["attempt"] == 2
        series = epochs_of(api, run["id"])
        epochs = [e for _, e in series]
        assert sorted(set(epochs)) == [1, 2, 3, 4], series  # none missing
        assert len(epochs) - len(set(epochs)) <= 1, series  # at most one repeated
        assert epochs == sorted(epochs), series  # one continuous series
        assert {a for a, _ in series} == {1, 2}
        second = [e for a, e in series if a == 2]
        first = [e for a, e in series if a == 1]
        assert second[0] in (first[-1], first[-1] + 1), series
