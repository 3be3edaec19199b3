"""Synchronous predict by request/reply: a runner's `PredictService` (real Ultralytics, a model built from its
.yaml) answers `POST /api/v1/models/{ref}/predict` with a model it keeps loaded, and records the run (row,
result, annotated image) through the usual events and projector."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from gateway.services.predict import INLINE_MAX_BYTES
from runner.yolo.serve_predict import ModelCache, PredictService, _Loaded
from shared.bus import connect
from shared.settings import Settings
from tests.architecture_support import untrained_detector
from tests.integration.rest_helpers import api, in_app

BOUND_S = 60.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) detection checkpoint with the dataset factories' classes."""
    return untrained_detector(tmp_path_factory.mktemp("weights"))


def bus_jpg() -> bytes:
    import ultralytics

    return (Path(ultralytics.__file__).parent / "assets" / "bus.jpg").read_bytes()


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[AsyncTestClient, PredictService]]:  # type: ignore[type-arg]
    """A gateway and, on the gateway's event loop (the test client blocks the test's own while it waits for
    an answer), a runner's predict service on a connection of its own."""
    settings = msgspec.structs.replace(settings, predict_timeout_s=BOUND_S)
    async with api(settings) as client:
        async def start() -> tuple[Any, PredictService]:
            nc = await connect(settings, name="test-predict-runner")
            service = PredictService(nc, nc.jetstream(), settings, "sp-test", "cpu", "cpu")
            await service.start()
            return nc, service

        async def stop(nc: Any, service: PredictService) -> None:
            await service.stop()
            await nc.drain()

        nc, service = in_app(client, start)
        try:
            yield client, service
        finally:
            in_app(client, stop, nc, service)


async def _until(client: AsyncTestClient, path: str, done: Any) -> Any:  # type: ignore[type-arg]
    deadline = time.monotonic() + BOUND_S
    while not done(body := (await client.get(path)).json()):
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)
    return body


@pytest.mark.slow
async def test_a_runner_answers_predict_from_a_loaded_model_and_records_the_run(
        served: tuple[AsyncTestClient, PredictService], weights: Path) -> None:  # type: ignore[type-arg]
    client, service = served
    assert (await client.post("/api/v1/models", files={"file": ("best.pt", weights.read_bytes())},
                              data={"name": "fast"})).status_code == 201
    image = {"file": ("bus.jpg", bus_jpg(), "image/jpeg")}
    answers = []
    for _ in range(3):
        response = await client.post("/api/v1/models/fast/predict", files=image, data={"imgsz": "64", "conf": "0.5"})
        assert response.status_code == 200, response.text
        answers.append(response.json())
    assert service.cache.loads == 1 and len(service.cache) == 1  # loaded once, then kept
    first = answers[0]
    assert first["model"] == "fast" and first["version"] == 1 and first["task"] == "detect"
    (entry,) = first["images"]
    assert (entry["width"], entry["height"]) == (810, 1080) and isinstance(entry["boxes"], list)
    assert "source" not in entry and entry["annotated_artifact_id"]

    annotated = await client.get(f"/api/v1/artifacts/{entry['annotated_artifact_id']}/download")
    assert annotated.status_code == 200 and annotated.content[:2] == b"\xff\xd8"  # downloadable once answered
    run = await _until(client, f"/api/v1/runs/{first['run_id']}", lambda r: r["status"] == "completed")
    assert run["kind"] == "yolo.predict" and run["spec"]["imgsz"] == 64
    assert run["result"]["images"][0]["boxes"] == entry["boxes"]
    artifacts = await _until(client, f"/api/v1/runs/{first['run_id']}/artifacts", lambda a: a["items"])
    assert [a["id"] for a in artifacts["items"]] == [entry["annotated_artifact_id"]]
    assert artifacts["items"][0]["kind"] == "image"
    quick = await client.post("/api/v1/models/fast/predict", files=image, data={"imgsz": "64", "save": "false"})
    assert quick.status_code == 200, quick.text
    assert "annotated_artifact_id" not in quick.json()["images"][0] and service.cache.loads == 1
    await _until(client, f"/api/v1/runs/{quick.json()['run_id']}", lambda r: r["status"] == "completed")
    noise = io.BytesIO()  # too large to travel in the request: the runner reads it from the artifact store
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (640, 480, 3), dtype=np.uint8)).save(noise, "PNG")
    assert len(noise.getvalue()) > INLINE_MAX_BYTES
    large = await client.post("/api/v1/models/fast/predict", files={"file": ("noise.png", noise.getvalue(), "image/png")},
                              data={"imgsz": "64", "save": "false"})
    assert large.status_code == 200, large.text
    assert (large.json()["images"][0]["width"], large.json()["images"][0]["height"]) == (480, 640)
    runs = (await client.get("/api/v1/projects/predict/runs")).json()
    assert runs["total"] == 5

    bad = await client.post("/api/v1/models/fast/predict", files=image, data={"imgsz": "7"})
    assert bad.status_code == 422  # refused by the gateway, no run


