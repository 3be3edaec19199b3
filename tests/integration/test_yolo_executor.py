"""The YOLO executor with real Ultralytics on the CPU: tiny generated datasets, untrained yolov8n models.

The whole module runs under a network recorder (an audit hook on socket connect / name lookups): the last
test asserts that no job attempted a network connection.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.executors.base import Canceled, Completed, RunContext
from runner.executors.yolo import YoloExecutor
from runner.yolo.offline import prepare_ultralytics
from shared.contracts import ResumeFrom
from shared.contracts.yolo import YoloExportSpec, YoloPredictSpec, YoloTrainSpec, YoloValSpec
from shared.settings import Settings
from tests.datagen import make_classify_dataset, make_detect_dataset
from tests.netguard import RECORDER
from tests.recording_emitter import RecordingEmitter, make_context

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def yolo_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings.from_mapping({"state_dir": tmp_path_factory.mktemp("yolo-state")})


@pytest.fixture(scope="module", autouse=True)
def network_guard(yolo_settings: Settings) -> Iterator[list[tuple[str, str]]]:
    """Every job of this module runs with an Ultralytics Platform key in the environment and in the settings,
    and with the Platform callback's own "tests are running" switch off: were a trainer given that callback, it
    would try to reach the hosted Platform, and the recorder would see it."""
    prepare_ultralytics(yolo_settings.state_dir)
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.callbacks import platform

    saved, platform.TESTS_RUNNING = platform.TESTS_RUNNING, False
    os.environ["ULTRALYTICS_API_KEY"] = "ul_" + "0" * 40
    SETTINGS.update({"api_key": "ul_" + "0" * 40})
    try:
        with RECORDER.recording() as events:
            yield events
    finally:
        platform.TESTS_RUNNING = saved
        os.environ.pop("ULTRALYTICS_API_KEY", None)


@pytest.fixture(scope="module")
def detect_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_detect_dataset(tmp_path_factory.mktemp("detect"), n_train=16, n_val=8, imgsz=128)


@pytest.fixture(scope="module")
def classify_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_classify_dataset(tmp_path_factory.mktemp("classify"), n_train=8, n_val=4, imgsz=64)


async def run(settings: Settings, spec: Any, tmp: Path, **kwargs: Any) -> tuple[RunContext, Any]:
    ctx = make_context(settings, spec, workdir=tmp / "work", **kwargs)
    return ctx, await YoloExecutor(settings).run(ctx)


def emitted(ctx: RunContext, kind: str) -> list[dict[str, Any]]:
    emitter = ctx.emit
    assert isinstance(emitter, RecordingEmitter)
    return emitter.of(kind)


def artifact_path(uri: str) -> Path:
    assert uri.startswith("file://")
    return Path(uri.removeprefix("file://"))


@pytest.fixture(scope="module")
async def detect_run(
    yolo_settings: Settings, detect_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[RunContext, Any]]:
    spec = YoloTrainSpec(model="yolov8n", data=str(detect_data), epochs=2, batch=8, imgsz=128, device="cpu")
    yield await run(yolo_settings, spec, tmp_path_factory.mktemp("detect-run"))


@pytest.fixture(scope="module")
def detect_weights(detect_run: tuple[RunContext, Any]) -> str:
    ctx, _ = detect_run
    (best,) = [a["uri"] for a in emitted(ctx, "artifact") if a["name"] == "weights/best.pt"]
    return best


async def test_detect_training_reports_batch_progress_epoch_metrics_checkpoints_and_artifacts(detect_run) -> None:
    ctx, outcome = detect_run
    assert isinstance(outcome, Completed), outcome
    assert outcome.result["epochs_completed"] == 2

    progress = emitted(ctx, "progress")
    assert progress and all(0 < p["progress"] <= 1 and p["batches"] == 2 and p["epochs"] == 2 for p in progress)
    assert {"train/box_loss", "train/cls_loss"} <= set(progress[0]["losses"])
    assert progress[0]["eta_s"] is not None

    metrics = emitted(ctx, "metrics")
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert {"metrics/precision(B)", "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)"} <= set(m["metrics"])
        assert {"train/box_loss", "lr/pg0", "epoch_time_s"} <= set(m["metrics"])

    checkpoints = emitted(ctx, "checkpoint")
    assert [c["epoch"] for c in checkpoints] == [1, 2]
    assert all(c["resumable"] and c["size_bytes"] > 0 for c in checkpoints)
    assert outcome.result["checkpoint_id"] == checkpoints[-1]["checkpoint_id"] == ctx.last_checkpoint_id

    artifacts = {a["name"]: a for a in emitted(ctx, "artifact")}
    assert {"results.csv", "args.yaml", "weights/best.pt", "weights/last.pt", "results.png"} <= set(artifacts)
    for artifact in artifacts.values():
        assert artifact_path(artifact["uri"]).stat().st_size == artifact["size_bytes"] > 0
    assert artifacts["weights/best.pt"]["kind"] == "weights"
    assert len(artifact_path(artifacts["results.csv"]["uri"]).read_text().strip().splitlines()) == 3


async def test_classification_training_completes_with_top1_metrics(
    yolo_settings: Settings, classify_data: Path, tmp_path: Path
) -> None:
    spec = YoloTrainSpec(model="yolov8n-cls", data=str(classify_data), epochs=1, batch=8, imgsz=64, device="cpu")
    ctx, outcome = await run(yolo_settings, spec, tmp_path)

    assert isinstance(outcome, Completed), outcome
    (metrics,) = emitted(ctx, "metrics")
    assert "metrics/accuracy_top1" in metrics["metrics"]
    assert len(emitted(ctx, "checkpoint")) == 1
    assert "weights/best.pt" in {a["name"] for a in emitted(ctx, "artifact")}

    (best,) = [a["uri"] for a in emitted(ctx, "artifact") if a["name"] == "weights/best.pt"]
    image = next((classify_data / "val" / "a").glob("*.jpg"))
    pctx, predicted = await run(yolo_settings, YoloPredictSpec(model=best, sources=[str(image)], imgsz=64), tmp_path / "p")
    assert isinstance(predicted, Completed), predicted
    (entry,) = predicted.result["images"]
    assert {c["name"] for c in entry["classes"]} == {"a", "b"}
    assert abs(sum(c["score"] for c in entry["classes"]) - 1.0) < 1e-3


async def test_cancel_mid_training_ends_canceled_with_resumable_checkpoint_and_resume_continues_next_epoch(
    yolo_settings: Settings, detect_data: Path, tmp_path: Path
) -> None:
    epochs = 4
    spec = YoloTrainSpec(model="yolov8n", data=str(detect_data), epochs=epochs, batch=8, imgsz=128, device="cpu")
    ctx = make_context(yolo_settings, spec, workdir=tmp_path / "work")
    canceled_at: list[float] = []

    def cancel_in_second_epoch(record: Any) -> None:
        if record.type == "progress" and record.fields["epoch"] >= 2 and not canceled_at:
            canceled_at.append(time.monotonic())
            ctx.cancel_requested.set()

    ctx.emit.on_record = cancel_in_second_epoch  # type: ignore[attr-defined]
    outcome = await YoloExecutor(yolo_settings).run(ctx)

    assert isinstance(outcome, Canceled), outcome
    assert time.monotonic() - canceled_at[0] < 5.0
    checkpoint = emitted(ctx, "checkpoint")[-1]
    assert outcome.checkpoint_id == checkpoint["checkpoint_id"]
    stopped_epoch = checkpoint["epoch"]
    assert 2 <= stopped_epoch < epochs
    assert not any(a["name"] == "weights/best.pt" for a in emitted(ctx, "artifact"))  # no final evaluation

    from ultralytics.utils.patches import torch_load

    saved = torch_load(str(artifact_path(checkpoint["uri"])), map_location="cpu")
    assert saved["optimizer"] is not None and saved["epoch"] == stopped_epoch - 1

    resume = ResumeFrom(
        source_run_id=ctx.run_id, checkpoint_id=checkpoint["checkpoint_id"], uri=checkpoint["uri"], epoch=stopped_epoch
    )
    rctx, resumed = await run(yolo_settings, spec, tmp_path / "resumed", resume=resume, attempt=2)

    assert isinstance(resumed, Completed), resumed
    first_metrics = [m["epoch"] for m in emitted(ctx, "metrics")]
    resumed_metrics = [m["epoch"] for m in emitted(rctx, "metrics")]
    assert first_metrics + resumed_metrics == list(range(1, epochs + 1))
    assert emitted(rctx, "progress")[0]["epoch"] == stopped_epoch + 1
    results = next(a for a in emitted(rctx, "artifact") if a["name"] == "results.csv")
    rows = artifact_path(results["uri"]).read_text().strip().splitlines()[1:]
    assert [int(float(row.split(",")[0])) for row in rows] == list(range(1, epochs + 1))


async def test_resuming_a_checkpoint_of_the_last_epoch_completes_without_training(
    yolo_settings: Settings, detect_run, tmp_path: Path
) -> None:
    ctx, _ = detect_run
    last = emitted(ctx, "checkpoint")[-1]
    resume = ResumeFrom(source_run_id=ctx.run_id, checkpoint_id=last["checkpoint_id"], uri=last["uri"], epoch=2)
    rctx, outcome = await run(yolo_settings, ctx.job.spec, tmp_path, resume=resume, attempt=2)

    assert isinstance(outcome, Completed), outcome
    assert outcome.result["epochs_completed"] == 2 and outcome.result["checkpoint_id"] == last["checkpoint_id"]
    assert not emitted(rctx, "progress") and not emitted(rctx, "metrics")
    assert {"weights/last.pt", "results.csv"} <= {a["name"] for a in emitted(rctx, "artifact")}


async def test_validation_reports_precision_recall_map_f1_per_class_speed_and_plots(
    yolo_settings: Settings, detect_data: Path, detect_weights: str, tmp_path: Path
) -> None:
    spec = YoloValSpec(model=detect_weights, data=str(detect_data), imgsz=128, batch=8, conf=0.25)
    ctx, outcome = await run(yolo_settings, spec, tmp_path)

    assert isinstance(outcome, Completed), outcome
    result = outcome.result
    for key in ("precision", "recall", "mAP50", "mAP50-95", "f1", "fitness"):
        assert isinstance(result[key], float)
    assert {"preprocess", "inference", "postprocess"} <= set(result["speed_ms"])
    assert all({"class_id", "name", "ap50", "ap50_95"} <= set(c) for c in result["per_class"])
    (metrics,) = emitted(ctx, "metrics")
    assert "metrics/mAP50-95(B)" in metrics["metrics"]
    names = {a["name"] for a in emitted(ctx, "artifact")}
    assert "confusion_matrix.png" in names and "BoxPR_curve.png" in names


async def test_export_to_torchscript_and_onnx_then_predict_with_each(
    yolo_settings: Settings, detect_weights: str, tmp_path: Path
) -> None:
    image = str(_bus_jpg())
    for fmt, suffix in (("torchscript", ".torchscript"), ("onnx", ".onnx")):
        ctx, exported = await run(
            yolo_settings, YoloExportSpec(model=detect_weights, format=fmt, imgsz=128), tmp_path / fmt
        )
        assert isinstance(exported, Completed), exported
        (artifact,) = emitted(ctx, "artifact")
        assert artifact["name"].endswith(suffix) and artifact["kind"] == "model"
        assert artifact["size_bytes"] == exported.result["size_bytes"] == artifact_path(artifact["uri"]).stat().st_size

        pctx, predicted = await run(
            yolo_settings, YoloPredictSpec(model=artifact["uri"], sources=[image], imgsz=128), tmp_path / f"p-{fmt}"
        )
        assert isinstance(predicted, Completed), predicted
        (entry,) = predicted.result["images"]
        assert entry["width"] == 810 and entry["height"] == 1080 and isinstance(entry["boxes"], list)


def _bus_jpg() -> Path:
    from ultralytics.utils import ASSETS

    return Path(ASSETS) / "bus.jpg"


async def test_predict_on_bus_and_zidane_returns_boxes_and_annotated_images(
    yolo_settings: Settings, detect_weights: str, tmp_path: Path
) -> None:
    from ultralytics.utils import ASSETS

    sources = [str(Path(ASSETS) / "bus.jpg"), str(Path(ASSETS) / "zidane.jpg")]
    ctx, outcome = await run(yolo_settings, YoloPredictSpec(model=detect_weights, sources=sources, imgsz=128), tmp_path)

    assert isinstance(outcome, Completed), outcome
    images = outcome.result["images"]
    assert [(i["source"], i["width"], i["height"]) for i in images] == [
        (sources[0], 810, 1080),
        (sources[1], 1280, 720),
    ]
    for entry in images:
        for box in entry["boxes"]:
            assert len(box["xyxy"]) == 4 and box["name"] in {"a", "b"} and 0.25 <= box["score"] <= 1
        assert artifact_path(entry["annotated_uri"]).stat().st_size > 0
    assert [a["kind"] for a in emitted(ctx, "artifact")] == ["image", "image"]
    assert emitted(ctx, "progress")


async def test_cancelling_the_executor_task_stops_training_before_it_returns(
    yolo_settings: Settings, detect_data: Path, tmp_path: Path
) -> None:
    import asyncio

    spec = YoloTrainSpec(model="yolov8n", data=str(detect_data), epochs=20, batch=8, imgsz=128, device="cpu")
    ctx = make_context(yolo_settings, spec, workdir=tmp_path / "work")
    first_progress = asyncio.Event()
    ctx.emit.on_record = lambda record: record.type == "progress" and first_progress.set()  # type: ignore[attr-defined]
    task = asyncio.create_task(YoloExecutor(yolo_settings).run(ctx))
    await asyncio.wait_for(first_progress.wait(), 60)
    task.cancel()  # it stops at the next batch boundary (how soon is a figure of bench/, not of this test)
    with pytest.raises(asyncio.CancelledError):
        await task
    count = len(ctx.emit.records)  # type: ignore[attr-defined]
    await asyncio.sleep(0.5)
    assert len(ctx.emit.records) == count  # type: ignore[attr-defined]  # nothing runs on after the task ended
    assert max(m["epoch"] for m in emitted(ctx, "metrics")) < 20


async def test_no_yolo_job_attempted_a_network_connection(
    network_guard: list[tuple[str, str]], yolo_settings: Settings, detect_data: Path, detect_weights: str, tmp_path: Path
) -> None:
    """Runs last in this module: every job above ran under the recorder, plus a val/export/predict here."""
    specs = [
        YoloValSpec(model=detect_weights, data=str(detect_data), imgsz=128, conf=0.25),
        YoloExportSpec(model=detect_weights, format="onnx", imgsz=128),
        YoloPredictSpec(model=detect_weights, sources=[str(_bus_jpg())], imgsz=128),
    ]
    for i, spec in enumerate(specs):
        _, outcome = await run(yolo_settings, spec, tmp_path / str(i))
        assert isinstance(outcome, Completed), outcome
    assert network_guard == []
    assert "ULTRALYTICS_API_KEY" not in os.environ  # the jobs removed it


async def test_a_paused_training_parks_at_a_batch_boundary_and_unpaused_completes_every_epoch(
    yolo_settings: Settings, detect_data: Path, tmp_path: Path
) -> None:
    import asyncio

    epochs = 2
    spec = YoloTrainSpec(model="yolov8n", data=str(detect_data), epochs=epochs, batch=8, imgsz=128, device="cpu")
    ctx = make_context(yolo_settings, spec, workdir=tmp_path / "work")
    seen_parked: list[tuple[int, int]] = []

    async def pause_then_continue() -> None:
        assert ctx.pauser is not None  # a training can pause
        gate = ctx.pauser
        await gate.pause()
        await asyncio.to_thread(gate.parked.wait, 60)  # type: ignore[attr-defined]
        seen_parked.append((len(emitted(ctx, "progress")), len(emitted(ctx, "metrics"))))
        await asyncio.sleep(0)  # the parked thread hands nothing over meanwhile
        assert gate.parked.is_set()  # type: ignore[attr-defined]
        await gate.resume()

    tasks: list[asyncio.Task[None]] = []

    def pause_on_first_batch(record: Any) -> None:
        if record.type == "progress" and not tasks:
            tasks.append(asyncio.get_running_loop().create_task(pause_then_continue()))

    ctx.emit.on_record = pause_on_first_batch  # type: ignore[attr-defined]
    outcome = await YoloExecutor(yolo_settings).run(ctx)
    await asyncio.gather(*tasks)

    assert isinstance(outcome, Completed), outcome
    assert seen_parked and seen_parked[0][1] < epochs  # parked before the last epoch ended
    assert outcome.result is not None and outcome.result["epochs_completed"] == epochs
    assert [m["epoch"] for m in emitted(ctx, "metrics")] == list(range(1, epochs + 1))
    assert ctx.pauser is None  # nothing to pause once the training is over
