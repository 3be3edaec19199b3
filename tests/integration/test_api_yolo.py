"""The YOLO side of the REST API over the real app (NATS + Postgres): run requests with references
(datasets, models, architectures, uploads, saved configurations) resolved into `yolo.*` specs, the errors a
client gets instead, artifacts and uploads, export formats, and the registration of a completed training's
weights in the library. Training itself runs in tests/e2e/test_yolo.py."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from gateway.registration import WeightsRegistrar
from shared.contracts import job_decoder
from shared.contracts.events import RunArtifact, RunClaimed, RunCompleted, RunStarted
from shared.settings import Settings
from shared.subjects import Subjects
from tests.architecture_support import TINY_YAML, untrained_detector
from tests.dataset_factories import make_classify, make_yolo_yaml
from tests.integration.events_support import publish, wait_for
from tests.integration.rest_helpers import (
    api,
    bus,
    in_app,
    new_project,
    problem,
    runner_online,
    start_run,
    yolo_runner_online,
)

BROKEN_YAML = """\
nc: 2
backbone:
  - [-1, 1, Conv, [8, 3, 2]]
  - [-1, 1, NoSuchModule, [16]]
head:
  - [-1, 1, Classify, [nc]]
"""


def without_request_id(options: dict) -> dict:
    """A run's options but the id of the request that made it (`X-Request-ID`, its own per request)."""
    return {k: v for k, v in options.items() if k != "request_id"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) detection checkpoint with the dataset factories' classes."""
    return untrained_detector(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_yolo_yaml(root / "shapes", n_train=4, n_val=2)
    make_classify(root / "letters", per_class=3, splits=True)
    return root


@pytest.fixture
async def client(settings: Settings, data_root: Path) -> AsyncIterator[AsyncTestClient]:
    app_settings = msgspec.structs.replace(settings, data_roots=[data_root], predict_timeout_s=1.0)
    async with api(app_settings) as c, yolo_runner_online(app_settings):
        await new_project(c, "vision")
        for name in ("shapes", "letters"):
            registered = await c.post("/api/v1/datasets", json={"name": name, "path": str(data_root / name)})
            assert registered.status_code == 201, registered.text
        yield c


def _png(size: tuple[int, int] = (48, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


async def _train(client: AsyncTestClient, **fields: Any) -> Any:
    return await start_run(client, "vision", {"kind": "yolo.train", **fields})


async def test_a_train_request_names_a_dataset_and_gets_its_prepared_data_in_the_spec(
    client: AsyncTestClient, settings: Settings
) -> None:
    dataset = (await client.get("/api/v1/datasets/shapes")).json()
    async with runner_online(settings, "gpu-a"):  # the dispatcher publishes jobs for a pool with a runner
        created = await _train(client, dataset="shapes", model="yolov8n", epochs=2, imgsz=64, batch=8,
                               extra={"mosaic": 0.0}, pool="gpu-a", priority=70)
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["kind"] == "yolo.train" and run["pool"] == "gpu-a" and run["priority"] == 70
    spec = run["spec"]
    assert spec["dataset_id"] == dataset["id"] and spec["data"].endswith("data.yaml")
    assert (spec["model"], spec["epochs"], spec["imgsz"], spec["batch"], spec["lr0"]) == ("yolov8n", 2, 64, 8, 0.01)
    assert spec["extra"] == {"mosaic": 0.0}
    assert without_request_id(run["options"]) == {"dataset": "shapes", "dataset_version": 1, "model": "yolov8n"}
    assert spec["dataset_version"] == 1  # registration made version 1
    assert run["registration"] is None
    names = Subjects(settings.bus_prefix)
    async with asyncio.timeout(30):  # the job goes out after the answer; the run notes it once it is stored
        while (await client.get(f"/api/v1/runs/{run['id']}")).json()["enqueued_at"] is None:
            await asyncio.sleep(0.05)
    async with bus(settings) as nc:
        job = job_decoder.decode((await nc.jetstream().get_last_msg(names.jobs_stream, names.job("gpu-a"))).data)
    assert job.spec.data == spec["data"] and job.spec.dataset_id == dataset["id"]

    default_model = (await _train(client, dataset=dataset["id"])).json()
    assert default_model["spec"]["model"] == "yolov8n" and default_model["pool"] == "cpu"


@pytest.mark.parametrize(("body", "field"), [
    ({"data": "/etc"}, "data"),
    ({"dataset_id": "x"}, "dataset_id"),
    ({"model": "/etc/passwd"}, "model"),
    ({"model": "file:///etc/passwd"}, "model"),
    ({"model": "../yolov8n.pt"}, "model"),
    ({"model": "library:nope"}, "model"),
    ({"model": "artifact:0123456789abcdef0123456789abcdef"}, "model"),
    ({"model": "yolov8n-cls"}, "dataset"),
    ({"dataset": "nope"}, "dataset"),
    ({"extra": {"bogus": 1}}, "extra.bogus"),
    ({"extra": {"mosaic": "lots"}}, "extra.mosaic"),
    ({"extra": {"data": "/etc"}}, "extra.data"),
    ({"extra": {"epochs": 3}}, "extra.epochs"),
    ({"epochs": 0}, "epochs"),
    ({"optimizer": "Magic"}, "optimizer"),
    ({"architecture": "nope"}, "architecture"),
    ({"config": "nope"}, "config"),
    ({"pool": "bad pool"}, "pool"),
])
async def test_a_train_request_with_a_path_or_a_bad_value_is_a_422_naming_the_field(
    client: AsyncTestClient, body: dict[str, Any], field: str
) -> None:
    response = await _train(client, **{"dataset": "shapes", **body})
    error = problem(response, 422)
    named = [(e["field"], e["message"]) for e in error["errors"]]
    assert any(f == field or f"unknown field `{field}`" in m for f, m in named), named
    assert (await client.get("/api/v1/projects/vision/runs")).json()["total"] == 0


async def test_a_train_request_without_a_dataset_is_a_422(client: AsyncTestClient) -> None:
    error = problem(await _train(client, model="yolov8n"), 422)
    assert error["errors"] == [{"field": "dataset", "message": "required: a registered dataset (id or name)"}]


async def test_a_library_model_resolves_to_its_weights_and_version(
    client: AsyncTestClient, weights: Path
) -> None:
    uploaded = await client.post("/api/v1/models", files={"file": ("best.pt", weights.read_bytes())},
                                 data={"name": "shapes-net"})
    assert uploaded.status_code == 201, uploaded.text
    version = uploaded.json()
    for ref in ("library:shapes-net", "library:shapes-net:1", f"library:{version['id']}"):
        run = (await _train(client, dataset="shapes", model=ref)).json()
        assert run["spec"]["model"].startswith("file://") and run["spec"]["model"].endswith("weights.pt")
        assert run["options"]["model_version_id"] == version["id"] and run["options"]["model"] == ref
    problem(await _train(client, dataset="shapes", model="library:shapes-net:7"), 422)
    problem(await _train(client, dataset="letters", model="library:shapes-net"), 422)  # detect model, classify data
    val = await start_run(client, "vision", {"kind": "yolo.val", "model": "library:shapes-net", "dataset": "shapes",
                                             "split": "val", "imgsz": 64})
    assert val.status_code == 201, val.text
    assert val.json()["spec"]["split"] == "val" and val.json()["spec"]["data"].endswith("data.yaml")
    export = await start_run(client, "vision", {"kind": "yolo.export", "model": "library:shapes-net",
                                                "format": "torchscript", "imgsz": 64})
    assert export.status_code == 201 and export.json()["spec"]["format"] == "torchscript"
    problem(await start_run(client, "vision", {"kind": "yolo.export", "format": "onnx"}), 422)
    problem(await start_run(client, "vision", {"kind": "yolo.export", "model": "library:shapes-net",
                                               "format": "exe"}), 422)


async def test_saved_configurations_fill_what_a_request_leaves_out(client: AsyncTestClient) -> None:
    base = "/api/v1/projects/vision/configs"
    saved = await client.post(base, json={"name": "fast", "kind": "yolo.train", "description": "smoke test",
                                          "params": {"dataset": "shapes", "epochs": 3, "imgsz": 64,
                                                     "extra": {"mosaic": 0.0, "fliplr": 0.1}}})
    assert saved.status_code == 201, saved.text
    assert saved.json()["params"]["epochs"] == 3
    problem(await client.post(base, json={"name": "fast", "kind": "yolo.train", "params": {}}), 409)
    bad = problem(await client.post(base, json={"name": "bad", "kind": "yolo.train", "params": {"epochs": "x"}}), 422)
    assert bad["errors"][0]["field"] == "params.epochs"
    bad = problem(await client.post(base, json={"name": "bad", "kind": "yolo.train",
                                                "params": {"extra": {"nope": 1}}}), 422)
    assert bad["errors"][0]["field"] == "params.extra.nope"
    problem(await client.post(base, json={"name": "bad", "kind": "yolo.train", "params": {"data": "/x"}}), 422)
    missing = problem(await client.post(base, json={"name": "bad", "kind": "container", "params": {}}), 422)
    assert missing["errors"][0]["field"] == "params.start_command", "a container configuration is a whole request"
    bad = problem(await client.post(base, json={"name": "bad", "kind": "container",
                                                "params": {"start_command": "x", "backend": "ssh"}}), 422)
    assert bad["errors"][0]["field"] == "params.backend"
    problem(await client.post(base, json={"name": "bad", "kind": "container",
                                          "params": {"start_command": "x", "config": "fast"}}), 422)
    box = await client.post(base, json={"name": "box", "kind": "container", "params": {
        "backend": "docker", "target": "llama", "start_command": "llamafactory-cli train x.yaml", "timeout_s": 60}})
    assert box.status_code == 201, box.text
    assert box.json()["params"] == {"backend": "docker", "target": "llama",
                                    "start_command": "llamafactory-cli train x.yaml", "timeout_s": 60.0}
    assert [c["name"] for c in (await client.get(base, params={"kind": "container"})).json()["items"]] == ["box"]
    assert (await client.delete(f"{base}/box")).status_code == 204
    assert (await client.post(base, json={"name": "check", "kind": "yolo.val",
                                          "params": {"model": "yolov8n", "dataset": "shapes"}})).status_code == 201

    listed = (await client.get(base)).json()
    assert [c["name"] for c in listed["items"]] == ["check", "fast"] and listed["total"] == 2
    assert [c["name"] for c in (await client.get(base, params={"kind": "yolo.val"})).json()["items"]] == ["check"]
    assert (await client.get(f"{base}/fast")).json()["description"] == "smoke test"
    problem(await client.get(f"{base}/nope"), 404)

    run = (await _train(client, config="fast", epochs=5, extra={"fliplr": 0.5})).json()
    spec = run["spec"]
    assert (spec["epochs"], spec["imgsz"], spec["extra"]) == (5, 64, {"mosaic": 0.0, "fliplr": 0.5})
    assert run["options"]["config"] == "fast"
    problem(await start_run(client, "vision", {"kind": "yolo.val", "config": "fast"}), 422)  # a train config

    assert (await client.delete(f"{base}/fast")).status_code == 204
    problem(await client.delete(f"{base}/fast"), 404)
    problem(await _train(client, config="fast"), 422)


async def test_architectures_are_validated_saved_and_trained_by_name(client: AsyncTestClient) -> None:
    report = await client.post("/api/v1/architectures/validate", json={"yaml": TINY_YAML, "imgsz": 64})
    assert report.status_code == 200, report.text
    body = report.json()
    assert body["valid"] and body["task"] == "classify" and body["parameters"] > 0 and body["gflops"] >= 0
    assert [layer["line"] for layer in body["layers"]] == [3, 4, 6]
    assert body["layers"][0]["output_shape"] == [1, 8, 32, 32] and body["layers"][0]["from"] == -1

    invalid = problem(await client.post("/api/v1/architectures/validate", json={"yaml": BROKEN_YAML}), 422)
    assert invalid["errors"][0]["line"] == 4 and "NoSuchModule" in invalid["errors"][0]["message"]
    not_yaml = problem(await client.post("/api/v1/architectures/validate", json={"yaml": "a: [1,\nb"}), 422)
    assert not_yaml["errors"][0]["field"] == "yaml"
    problem(await client.post("/api/v1/architectures/validate", json={"yaml": TINY_YAML, "imgsz": 99999}), 422)

    saved = await client.post("/api/v1/architectures", json={"name": "tiny-cls", "yaml": TINY_YAML, "imgsz": 64})
    assert saved.status_code == 201, saved.text
    assert saved.json()["task"] == "classify" and saved.json()["summary"]["layers"] == 3
    problem(await client.post("/api/v1/architectures", json={"name": "tiny-cls", "yaml": TINY_YAML}), 409)
    problem(await client.post("/api/v1/architectures", json={"name": "broken", "yaml": BROKEN_YAML}), 422)
    assert [a["name"] for a in (await client.get("/api/v1/architectures")).json()["items"]] == ["tiny-cls"]
    assert (await client.get("/api/v1/architectures/tiny-cls")).json()["yaml"] == TINY_YAML

    run = (await _train(client, dataset="letters", architecture="tiny-cls", imgsz=64)).json()
    assert run["spec"]["model_yaml"] == TINY_YAML and run["spec"]["model"] is None
    assert run["options"]["architecture"] == "tiny-cls"
    problem(await _train(client, dataset="shapes", architecture="tiny-cls"), 422)  # classify net, detect data
    assert (await client.delete("/api/v1/architectures/tiny-cls")).status_code == 204
    problem(await client.get("/api/v1/architectures/tiny-cls"), 404)


async def test_uploaded_images_and_dataset_images_become_predict_sources(client: AsyncTestClient) -> None:
    image = _png()
    uploaded = await client.post("/api/v1/uploads", files={"file": ("photo one.png", image, "image/png")})
    assert uploaded.status_code == 201, uploaded.text
    upload = uploaded.json()
    assert upload["kind"] == "upload" and upload["size_bytes"] == len(image) and upload["run_id"] is None
    assert upload["meta"]["width"] == 48 and upload["media_type"] == "image/png" and upload["name"] == "photo_one.png"

    assert (await client.get(f"/api/v1/artifacts/{upload['id']}")).json() == upload
    full = await client.get(f"/api/v1/artifacts/{upload['id']}/download")
    assert full.status_code == 200 and full.content == image
    part = await client.get(f"/api/v1/artifacts/{upload['id']}/download", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == image[:10]
    assert part.headers["content-range"] == f"bytes 0-9/{len(image)}"
    problem(await client.get("/api/v1/artifacts/nope"), 404)

    problem(await client.post("/api/v1/uploads", files={"file": ("x.png", b"not an image", "image/png")}), 422)
    problem(await client.post("/api/v1/uploads", files={"file": ("x.png", b"", "image/png")}), 400)
    problem(await client.post("/api/v1/uploads", json={"file": "x"}), 415)

    run = await start_run(client, "vision", {"kind": "yolo.predict", "model": "yolov8n", "conf": 0.4,
                                             "images": [upload["id"], "dataset:shapes:val:0", "dataset:shapes:train"]})
    assert run.status_code == 201, run.text
    sources = run.json()["spec"]["sources"]
    assert sources[0] == upload["uri"] and len(sources) == 2 + 4
    assert all(Path(s).is_file() for s in sources[1:])
    for bad in (["0123456789abcdef0123456789abcdef"], ["/etc/passwd"], ["dataset:shapes:val:99"],
                ["dataset:shapes:nosplit"], ["dataset:nope:val:0"]):
        error = problem(await start_run(client, "vision", {"kind": "yolo.predict", "model": "yolov8n",
                                                           "images": bad}), 422)
        assert error["errors"][0]["field"] == "images[0]", error
    problem(await start_run(client, "vision", {"kind": "yolo.predict", "model": "yolov8n",
                                               "sources": ["/etc/passwd"]}), 422)
    problem(await start_run(client, "vision", {"kind": "yolo.predict", "model": "yolov8n"}), 422)


async def test_export_formats_list_every_format_with_what_this_deployment_can_make(client: AsyncTestClient) -> None:
    response = await client.get("/api/v1/export-formats")
    assert response.status_code == 200, response.text
    formats = {f["format"]: f for f in response.json()["items"]}
    assert {"torchscript", "onnx", "openvino", "engine", "coreml"} <= set(formats)
    assert formats["torchscript"]["available"] and formats["onnx"]["available"]
    assert formats["onnx"]["suffix"] == ".onnx" and formats["onnx"]["description"]
    assert not formats["engine"]["available"] and formats["engine"]["missing"]
    assert (await client.get("/api/v1/export-formats")).json() == response.json()


async def test_sync_predict_answers_504_when_no_runner_takes_it_and_errors_for_bad_input(
    client: AsyncTestClient, weights: Path
) -> None:
    assert (await client.post("/api/v1/models", files={"file": ("best.pt", weights.read_bytes())},
                              data={"name": "sync"})).status_code == 201
    image = {"file": ("bus.png", _png(), "image/png")}
    problem(await client.post("/api/v1/models/nope/predict", files=image), 404)
    problem(await client.post("/api/v1/models/sync/predict", files=image, data={"conf": "2"}), 422)
    problem(await client.post("/api/v1/models/sync/predict", files=image, data={"version": "9"}), 404)
    problem(await client.post("/api/v1/models/sync/predict", files=image, data={"project": "nope"}), 422)
    problem(await client.post("/api/v1/models/sync/predict", files={"file": ("x.png", b"xx", "image/png")}), 422)
    timed_out = problem(await client.post("/api/v1/models/sync/predict", files=image, data={"imgsz": "64"}), 504)
    runs = (await client.get("/api/v1/projects/predict/runs")).json()
    assert runs["total"] == 1 and runs["items"][0]["id"] in timed_out["detail"]
    assert runs["items"][0]["spec"]["imgsz"] == 64 and runs["items"][0]["status"] == "queued"


async def test_a_completed_training_registers_its_best_weights_as_the_next_model_version(
    client: AsyncTestClient, settings: Settings, weights: Path
) -> None:
    uploaded = (await client.post("/api/v1/models", files={"file": ("best.pt", weights.read_bytes())},
                                  data={"name": "base"})).json()
    run = (await _train(client, dataset="shapes", model="library:base", register_as="shapes-detector")).json()
    best = settings.artifacts_dir / "runs" / run["id"] / "attempt-1" / "weights" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(weights.read_bytes())
    common = {"run_id": run["id"], "project_id": run["project_id"], "attempt": 1, "runner_id": "r1"}
    gw = client.app.state.gw

    async def finish() -> None:
        await publish(gw, RunClaimed(**common, seq=1), RunStarted(**common, seq=2),
                      RunArtifact(**common, seq=3, name="weights/best.pt", uri=best.as_uri(), kind="weights"),
                      RunCompleted(**common, seq=4, result={"metrics": {"metrics/mAP50(B)": 0.5, "fitness": 0.4}}))

    in_app(client, finish)

    async def completed() -> Any:
        body = (await client.get(f"/api/v1/runs/{run['id']}")).json()
        return body if body["status"] == "completed" else None

    body = await wait_for(completed, timeout=30, what="the run completed")
    registration = body["registration"]  # written before the completion is stored
    assert "model" in registration, registration
    assert registration["model"] == "shapes-detector" and registration["version"] == 1
    version = (await client.get("/api/v1/models/shapes-detector/versions/1")).json()
    assert version["source_run_id"] == run["id"] and version["dataset_id"] == run["spec"]["dataset_id"]
    assert version["parent_version_id"] == uploaded["id"] and version["task"] == "detect"
    assert version["class_names"] == ["cat", "dog", "bird"] and version["metrics"]["metrics/mAP50(B)"] == 0.5

    registrar = gw.registrar
    assert isinstance(registrar, WeightsRegistrar)
    again = in_app(client, registrar.register, run["id"])
    assert again == registration
    assert (await client.get("/api/v1/models/shapes-detector")).json()["versions_count"] == 1


async def test_a_trainings_model_version_is_readable_once_its_run_reads_completed(
    client: AsyncTestClient, settings: Settings, weights: Path
) -> None:
    run = (await _train(client, dataset="shapes", register_as="at-once")).json()
    best = settings.artifacts_dir / "runs" / run["id"] / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(weights.read_bytes())
    common = {"run_id": run["id"], "project_id": run["project_id"], "attempt": 1, "runner_id": "r1"}
    in_app(client, publish, client.app.state.gw, RunStarted(**common, seq=1),
           RunArtifact(**common, seq=2, name="weights/best.pt", uri=best.as_uri()), RunCompleted(**common, seq=3))

    async def completed() -> Any:
        body = (await client.get(f"/api/v1/runs/{run['id']}")).json()
        return body if body["status"] == "completed" else None

    body = await wait_for(completed, timeout=30, what="the run completed")
    # the first read that says completed already names the version, and the version is there
    assert body["registration"] and body["registration"]["ref"] == "at-once:1", body["registration"]
    version = await client.get("/api/v1/models/at-once/versions/1")
    assert version.status_code == 200 and version.json()["source_run_id"] == run["id"]


async def test_a_training_without_register_as_goes_to_the_projects_model_or_a_task_named_one(
    client: AsyncTestClient, settings: Settings, weights: Path
) -> None:
    from tests.library_support import sql

    admin = (await client.get("/api/v1/auth/me")).json()["id"]  # the runs' owner: the model is theirs
    await sql(settings, "insert into models (id, name, task, description, last_version, owner_id) "
                        "values ('m1', 'vision', 'classify', '', 0, :owner)", owner=admin)
    run = (await _train(client, dataset="shapes")).json()
    best = settings.artifacts_dir / "runs" / run["id"] / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(weights.read_bytes())
    common = {"run_id": run["id"], "project_id": run["project_id"], "attempt": 1, "runner_id": "r1"}
    gw = client.app.state.gw
    in_app(client, publish, gw, RunStarted(**common, seq=1),
           RunArtifact(**common, seq=2, name="weights/best.pt", uri=best.as_uri()), RunCompleted(**common, seq=3))

    async def registered() -> Any:
        return (await client.get(f"/api/v1/runs/{run['id']}")).json()["registration"]

    registration = await wait_for(registered, timeout=15, what="registration")
    assert registration["model"] == "vision-detect", registration

    nothing = (await _train(client, dataset="shapes")).json()
    common = {**common, "run_id": nothing["id"]}
    in_app(client, publish, gw, RunStarted(**common, seq=1), RunCompleted(**common, seq=2))

    async def refused() -> Any:
        return (await client.get(f"/api/v1/runs/{nothing['id']}")).json()["registration"]

    assert "no weights" in (await wait_for(refused, timeout=15, what="registration"))["error"]


async def test_resuming_a_training_keeps_its_options(client: AsyncTestClient, settings: Settings) -> None:
    from tests.integration.rest_helpers import add_checkpoint, set_run

    run = (await _train(client, dataset="shapes", register_as="keep-me")).json()
    await set_run(settings, run["id"], status="canceled", attempt=1)
    await add_checkpoint(settings, run["id"], step=1)
    resumed = await client.post(f"/api/v1/runs/{run['id']}/resume")
    assert resumed.status_code == 201, resumed.text
    assert without_request_id(resumed.json()["options"]) == without_request_id(run["options"])
    assert resumed.json()["options"]["register_as"] == "keep-me"
    assert json.dumps(resumed.json()["spec"], sort_keys=True) == json.dumps(run["spec"], sort_keys=True)
