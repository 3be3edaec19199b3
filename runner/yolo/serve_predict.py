"""Synchronous predict: a runner answers `Subjects.predict(pool)` (queue group: one runner of the pool per
request) with the predictions of a model it keeps loaded, without a job, a dispatcher or Postgres on the way.

The answer goes out as soon as the model has run; then the runner records the run the gateway made for the
request with the usual events (run.claimed, run.started, run.artifact per annotated image, run.completed or
run.failed), which the projector stores like any run's. Drawing and storing an annotated image happens
after the answer too: its artifact id is in the answer, its row a moment later.

Models stay loaded in a `ModelCache`, least recently used first out, bounded by count
(`predict_cache_models`) and memory (`predict_cache_mb`). A model is used by one prediction at a time (its
lock); predictions run in worker threads, so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from runner.executors.base import ExecutorError
from runner.publisher import RunPublisher
from runner.yolo.inputs import InputError, InputResolver
from runner.yolo.predict import describe_result
from shared.artifacts import ArtifactStore, artifact_store
from shared.contracts.commands import Job
from shared.contracts.common import FailureCause, new_id
from shared.contracts.yolo_service import PredictReply, PredictRequest, predict_request_decoder
from shared.settings import Settings
from shared.subjects import Subjects

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    model: Any
    """The `ultralytics.YOLO`."""
    size_bytes: int
    lock: threading.Lock = field(default_factory=threading.Lock)


def model_bytes(yolo: Any, source: str) -> int:
    """What a loaded model takes: its parameters and buffers (torch models), else its file's size."""
    module: Any = getattr(yolo, "model", None)
    if hasattr(module, "parameters") and hasattr(module, "buffers"):
        tensors = [*module.parameters(), *module.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)
    try:
        return os.path.getsize(source)
    except OSError:
        return 0


class ModelCache:
    """Loaded models by (reference, device), least recently used first out; at most `max_models` of them,
    together at most `max_bytes` (the one just loaded always stays). Thread-safe."""

    def __init__(self, max_models: int, max_bytes: int) -> None:
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._models: OrderedDict[tuple[str, str], _Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._models)

    @property
    def total_bytes(self) -> int:
        return sum(m.size_bytes for m in self._models.values())

    def keys(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._models)

    def get(self, key: tuple[str, str]) -> _Loaded | None:
        with self._lock:
            loaded = self._models.get(key)
            if loaded is not None:
                self._models.move_to_end(key)
            return loaded

    def put(self, key: tuple[str, str], loaded: _Loaded) -> None:
        with self._lock:
            self.loads += 1
            if self.max_models <= 0:
                return
            self._models[key] = loaded
            self._models.move_to_end(key)
            while len(self._models) > 1 and (len(self._models) > self.max_models
                                             or self.total_bytes > self.max_bytes):
                self._models.popitem(last=False)
                self.evictions += 1


def _load(source: str) -> Any:
    from ultralytics import YOLO

    return YOLO(source)


def _decode(images: list[bytes]) -> list[Any]:
    """Images sent in the request, as the BGR arrays Ultralytics reads files into."""
    import cv2
    import numpy as np

    arrays = []
    for index, data in enumerate(images):
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if array is None:
            raise InputError(f"images[{index}]: not an image this runner can read")
        arrays.append(array)
    return arrays


def _predict(loaded: _Loaded, image: Any, spec: Any, device: str) -> Any:
    with loaded.lock:  # one prediction at a time per model: Ultralytics' predictor keeps per-call state
        source = str(image) if isinstance(image, Path) else image
        (result,) = loaded.model.predict(source=source, conf=spec.conf, iou=spec.iou, imgsz=spec.imgsz,
                                         max_det=spec.max_det, device=device, save=False, verbose=False)
    return result


def _predict_all(loaded: _Loaded, images: list[Any], spec: Any, device: str) -> tuple[list[Any], list[dict[str, Any]]]:
    """Each image (bytes sent in the request are decoded first) predicted and described, in one trip to a
    worker thread: the request's whole CPU work, off the event loop."""
    if images and isinstance(images[0], bytes):
        images = _decode(images)
    results, entries = [], []
    for index, image in enumerate(images):
        result = _predict(loaded, image, spec, device)
        entry = describe_result(result, index=index, source=spec.sources[index])
        if spec.save:
            entry["annotated_artifact_id"] = new_id()
        results.append(result)
        entries.append(entry)
    return results, entries


