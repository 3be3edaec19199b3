"""The Python client (`from trainforge import Client`) against one real `trainforge up` shared by this module:
train with a local folder uploaded on the fly and callbacks seeing every epoch in order, stop leaving a
resumable checkpoint and resume continuing, validate, infer on Ultralytics' two photos (paths, bytes, PIL,
numpy), export to ONNX loaded with onnxruntime, the weights library, listings, container runs, and errors
raising the right exception with the field named. Untrained models from Ultralytics' YAMLs, 64 px, CPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import asyncpg
import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import _asyncpg_dsn, _delete_streams, with_database
from tests.datagen import make_detect_dataset
from tests.docker_engine import DockerEngine
from tests.e2e.stackctl import REPO, Stack
from trainforge import Client
from trainforge.client import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    RunCheckpoint,
    RunDetail,
    RunEvent,
    RunLog,
    RunMetrics,
    RunProgress,
    Unauthorized,
)

pytestmark = pytest.mark.slow

ASSETS = Path(next(iter(importlib.util.find_spec("ultralytics").submodule_search_locations))) / "assets"  # type: ignore[union-attr, arg-type]
PHOTOS = {"bus.jpg": (810, 1080), "zidane.jpg": (1280, 720)}
TRAIN = {"imgsz": 64, "batch": 8, "device": "cpu", "extra": {"plots": False}}


@contextlib.contextmanager
def _training_container(request: pytest.FixtureRequest, root: Path) -> Iterator[dict[str, str]]:
    """A training container of the private Docker engine (tests/docker_engine.py; its data folder mounted at
    /data) and a runner target `llm` for it, as the stack's environment; empty when no engine can run here."""
    try:
        engine: DockerEngine = request.getfixturevalue("docker_engine")
    except pytest.skip.Exception:
        yield {}
        return
    (root / "data").mkdir()
    with engine.container("client-llm", {root / "data": "/data"}) as container:
        targets = root / "targets.toml"
        targets.write_text(f'[targets.llm]\ncontainer = "{container}"\nworkdir = "/app"\n'
                           f'host_root = "{root / "data"}"\ncontainer_root = "/data"\n'
                           'output_dir = "outputs/{run_id}"\npoll_s = 0.1\n')
        yield {"DOCKER_HOST": engine.host, "TRAINFORGE_RUNNER_TARGETS_FILE": str(targets)}


@pytest.fixture(scope="module")
async def client_stack(nats_url: str, postgres_url: str, template_database: str,
                       tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest,
                       ) -> AsyncIterator[Stack]:
    """One stack for the module: its own database (a clone of the template) and bus prefix."""
    name, prefix = f"tf_client_{uuid.uuid4().hex[:10]}", f"t{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(_asyncpg_dsn(postgres_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    finally:
        await conn.close()
    env = {
        "TRAINFORGE_NATS_URL": nats_url, "TRAINFORGE_DATABASE_URL": with_database(postgres_url, name),
        "TRAINFORGE_BUS_PREFIX": prefix, "TRAINFORGE_JOB_ACK_WAIT_S": "3", "TRAINFORGE_RUNNER_HEARTBEAT_S": "1",
        "TRAINFORGE_SHUTDOWN_GRACE_S": "2", "TRAINFORGE_CANCEL_GRACE_S": "2", "TRAINFORGE_SSE_KEEPALIVE_S": "1",
        "TRAINFORGE_LOG_LEVEL": "INFO", "TRAINFORGE_RATE_LIMIT_LOGIN_PER_MINUTE": "3",
    }
    with _training_container(request, tmp_path_factory.mktemp("docker")) as docker_env:
        stack = Stack(state_dir=tmp_path_factory.mktemp("client-stack") / "state", env=env | docker_env)
        await anyio.to_thread.run_sync(stack.start)
        try:
            yield stack
        finally:
            await anyio.to_thread.run_sync(stack.stop)
            conn = await asyncpg.connect(_asyncpg_dsn(postgres_url))
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()
        await _delete_streams(nats_url, prefix)


@pytest.fixture(scope="module")
def client(client_stack: Stack) -> Iterator[Client]:
    with Client(client_stack.url, client_stack.token, project="client") as c:
        yield c


