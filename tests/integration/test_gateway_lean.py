"""The gateway never has torch or Ultralytics in its process (nor the runner package, nor numpy or OpenCV):
not after start-up, not after one request of every kind, those that need Ultralytics included (a runner
answers them over NATS). With no runner online those answer 503 at once."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import msgspec
import pytest

from shared.settings import Settings
from tests.architecture_support import TINY_YAML, untrained_detector
from tests.dataset_factories import make_coco, make_yolo_yaml
from tests.integration.rest_helpers import api, problem, yolo_runner_online

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) detection checkpoint with the dataset factories' classes."""
    return untrained_detector(tmp_path_factory.mktemp("weights"))


@pytest.mark.slow
async def test_the_gateway_loads_no_torch_after_start_up_and_a_request_of_every_kind(
    settings: Settings, weights: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    make_yolo_yaml(root / "shapes", n_train=4, n_val=2)
    make_coco(root / "coco", n=4, polygons=True)
    (root / "tiny.yaml").write_text(TINY_YAML)
    app_settings = msgspec.structs.replace(settings, data_roots=[root], predict_timeout_s=0.5)
    async with yolo_runner_online(app_settings):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.integration.lean_gateway_probe", msgspec.json.encode(app_settings, enc_hook=str).decode(),
            str(weights), str(root), cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    report = json.loads(stdout.decode().strip().splitlines()[-1])

    assert report["codes"] == {
        "ready": 200, "project": 201, "architecture_validate": 200, "architecture_save": 201, "export_formats": 200,
        "model_catalog": 200, "dataset_by_path": 201, "dataset_upload_coco": 201, "dataset_images": 200,
        "dataset_stats": 200, "dataset_augment": 200, "project_dataset": 201,
        "weights_upload": 201, "model": 200, "image_upload": 201, "predict": 504, "train_run": 201,
        "export_run": 201, "container_run": 201, "runs": 200, "queue": 200, "runners": 200,
    }, report["codes"]
    assert report["after_import"] == report["after_startup"] == report["after_requests"] == [], report


async def test_with_no_runner_online_what_needs_ultralytics_is_a_503_at_once(settings: Settings) -> None:
    async with api(settings) as client:
        formats = problem(await client.get("/api/v1/export-formats"), 503)
        validate = problem(await client.post("/api/v1/architectures/validate", json={"yaml": TINY_YAML}), 503)
    for body in (formats, validate):
        assert "no runner with Ultralytics is online" in body["detail"], body
