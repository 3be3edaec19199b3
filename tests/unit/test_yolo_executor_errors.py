"""Specs the YOLO executor cannot run fail with cause `user` and say why, before any training starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.executors.base import Failed
from runner.executors.yolo import YoloExecutor
from shared.contracts import FailureCause, ResumeFrom
from shared.contracts.yolo import YoloExportSpec, YoloPredictSpec, YoloTrainSpec
from shared.settings import Settings
from tests.datagen import make_detect_dataset
from tests.recording_emitter import make_context


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings.from_mapping({"state_dir": tmp_path_factory.mktemp("yolo-state")})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_detect_dataset(tmp_path_factory.mktemp("detect"), n_train=2, n_val=2, imgsz=64)


async def fails(settings: Settings, spec, tmp_path: Path, **kwargs) -> Failed:
    ctx = make_context(settings, spec, workdir=tmp_path / "work", **kwargs)
    outcome = await YoloExecutor(settings).run(ctx)
    assert isinstance(outcome, Failed), outcome
    assert outcome.cause is FailureCause.USER
    assert not ctx.emit.of("progress") and not ctx.emit.of("checkpoint")  # type: ignore[attr-defined]
    return outcome


async def test_unknown_extra_train_argument_fails_naming_it(settings: Settings, data: Path, tmp_path: Path) -> None:
    outcome = await fails(settings, YoloTrainSpec(data=str(data), extra={"mosaic": 3, "bogus": 1}), tmp_path)
    assert "extra.mosaic" in outcome.message and "extra.bogus" in outcome.message


async def test_missing_dataset_fails(settings: Settings, tmp_path: Path) -> None:
    outcome = await fails(settings, YoloTrainSpec(data=str(tmp_path / "nope" / "data.yaml")), tmp_path)
    assert "dataset not found" in outcome.message


async def test_weights_outside_the_runner_folders_are_refused(settings: Settings, data: Path, tmp_path: Path) -> None:
    weights = tmp_path / "elsewhere.pt"
    weights.write_bytes(b"x")
    outcome = await fails(settings, YoloTrainSpec(model=str(weights), data=str(data)), tmp_path)
    assert "outside the runner's folders" in outcome.message


async def test_unavailable_device_fails(settings: Settings, data: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    outcome = await fails(settings, YoloTrainSpec(data=str(data), device="cuda:7"), tmp_path)
    assert "cuda:7" in outcome.message


async def test_custom_model_yaml_naming_a_non_layer_is_refused(settings: Settings, data: Path, tmp_path: Path) -> None:
    model_yaml = "nc: 2\nbackbone:\n  - [-1, 1, attempt_download_asset, ['http://x']]\nhead:\n  - [-1, 1, Classify, [2]]\n"
    outcome = await fails(settings, YoloTrainSpec(model=None, model_yaml=model_yaml, data=str(data)), tmp_path)
    assert "unknown module 'attempt_download_asset'" in outcome.message


async def test_export_to_a_format_without_its_dependencies_fails(settings: Settings, tmp_path: Path) -> None:
    outcome = await fails(settings, YoloExportSpec(model="yolov8n", format="coreml"), tmp_path)
    assert "cannot export 'coreml'" in outcome.message and "coremltools" in outcome.message


async def test_predict_on_a_missing_image_fails(settings: Settings, tmp_path: Path) -> None:
    outcome = await fails(settings, YoloPredictSpec(model="yolov8n", sources=[str(tmp_path / "x.jpg")]), tmp_path)
    assert "sources[0]" in outcome.message


async def test_resuming_from_weights_without_training_state_fails(settings: Settings, data: Path, tmp_path: Path) -> None:
    from ultralytics import YOLO

    stripped = settings.artifacts_dir / "stripped.pt"
    stripped.parent.mkdir(parents=True, exist_ok=True)
    YOLO("yolov8n.yaml").save(str(stripped))
    resume = ResumeFrom(source_run_id="r0", checkpoint_id="c0", uri=stripped.as_uri())
    outcome = await fails(settings, YoloTrainSpec(data=str(data), epochs=2), tmp_path, resume=resume)
    assert "not resumable" in outcome.message