class PredictService:
    """Answers synchronous predict requests of one pool on one connection."""

    def __init__(self, nc: NATS, js: JetStreamContext, settings: Settings, runner_id: str, pool: str,
                 device: str, store: ArtifactStore | None = None) -> None:
        self._nc = nc
        self._js = js
        self._settings = settings
        self._runner_id = runner_id
        self._pool = pool
        self._device = device
        self._subjects = Subjects(settings.bus_prefix)
        self._store = store or artifact_store(settings, js)
        self.cache = ModelCache(settings.predict_cache_models, settings.predict_cache_mb * 1024 * 1024)
        self._loading: dict[tuple[str, str], asyncio.Lock] = {}
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._prepared = False

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._subjects.predict(self._pool), queue=self._subjects.predict_group,
                                             cb=self._on_request)
        await self._nc.flush()

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        await asyncio.gather(*self._tasks, return_exceptions=True)  # their answers and records finish

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg), name=f"predict {msg.subject}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _device_of(self, requested: str) -> str:
        from runner.executors.yolo import resolve_device

        return resolve_device(requested, self._device)

    async def _model(self, ref: str, device: str, resolver: Callable[[], InputResolver]) -> tuple[_Loaded, bool]:
        """The loaded model of `ref` on `device`, and whether it was loaded already (`resolver` is called only to
        fetch it)."""
        key = (ref, device)
        if (loaded := self.cache.get(key)) is not None:
            return loaded, True
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:  # two first requests for one model load it once
            if (loaded := self.cache.get(key)) is not None:
                return loaded, True
            source = await resolver().model(ref)
            model = await anyio.to_thread.run_sync(_load, source.source)
            loaded = _Loaded(model=model, size_bytes=model_bytes(model, source.source))
            self.cache.put(key, loaded)
            self._loading.pop(key, None)
            return loaded, False

    async def _answer(self, msg: Msg) -> None:
        started = time.monotonic()
        try:
            request = predict_request_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            await self._respond(msg, PredictReply(status="unavailable", error=f"bad predict request: {exc}"))
            return
        spec = request.spec
        folder: Path | None = None

        def workdir() -> Path:  # made only when needed: a loaded model and an inline image need none
            nonlocal folder
            if folder is None:
                folder = Path(tempfile.mkdtemp(prefix=f"predict-{request.run_id}-", dir=self._work_root()))
            return folder

        inputs: InputResolver | None = None

        def resolver() -> InputResolver:  # one per request, made with the folder
            nonlocal inputs
            if inputs is None:
                inputs = InputResolver(self._settings, self._store, workdir())
            return inputs

        outcome: tuple[str, Any] | None = None
        results: list[Any] = []
        try:
            if not self._prepared:
                from runner.yolo.offline import prepare_ultralytics

                await anyio.to_thread.run_sync(prepare_ultralytics, self._settings.state_dir)
                self._prepared = True
            device = self._device_of(spec.device)
            loaded, cached = await self._model(spec.model, device, resolver)
            images: list[Any] = (request.images if request.images  # decoded in the thread that predicts
                                 else [await resolver().image(ref, index) for index, ref in enumerate(spec.sources)])
            results, entries = await anyio.to_thread.run_sync(_predict_all, loaded, images, spec, device)
            body = {"task": loaded.model.task, "images": entries, "count": len(entries),
                    "elapsed_s": round(time.monotonic() - started, 3)}
            await self._respond(msg, PredictReply(status="ok", result=body, cached=cached))
            outcome = ("completed", body)
        except ExecutorError as exc:  # a model or image that cannot be used: the request's fault
            await self._respond(msg, PredictReply(status="failed", error=str(exc)))
            outcome = ("failed", (FailureCause.USER, exc))
        except Exception as exc:  # noqa: BLE001 - the asker gets a 503 with the reason, not a hang
            log.exception("synchronous predict of run %s failed", request.run_id)
            await self._respond(msg, PredictReply(status="unavailable",
                                                  error=f"the runner failed: {type(exc).__name__}: {exc}"))
            outcome = ("failed", (FailureCause.INFRASTRUCTURE, exc))
        try:
            await self._record(request, outcome, results, workdir)
        except Exception:  # noqa: BLE001 - the answer is out; the run stays as the gateway left it
            log.exception("synchronous predict: recording run %s failed", request.run_id)
        finally:
            if folder is not None:
                await anyio.to_thread.run_sync(shutil.rmtree, folder, True)

    def _work_root(self) -> str:
        root = Path(self._settings.work_root) / "predict"
        root.mkdir(parents=True, exist_ok=True)
        return str(root)

    async def _respond(self, msg: Msg, reply: PredictReply) -> None:
        if not msg.reply:
            return
        try:
            await msg.respond(msgspec.json.encode(msgspec.structs.replace(reply, runner_id=self._runner_id)))
        except nats.errors.Error as exc:  # the connection is closing: the asker times out
            log.warning("synchronous predict: cannot answer on %s: %r", msg.subject, exc)

    async def _record(self, request: PredictRequest, outcome: tuple[str, Any] | None, results: list[Any],
                      workdir: Callable[[], Path]) -> None:
        """The run's events, as a `yolo.predict` job would have published them (attempt 1)."""
        job = Job(run_id=request.run_id, project_id=request.project_id, pool=self._pool, spec=request.spec)
        publisher = RunPublisher(self._js, self._subjects, job, attempt=1, runner_id=self._runner_id)
        try:
            async with publisher.pipelined():  # one round trip for all of them; the projector stores them at once
                await publisher.claimed(host=os.uname().nodename, device=self._device)
                await publisher.started()
                if outcome is None:
                    return
                state, detail = outcome
                if state == "failed":
                    cause, exc = detail
                    await publisher.failed(cause=cause, error_type=type(exc).__name__, message=str(exc))
                    return
                for entry, result in zip(detail["images"], results, strict=True):
                    if "annotated_artifact_id" in entry:
                        await self._annotated(publisher, request, entry, result, workdir())
                await publisher.completed(result=detail)
        finally:
            await publisher.close()

    async def _annotated(self, publisher: RunPublisher, request: PredictRequest, entry: dict[str, Any],
                         result: Any, folder: Path) -> None:
        index = entry["index"]
        path = folder / f"{index:05d}_annotated.jpg"
        await anyio.to_thread.run_sync(lambda: result.save(filename=str(path)))
        name = f"predict/{path.name}"
        uri = await self._store.put_file(f"runs/{request.run_id}/attempt-1/{name}", path)
        await publisher.artifact(name, uri, kind="image", size_bytes=path.stat().st_size, media_type="image/jpeg",
                                 meta={"source": request.spec.sources[index]},
                                 artifact_id=entry["annotated_artifact_id"])


async def serve_predict(nc: NATS, js: JetStreamContext, settings: Settings, runner_id: str, pool: str,
                        device: str) -> PredictService | None:
    """Start answering (None when Ultralytics is not installed here); `stop()` to end."""
    from runner.yolo.service import available

    if not available():
        return None
    service = PredictService(nc, js, settings, runner_id, pool, device)
    await service.start()
    return service