@pytest.mark.slow
async def test_a_predict_into_an_archived_project_is_refused_before_anything_runs_or_is_stored(
        served: tuple[AsyncTestClient, PredictService], weights: Path, settings: Settings) -> None:  # type: ignore[type-arg]
    client, service = served
    assert (await client.post("/api/v1/models", files={"file": ("best.pt", weights.read_bytes())},
                              data={"name": "shelved"})).status_code == 201
    assert (await client.post("/api/v1/projects", json={"name": "old"})).status_code == 201
    assert (await client.patch("/api/v1/projects/old", json={"status": "archived"})).status_code == 200
    uploads = settings.artifacts_dir / "uploads"
    stored_before = sorted(uploads.rglob("*")) if uploads.exists() else []

    refused = await client.post("/api/v1/models/shelved/predict", files={"file": ("bus.jpg", bus_jpg(), "image/jpeg")},
                                data={"imgsz": "64", "project": "old"})
    assert refused.status_code == 409 and "archived" in refused.json()["detail"], refused.text
    assert service.cache.loads == 0  # no runner was asked
    assert (await client.get("/api/v1/projects/old/runs")).json()["total"] == 0
    assert (sorted(uploads.rglob("*")) if uploads.exists() else []) == stored_before


@pytest.mark.slow
async def test_a_prediction_the_runner_cannot_make_answers_422_and_its_run_is_recorded_failed(
        served: tuple[AsyncTestClient, PredictService], weights: Path, settings: Settings) -> None:  # type: ignore[type-arg]
    client, _ = served
    assert (await client.post("/api/v1/models", files={"file": ("best.pt", weights.read_bytes())},
                              data={"name": "lost"})).status_code == 201
    for stored in (settings.artifacts_dir / "models").rglob("*.pt"):  # the weights are gone from the store
        stored.unlink()
    failed = await client.post("/api/v1/models/lost/predict", files={"file": ("bus.jpg", bus_jpg(), "image/jpeg")},
                               data={"imgsz": "64", "save": "false"})
    assert failed.status_code == 422, failed.text
    runs = (await client.get("/api/v1/projects/predict/runs")).json()
    assert runs["total"] == 1 and runs["items"][0]["id"] in failed.json()["detail"]  # written before the answer
    run = await _until(client, f"/api/v1/runs/{runs['items'][0]['id']}", lambda r: r["status"] == "failed")
    assert run["failure_cause"] == "user"


def test_the_model_cache_keeps_the_recently_used_within_its_count_and_memory() -> None:
    cache = ModelCache(max_models=2, max_bytes=100)
    for name, size in (("a", 10), ("b", 10)):
        cache.put((name, "cpu"), _Loaded(model=name, size_bytes=size))
    assert cache.get(("a", "cpu")) is not None  # a is the most recently used now
    cache.put(("c", "cpu"), _Loaded(model="c", size_bytes=10))
    assert cache.keys() == [("a", "cpu"), ("c", "cpu")] and cache.evictions == 1
    cache.put(("d", "cpu"), _Loaded(model="d", size_bytes=95))  # over the memory: all older ones go
    assert cache.keys() == [("d", "cpu")] and cache.total_bytes == 95
    cache.put(("e", "cpu"), _Loaded(model="e", size_bytes=500))  # too big alone: kept, being the newest
    assert cache.keys() == [("e", "cpu")]
    none = ModelCache(max_models=0, max_bytes=100)
    none.put(("a", "cpu"), _Loaded(model="a", size_bytes=1))
    assert len(none) == 0 and none.loads == 1