@dataclass
class Seen:
    events: list[str] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    checkpoints: list[int | None] = field(default_factory=list)
    progress: int = 0
    log_lines: int = 0
    uploaded: list[tuple[int, int]] = field(default_factory=list)
    ended: list[RunDetail] = field(default_factory=list)


@dataclass
class Trained:
    run: RunDetail
    seen: Seen
    dataset: str


@pytest.fixture(scope="module")
def trained(client: Client, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A 3-epoch training from a local folder, uploaded on the fly; weights registered as `client-det`."""
    folder = make_detect_dataset(tmp_path_factory.mktemp("data") / "shapes", imgsz=128).parent
    seen = Seen()
    order: list[str] = []

    def on_event(event: RunEvent) -> None:
        seen.events.append(event.type)

    def on_metrics(event: RunMetrics) -> None:
        order.append("metrics")
        if event.epoch is not None:
            seen.epochs.append(event.epoch)
            seen.metrics.append(event.metrics)

    def on_progress(event: RunProgress) -> None:
        seen.progress += 1

    def on_checkpoint(event: RunCheckpoint) -> None:
        seen.checkpoints.append(event.epoch)

    def on_log(event: RunLog) -> None:
        seen.log_lines += len(event.lines)

    run = client.train("yolov8n", folder, epochs=3, name="client-det", dataset_name="client-shapes", **TRAIN,
                       on_upload=lambda sent, total: seen.uploaded.append((sent, total)),
                       callbacks={"on_event": on_event, "on_metrics": on_metrics, "on_progress": on_progress,
                                  "on_checkpoint": on_checkpoint, "on_log": on_log,
                                  "on_end": seen.ended.append})
    assert isinstance(run, RunDetail)
    return Trained(run=run, seen=seen, dataset="client-shapes")


def test_train_uploads_a_local_folder_and_the_callbacks_see_every_epoch_in_order(
    client: Client, trained: Trained
) -> None:
    run, seen = trained.run, trained.seen
    assert run.status == "completed", run.error
    assert seen.epochs == [1, 2, 3]
    assert all("metrics/mAP50(B)" in m for m in seen.metrics)
    assert seen.progress > 0 and seen.log_lines > 0 and seen.checkpoints and seen.checkpoints[-1] == 3
    assert seen.uploaded and seen.uploaded[-1][0] == seen.uploaded[-1][1] > 0
    assert seen.events[0] == "run.queued" and seen.events[-1] == "run.completed"
    assert [r.id for r in seen.ended] == [run.id] and seen.ended[0].status == "completed"
    dataset = client.get_dataset(trained.dataset)
    assert dataset.format == "yolo" and dataset.splits == {"train": 16, "val": 8} and dataset.classes == ["a", "b"]

    # the series as the projection keeps it, and the log
    assert [m.epoch for m in client.metrics(run) if m.epoch is not None] == [1, 2, 3]
    assert [m.metrics for m in client.metrics(run, name="metrics/mAP50(B)") if m.epoch is not None] == [
        {"metrics/mAP50(B)": m["metrics/mAP50(B)"]} for m in seen.metrics]
    assert sum(1 for _ in client.logs(run)) == seen.log_lines

    # events() replays from the start and ends after the terminal event; Last-Event-ID resumes
    events = list(client.events(run))
    assert [e.type for e in events] == seen.events
    later = list(client.http.follow(f"/runs/{run.id}/events"))
    middle = later[len(later) // 2].id
    assert [e.type for e in client.events(run, last_event_id=middle)] == [e.event for e in later[len(later) // 2 + 1:]]


def test_validate_infer_and_export_to_onnx(client: Client, trained: Trained, tmp_path: Path) -> None:
    import onnxruntime

    registration = client.get_run(trained.run).registration
    assert registration is not None and registration["model"] == "client-det", registration
    metrics = client.validate("library:client-det", trained.dataset, imgsz=64, batch=8, conf=0.25)
    assert metrics.task == "detect" and metrics.mAP50 is not None and metrics.mAP50_95 is not None
    assert metrics.precision is not None and metrics.recall is not None and metrics.f1 is not None
    assert {c.name for c in metrics.per_class} <= {"a", "b"} and metrics.run_id

    bus, zidane = ASSETS / "bus.jpg", ASSETS / "zidane.jpg"
    images = [bus, zidane.read_bytes(), Image.open(bus), np.asarray(Image.open(zidane).convert("RGB"))]
    predictions = client.infer("client-det", images, conf=0.01, imgsz=64, max_det=20)
    sizes = [PHOTOS["bus.jpg"], PHOTOS["zidane.jpg"]] * 2
    assert [(p.width, p.height) for p in predictions] == sizes
    for prediction in predictions:
        assert prediction.run_id and len(prediction.boxes) <= 20
        for box in prediction.boxes:
            assert len(box.xyxy) == 4 and 0 <= box.score <= 1 and box.name in {"a", "b"}
            assert 0 <= box.xyxy[0] <= box.xyxy[2] <= prediction.width + 1

    exported = client.export("library:client-det", "onnx", imgsz=64, path=tmp_path)
    assert exported.parent == tmp_path and exported.suffix == ".onnx"
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (input_,) = session.get_inputs()
    assert input_.shape == [1, 3, 64, 64]
    (output,) = session.run(None, {input_.name: np.zeros((1, 3, 64, 64), dtype=np.float32)})
    assert output.shape[0] == 1

    # The exported file predicts too, as one yolo.predict run over uploaded images
    export_run = next(client.runs(kind="yolo.export"))
    artifact = next(a for a in client.artifacts(export_run) if a.kind == "model")
    through_onnx = client.infer(artifact, [bus, zidane], conf=0.01, imgsz=64)
    assert [(p.width, p.height) for p in through_onnx] == [PHOTOS["bus.jpg"], PHOTOS["zidane.jpg"]]
    assert len({p.run_id for p in through_onnx}) == 1


def test_train_a_local_model_yaml_from_scratch_on_a_folder_uploaded_once(client: Client, tmp_path: Path) -> None:
    architecture = tmp_path / "tiny-net.yaml"
    architecture.write_text((ASSETS.parent / "cfg" / "models" / "v8" / "yolov8.yaml").read_text())
    folder = make_detect_dataset(tmp_path / "again", n_train=8, n_val=4, imgsz=64).parent
    uploads: list[int] = []
    run = client.train(architecture, folder, epochs=1, project="client-yaml", **TRAIN,
                       on_upload=lambda sent, total: uploads.append(sent))
    assert run.status == "completed", run.error
    assert run.spec["model"] is None and "backbone" in run.spec["model_yaml"]
    assert uploads
    # The same folder again: found registered by its content digest, not uploaded twice
    again: list[int] = []
    ref = client._dataset_ref(folder, lambda sent, total: again.append(sent), None)
    assert not again and ref == run.spec["dataset_id"]
    assert client.get_dataset(ref).name.startswith("again-")


def test_the_weights_library_datasets_projects_and_runs_listings(
    client: Client, trained: Trained, tmp_path: Path
) -> None:
    models = {m.name: m for m in client.list_models()}
    assert "client-det" in models and models["client-det"].latest is not None
    detail = client.get_model("client-det")
    assert detail.versions[0].class_names == ["a", "b"] and detail.versions[0].source_run_id == trained.run.id
    weights = client.download_model("client-det", path=tmp_path)
    assert weights.name == "client-det-v1.pt" and weights.stat().st_size == detail.versions[0].size_bytes
    copy = client.upload_model(weights, "client-copy", description="a copy")
    assert (copy.model_name, copy.version, copy.task) == ("client-copy", 1, "detect")
    again = client.upload_model(weights, "client-copy")
    assert again.version == 2 and len(client.get_model("client-copy").versions) == 2
    client.delete_model("client-copy", version=1)
    assert [v.version for v in client.get_model("client-copy").versions] == [2]
    client.delete_model("client-copy")
    with pytest.raises(NotFound):
        client.get_model("client-copy")

    assert trained.dataset in {d.name for d in client.datasets(task="detect")}
    assert trained.dataset not in {d.name for d in client.datasets(task="classify")}
    assert "client" in {p.name for p in client.projects()}
    for name in ("paging-a", "paging-b", "paging-c"):
        client.ensure_project(name)
    small_pages = list(client.http.pages("/projects", type=type(client.get_project("client")), page_size=2))
    assert {"paging-a", "paging-b", "paging-c", "client"} <= {p.name for p in small_pages}
    assert len(small_pages) == len({p.id for p in small_pages})
    completed = [r.id for r in client.runs(status="completed", kind="yolo.train")]
    assert trained.run.id in completed
    assert trained.run.id not in [r.id for r in client.runs(status=["failed", "canceled"])]


def test_a_datasets_statistics_and_augmentation_preview(client: Client, trained: Trained) -> None:
    stats = client.dataset_stats(trained.dataset)
    assert stats.version == 1 and stats.images == sum(s["images"] for s in stats.splits.values()) > 0
    assert client.dataset_stats(trained.dataset, version=1).computed_at == stats.computed_at  # kept
    preview = client.augment(trained.dataset, count=2, imgsz=64, seed=3, mosaic=0.0, fliplr=1.0)
    assert len(preview.images) == 2 and preview.settings["fliplr"] == 1.0 and preview.settings["hsv_h"] == 0.015
    assert preview.images[0].data()[:2] == b"\xff\xd8"  # a JPEG
    with pytest.raises(Invalid) as bad:
        client.augment(trained.dataset, fliplr=2.0)
    assert "fliplr" in str(bad.value)


def test_stop_keeps_a_resumable_checkpoint_and_resume_continues(client: Client, trained: Trained) -> None:
    class StopWaiting(Exception):
        pass

    def at_first_checkpoint(event: RunCheckpoint) -> None:
        raise StopWaiting(event.checkpoint_id)

    # A callback's exception stops the wait and reaches the caller; the run goes on.
    with pytest.raises(StopWaiting):
        client.train("yolov8n", trained.dataset, epochs=5, project="client-stop", **TRAIN,
                     callbacks={"on_checkpoint": at_first_checkpoint})
    (run,) = client.runs("client-stop")
    assert run.status in {"claimed", "running"}
    assert client.stop(run) is True
    stopped = client.get_run(run)
    assert stopped.status == "canceled"
    checkpoint = client.checkpoints(run)[0]
    assert checkpoint.resumable and checkpoint.epoch is not None and 1 <= checkpoint.epoch < 5
    assert client.stop(run) is False  # finished already

    epochs: list[int] = []
    resumed = client.resume(run, checkpoint, callbacks={
        "on_metrics": lambda e: epochs.append(e.epoch) if e.epoch is not None else None})
    assert resumed.status == "completed", resumed.error
    assert resumed.resume_of == run.id and resumed.resume_checkpoint_id == checkpoint.id
    assert epochs == list(range(checkpoint.epoch + 1, 6))


class LosingProxy(BaseHTTPRequestHandler):
    """Forwards to the gateway; the answer to the first POST of a run is lost on its way back (the connection
    closes after the gateway created the run), as a flaky network would do."""

    upstream = ""
    lost: list[str | None] = []
    keys: list[str | None] = []

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "content-length", "connection"}}
        answer = httpx.request(self.command, self.upstream + self.path, headers=headers, content=body, timeout=60)
        if self.command == "POST" and self.path.endswith("/runs"):
            LosingProxy.keys.append(self.headers.get("Idempotency-Key"))
            if not LosingProxy.lost:
                LosingProxy.lost.append(self.headers.get("Idempotency-Key"))
                self.close_connection = True
                return
        self.send_response(answer.status_code)
        for name, value in answer.headers.items():
            if name.lower() not in {"transfer-encoding", "content-length", "connection", "content-encoding"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = do_DELETE = _forward

    def log_message(self, *args: object) -> None:
        pass


def test_a_train_whose_answer_is_lost_is_retried_and_starts_one_run(
    client_stack: Stack, client: Client, trained: Trained
) -> None:
    LosingProxy.upstream, LosingProxy.lost, LosingProxy.keys = client_stack.url, [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), LosingProxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.server_address[1]}", client_stack.token) as flaky:
            run = flaky.train("yolov8n", trained.dataset, epochs=1, project="client-once", wait=False, **TRAIN)
    finally:
        server.shutdown()
        server.server_close()
    assert len(LosingProxy.keys) == 2 and LosingProxy.keys[0] == LosingProxy.keys[1] == LosingProxy.lost[0]
    assert [r.id for r in client.runs("client-once")] == [run.id]
    assert client.wait(run).status == "completed"


def test_container_run_reports_parsed_metrics_and_checkpoints_to_the_callbacks(
    client_stack: Stack, client: Client
) -> None:
    if "TRAINFORGE_RUNNER_TARGETS_FILE" not in client_stack.env:
        pytest.skip("no Docker engine here (see the docker_engine fixture's reason)")
    command = "train-llm --output_dir {output_dir} --max_steps 6 --save_steps 3 --logging_steps 2 --step_time 0.05"
    losses: list[float] = []
    checkpoints: list[int | None] = []
    run = client.container_run("client-llm", command, target="llm", env={"HELLO": "1"},
                               callbacks={"on_metrics": lambda e: losses.append(e.metrics["loss"])
                                          if "loss" in e.metrics else None,
                                          "on_checkpoint": lambda e: checkpoints.append(e.step)})
    assert run.status == "completed", run.error
    assert run.spec["backend"] == "docker" and run.spec["target"] == "llm"
    assert len(losses) >= 2 and checkpoints == [3, 6]


def test_errors_raise_the_matching_exception_with_the_field_named(
    client_stack: Stack, client: Client, trained: Trained
) -> None:
    with pytest.raises(Invalid) as invalid:
        client.train("yolov8n", "client-shapes", epochs=0, imgsz=64, project="client-errors")
    assert invalid.value.status == 422 and "epochs" in invalid.value.fields, invalid.value.errors
    with pytest.raises(Invalid) as extra:
        client.train("yolov8n", "client-shapes", epochs=1, extra={"lr": 3}, project="client-errors")
    assert "extra.lr" in extra.value.fields, extra.value.errors
    with pytest.raises(NotFound):
        client.get_run("0" * 32)
    with pytest.raises(Conflict):
        client.create_project("client")
    with Client(client_stack.url, "tf_not-a-token") as stranger, pytest.raises(Unauthorized):
        stranger.list_models()

    password = (client_stack.state_dir / "secrets" / "admin-password").read_text().strip()
    client.http.request("POST", "/users", json={"username": "mia", "password": "mia-password-1"})
    with Client.login(client_stack.url, "mia", "mia-password-1") as mia:
        assert mia.me()["username"] == "mia"
        with pytest.raises(Forbidden):
            mia.http.request("GET", "/users")
    with Client.login(client_stack.url, "admin", password) as admin:
        assert admin.me()["username"] == "admin"
        assert admin._session is not None
        admin._session.access_token = "expired"  # as if it had expired: the next call refreshes it
        assert admin.me()["username"] == "admin"
        assert [e.type for e in admin.events(trained.run)][-1] == "run.completed"
    with pytest.raises(RateLimited) as limited:  # 3 logins a minute in this stack
        for _ in range(5):
            try:
                Client.login(client_stack.url, "mia", "wrong-password").close()
            except Unauthorized:
                pass
    assert limited.value.retry_after is not None and limited.value.retry_after > 0


def test_the_tour_runs_every_verb(client_stack: Stack, tmp_path: Path) -> None:
    folder = make_detect_dataset(tmp_path / "tour-data", n_train=8, n_val=4, imgsz=64).parent
    env = {**os.environ, "TRAINFORGE_API_URL": client_stack.url, "TRAINFORGE_API_TOKEN": client_stack.token,
           "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "examples" / "client_tour.py"), str(folder),
                             str(ASSETS / "bus.jpg"), str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refused: {'epochs'" in result.stdout and "container run completed" in result.stdout


def test_the_quick_start_of_docs_python_md_runs_as_written(client_stack: Stack, tmp_path: Path) -> None:
    """The ```python blocks of docs/python.md not marked `notest`, in order, in one interpreter, with the
    environment the doc names (the gateway's URL; the token `trainforge up` keeps would do on its machine)."""
    text = (REPO / "docs" / "python.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)
    assert len(blocks) >= 2, "the quick start has no runnable blocks"
    script = tmp_path / "quickstart.py"
    script.write_text("\n\n".join(blocks))
    env = {**os.environ, "TRAINFORGE_API_URL": client_stack.url, "TRAINFORGE_STATE_DIR": str(client_stack.state_dir),
           "PYTHONPATH": str(REPO), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("TRAINFORGE_API_TOKEN", None)
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "epoch 1: mAP50" in result.stdout and "epoch 2: mAP50" in result.stdout
    assert "completed {'ref': 'shapes-detector:1', 'model': 'shapes-detector', 'version': 1" in result.stdout
