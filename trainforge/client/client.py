"""`Client`: the Trainforge task-manager verbs over the REST/SSE API (train, resume, stop, wait, events,
validate, infer, export, the weights library, datasets, projects, runs, container runs).

Synchronous. Callbacks run in the caller's thread, in event order, while a verb waits; an exception raised by
a callback stops the wait and propagates to the caller, and the run goes on on the server (stop it with
`Client.stop`).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, cast

import httpx
import msgspec

from trainforge.client import config
from trainforge.client.errors import Conflict, NotFound, RunError
from trainforge.client.transport import SessionAuth, Transport
from trainforge.client.types import (
    Artifact,
    AugmentPreview,
    Checkpoint,
    Dataset,
    DatasetDetail,
    DatasetStats,
    DatasetVersion,
    ImagePrediction,
    LogLine,
    MetricsPoint,
    Model,
    ModelDetail,
    ModelVersion,
    Project,
    Run,
    RunCheckpoint,
    RunDetail,
    RunEvent,
    RunLog,
    RunMetrics,
    RunProgress,
    Sample,
    ValMetrics,
)

if TYPE_CHECKING:
    import numpy.typing as npt
    from PIL.Image import Image as PILImage

    ImageInput = str | os.PathLike[str] | bytes | PILImage | npt.NDArray[Any]
else:
    ImageInput = Any

E = TypeVar("E")
RunRef = str | Run
"""A run, or its id."""
ModelRef = str | Model | ModelVersion | Artifact
"""For runs: a built-in name (`yolov8n`, `yolo11n-cls`), `library:<model>[:<version>]`, `artifact:<id>` (an
exported or trained model file of a run), a library `Model` / `ModelVersion`, or an `Artifact`. For the
weights-library verbs (and `infer`): a model's name or id, `library:<model>[:<version>]`, `Model`,
`ModelVersion`; `infer` takes `artifact:<id>` and an `Artifact` too."""
UploadProgress = Callable[[int, int], object]
"""Called with (bytes sent, total bytes) while an upload goes."""

_event_decoder: msgspec.json.Decoder[RunEvent] = msgspec.json.Decoder(RunEvent)
_EVENT_TYPES = frozenset(cls.__struct_config__.tag for cls in typing.get_args(RunEvent))


class Callbacks(TypedDict, total=False):
    """What a waiting verb calls, each with the event (or, `on_end`, the finished run)."""

    on_progress: Callable[[RunProgress], object]
    on_metrics: Callable[[RunMetrics], object]
    """Each `run.metrics` event: per epoch for YOLO training (`epoch`, `metrics`), per logged step for others."""
    on_checkpoint: Callable[[RunCheckpoint], object]
    on_log: Callable[[RunLog], object]
    on_event: Callable[[RunEvent], object]
    """Every event, before the specific callback."""
    on_end: Callable[[RunDetail], object]
    """The run once it is finished (completed, failed or canceled)."""


def run_id(run: RunRef) -> str:
    return run if isinstance(run, str) else run.id


def _model_for_run(model: ModelRef) -> str:
    if isinstance(model, Artifact):
        return f"artifact:{model.id}"
    if isinstance(model, ModelVersion):
        return model.ref
    if isinstance(model, Model):
        return f"library:{model.name}"
    return model


def _library_ref(model: ModelRef) -> tuple[str, int | None]:
    """(model name or id, version) for the weights-library routes."""
    if isinstance(model, ModelVersion):
        return model.model_name, model.version
    if isinstance(model, Model):
        return model.name, None
    if isinstance(model, Artifact):
        raise ValueError(f"artifact {model.id} is not a weights-library model")
    ref = model.removeprefix("library:")
    name, _, version = ref.partition(":")
    return (name, int(version)) if version.isdigit() else (ref, None)


def _safe_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", path.name.split(".")[0])[:100] or "dataset"


def _content_digest(path: Path) -> str:
    """SHA-256 of a file, or of a folder's relative paths and file contents."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" if file != path else b"")
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


class _ProgressFile(io.RawIOBase):
    """A file being uploaded that reports how much of it was read."""

    def __init__(self, raw: IO[bytes], total: int, report: UploadProgress) -> None:
        self._raw, self._total, self._report, self._sent = raw, total, report, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._raw.seek(offset, whence)
        self._sent = position
        return position

    def tell(self) -> int:
        return self._raw.tell()

    def fileno(self) -> int:
        return self._raw.fileno()

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read(size)
        if chunk:
            self._sent += len(chunk)
            self._report(self._sent, self._total)
        return chunk


class Client:
    """A Trainforge gateway, from Python.

    `url`: the gateway (default TRAINFORGE_API_URL, else http://127.0.0.1:8000). `token`: an API token (default
    TRAINFORGE_API_TOKEN, else the token `trainforge login` kept for this URL, else the one `trainforge up`
    keeps on this machine). `timeout`: seconds for one HTTP call (waiting for a run has no limit).
    `retries`: how often a call that is safe to repeat is retried. `project`: the default project of the run
    verbs (created on first use).
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 retries: int = 4, project: str = "default", _auth: httpx.Auth | None = None) -> None:
        self.url = (url or config.default_url()).rstrip("/")
        token = token if token is not None or _auth is not None else config.default_token(self.url)
        self.project = project
        self._session = _auth if isinstance(_auth, SessionAuth) else None
        self.http = Transport(self.url, token=token, timeout=timeout, retries=retries, auth=_auth)
        self._projects_seen: set[str] = set()

    @classmethod
    def login(cls, url: str, username: str, password: str, **options: Any) -> Client:
        """Log in with a username and password; the client refreshes its access token as needed and logs the
        session out when closed."""
        url = url.rstrip("/")
        with Transport(url, timeout=float(options.get("timeout", 30.0))) as anonymous:
            pair = anonymous.request("POST", "/auth/login", json={"username": username, "password": password})
        auth = SessionAuth(pair["access_token"], pair["refresh_token"], f"{url}/api/v1/auth/refresh")
        return cls(url, _auth=auth, **options)

    def close(self) -> None:
        if self._session is not None:
            try:
                self.http.send("POST", "/auth/logout", retry=False)
            except Exception:  # noqa: BLE001,S110 - the session ends with its TTL anyway
                pass
            self._session = None
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def me(self) -> dict[str, Any]:
        """Who the client is logged in as."""
        return self.http.request("GET", "/auth/me")  # type: ignore[no-any-return]

    # -- projects ------------------------------------------------------------------------------------
    def projects(self) -> Iterator[Project]:
        return self.http.pages("/projects", Project)

    def get_project(self, ref: str) -> Project:
        return self.http.call("GET", f"/projects/{ref}", Project)

    def create_project(self, name: str, **fields: Any) -> Project:
        """Fields: description, objective, task_type, owner, dataset_name, training_yaml_name, container_target,
        tags."""
        return self.http.post_once("/projects", Project, {"name": name, **fields})

    def ensure_project(self, name: str) -> Project:
        """The project, created when missing."""
        try:
            project = self.get_project(name)
        except NotFound:
            try:
                project = self.create_project(name)
            except Conflict:  # created meanwhile
                project = self.get_project(name)
        self._projects_seen.add(name)
        return project

    def _project(self, project: str | None) -> str:
        name = project or self.project
        if name not in self._projects_seen:
            self.ensure_project(name)
        return name

    # -- datasets ------------------------------------------------------------------------------------
    def datasets(self, *, format: str | None = None, task: str | None = None) -> Iterator[Dataset]:
        return self.http.pages("/datasets", Dataset, {"format": format, "task": task})

    def get_dataset(self, ref: str) -> DatasetDetail:
        return self.http.call("GET", f"/datasets/{ref}", DatasetDetail)

    def delete_dataset(self, ref: str) -> None:
        self.http.send("DELETE", f"/datasets/{ref}")

    def dataset_stats(self, ref: str, *, version: int | None = None) -> DatasetStats:
        """The dataset's statistics: per split and class, box sizes, duplicates and leaks between splits."""
        params = {"version": version} if version is not None else None
        return self.http.call("GET", f"/datasets/{ref}/stats", DatasetStats, params=params)

    def augment(self, ref: str, *, count: int = 4, seed: int = 0, imgsz: int = 640, draw_boxes: bool = True,
                **settings: float) -> AugmentPreview:
        """What Ultralytics' training augmentation makes of the dataset's training images: `settings` are its
        arguments (`mosaic=1.0, fliplr=0.5, hsv_v=0.4, ...`; one left out is Ultralytics' default). The same
        seed gives the same images (`preview.images[0].data()` is a JPEG)."""
        body = {"count": count, "seed": seed, "imgsz": imgsz, "draw_boxes": draw_boxes, **settings}
        return self.http.call("POST", f"/datasets/{ref}/augment", AugmentPreview, json=body,
                              timeout=httpx.Timeout(self.http.timeout, read=180.0))  # the gateway's bound: 130 s

    def upload_dataset(self, path: str | os.PathLike[str], name: str | None = None, *,
                       ratios: dict[str, float] | None = None, seed: int | None = None,
                       on_upload: UploadProgress | None = None) -> DatasetDetail:
        """Register a local dataset: a folder (zipped here first) or an archive (.zip, .tar, .tar.gz, ...).
        `name` defaults to the folder's or archive's name. Answers the server's inspection."""
        source = Path(path).expanduser()
        if not source.exists():
            raise FileNotFoundError(source)
        name = name or _safe_name(source)
        fields: dict[str, Any] = {"name": name}
        if ratios is not None:
            fields["ratios"] = msgspec.json.encode(ratios).decode()
        if seed is not None:
            fields["seed"] = str(seed)
        with tempfile.TemporaryDirectory(prefix="trainforge-upload-") as tmp:
            archive = source if source.is_file() else Path(
                shutil.make_archive(str(Path(tmp) / name), "zip", source))
            total = archive.stat().st_size
            with archive.open("rb") as raw:
                body: IO[bytes] = raw if on_upload is None else _ProgressFile(raw, total, on_upload)  # type: ignore[assignment]
                response = self.http.send("POST", "/datasets", data=fields, timeout=httpx.Timeout(
                    self.http.timeout, read=None, write=None),
                    files={"file": (archive.name, body, "application/octet-stream")})
        return msgspec.json.decode(response.content, type=DatasetDetail)

    # -- curating a dataset: its working copy, and versions a run names as `name:N` ---------------------
    def samples(self, dataset: str, *, split: str | None = None, class_name: str | None = None,
                no_labels: bool | None = None, has_problems: bool | None = None) -> Iterator[Sample]:
        """The working copy's samples (annotations in pixels), filtered."""
        params = {"split": split, "class": class_name, "tag": None,
                  "no_labels": None if no_labels is None else str(no_labels).lower(),
                  "has_problems": None if has_problems is None else str(has_problems).lower()}
        return self.http.pages(f"/datasets/{dataset}/samples", Sample, {k: v for k, v in params.items() if v is not None})

    def upload_samples(self, dataset: str, images: Sequence[str | os.PathLike[str]], *, split: str = "train",
                       annotations: Sequence[list[dict[str, Any]]] | None = None) -> list[Sample]:
        """Add images to a split of the working copy, with optional annotations (one list per image)."""
        fields: dict[str, Any] = {"split": split}
        if annotations is not None:
            fields["annotations"] = msgspec.json.encode(list(annotations)).decode()
        files = [("file", (Path(p).name, Path(p).read_bytes(), "application/octet-stream")) for p in images]
        response = self.http.send("POST", f"/datasets/{dataset}/samples", data=fields, files=files)
        created: list[Sample] = msgspec.json.decode(response.content, type=_SamplesCreated).items
        return created

    def set_annotations(self, dataset: str, sample: Sample | str,
                        annotations: list[dict[str, Any]]) -> Sample:
        """Replace a sample's annotations (`[{"class": "cat", "box": [x_min, y_min, x_max, y_max]}]`)."""
        sample_id = sample.id if isinstance(sample, Sample) else sample
        return self.http.call("PUT", f"/datasets/{dataset}/samples/{sample_id}/annotations", Sample,
                              json={"annotations": annotations})

    def create_version(self, dataset: str) -> DatasetVersion:
        """Freeze the working copy as the next version; train on it with `dataset=version.ref`."""
        return self.http.call("POST", f"/datasets/{dataset}/versions", DatasetVersion)

    def dataset_versions(self, dataset: str) -> list[DatasetVersion]:
        """The dataset's versions, newest first."""
        return list(self.http.pages(f"/datasets/{dataset}/versions", DatasetVersion))

    def _dataset_ref(self, dataset: str | os.PathLike[str], on_upload: UploadProgress | None,
                     dataset_name: str | None) -> str:
        """A registered dataset's id or name as given; a local folder or archive is uploaded and registered
        first: as `dataset_name`, else as `<folder name>-<content digest>`, which a second call with the same
        content finds registered already (nothing is uploaded twice)."""
        local = Path(dataset).expanduser()
        if not (isinstance(dataset, os.PathLike) or local.exists()):
            return str(dataset)
        if dataset_name is None:
            dataset_name = f"{_safe_name(local)[:90]}-{_content_digest(local)[:12]}"
            try:
                return self.get_dataset(dataset_name).id
            except NotFound:
                pass
        return self.upload_dataset(local, dataset_name, on_upload=on_upload).id

    # -- runs ----------------------------------------------------------------------------------------
    def runs(self, project: str | None = None, *, status: str | Sequence[str] | None = None,
             kind: str | None = None) -> Iterator[Run]:
        """A project's runs, newest first; `status` one state or several."""
        statuses = status if status is None or isinstance(status, str) else ",".join(status)
        return self.http.pages(f"/projects/{project or self.project}/runs", Run,
                               {"status": statuses, "kind": kind})

    def get_run(self, run: RunRef) -> RunDetail:
        return self.http.call("GET", f"/runs/{run_id(run)}", RunDetail)

    def checkpoints(self, run: RunRef) -> list[Checkpoint]:
        """A run's checkpoints, latest first."""
        return list(self.http.pages(f"/runs/{run_id(run)}/checkpoints", Checkpoint))

    def metrics(self, run: RunRef, *, name: str | None = None, attempt: int | None = None) -> Iterator[MetricsPoint]:
        """A run's metric series so far (every `run.metrics` event, oldest first; `name`: only that metric)."""
        return self.http.cursor(f"/runs/{run_id(run)}/metrics", MetricsPoint, {"name": name, "attempt": attempt})

    def logs(self, run: RunRef, *, attempt: int | None = None) -> Iterator[LogLine]:
        """A run's log lines so far, oldest first."""
        return self.http.cursor(f"/runs/{run_id(run)}/logs", LogLine, {"attempt": attempt})

    def artifacts(self, run: RunRef) -> list[Artifact]:
        """A run's artifacts (weights, exported models, images, files), latest first."""
        return list(self.http.pages(f"/runs/{run_id(run)}/artifacts", Artifact))

    def download_artifact(self, artifact: Artifact | str, path: str | os.PathLike[str] | None = None) -> Path:
        if isinstance(artifact, str):
            artifact = self.http.call("GET", f"/artifacts/{artifact}", Artifact)
        return self.http.download(f"/artifacts/{artifact.id}/download",
                                  _destination(path, Path(artifact.name).name))

    def delete_run(self, run: RunRef) -> None:
        self.http.send("DELETE", f"/runs/{run_id(run)}")

    def start_run(self, body: dict[str, Any], project: str | None = None) -> Run:
        """Start a run of any kind (`body` as `POST /projects/{ref}/runs` takes it, with `kind`), once: the
        POST carries an Idempotency-Key, so a retried call never starts a second run."""
        name = self._project(project)
        return self.http.post_once(f"/projects/{name}/runs", Run, body)

    def _start(self, body: dict[str, Any], project: str | None, callbacks: Callbacks | None,
               wait: bool, keep_null: frozenset[str] = frozenset()) -> RunDetail:
        run = self.start_run({k: v for k, v in body.items() if v is not None or k in keep_null}, project)
        return self.wait(run, callbacks) if wait else self.get_run(run)

    def train(self, model: ModelRef | os.PathLike[str] | None = "yolov8n", dataset: str | os.PathLike[str] = "", *,
              epochs: int | None = None, imgsz: int | None = None, batch: int | None = None,
              device: str | None = None, project: str | None = None, name: str | None = None,
              config: str | None = None, architecture: str | None = None, pool: str | None = None,
              priority: int | None = None, extra: dict[str, Any] | None = None,
              callbacks: Callbacks | None = None, wait: bool = True, on_upload: UploadProgress | None = None,
              dataset_name: str | None = None, **params: Any) -> RunDetail:
        """Train a YOLO model; the run once finished (`wait=True`, the default), else as it is once queued.

        `model`: a built-in name (`yolov8n`, `yolo11s-cls`), a local model YAML file (its architecture is sent),
        `library:<model>[:<version>]`, `artifact:<id>`, a `Model`/`ModelVersion`. `dataset`: a registered
        dataset's name or id, or a local folder or archive, uploaded first (`on_upload(sent, total)` reports the
        upload; `dataset_name` names it, default `<folder name>-<content digest>`, found registered on a
        second call with the same content) and registered. `name`: the weights-library
        model that receives the best weights (default: the project's name). `config`: a saved configuration
        of the project filling what is not given. `params`: further fields of a `yolo.train` request (`lr0`,
        `optimizer`, `patience`, `save_period`, `seed`, `register_as`, `requirements`); `extra`: further
        Ultralytics train arguments.
        """
        body: dict[str, Any] = {"kind": "yolo.train", "epochs": epochs, "imgsz": imgsz, "batch": batch,
                                "device": device, "register_as": name, "config": config,
                                "architecture": architecture, "pool": pool, "priority": priority,
                                "extra": extra, **params}
        keep_null: frozenset[str] = frozenset()
        local = Path(model) if isinstance(model, str | os.PathLike) else None
        if local is not None and local.suffix in (".yaml", ".yml") and local.is_file():
            body["model_yaml"] = local.read_text()
            body["model"], keep_null = None, frozenset({"model"})  # an architecture from scratch
        elif isinstance(model, os.PathLike):
            raise FileNotFoundError(f"{model}: not a model YAML file here")
        elif model is not None:
            body["model"] = _model_for_run(model)
        if dataset:
            body["dataset"] = self._dataset_ref(dataset, on_upload, dataset_name)
        return self._start(body, project, callbacks, wait, keep_null)

    def resume(self, run: RunRef, checkpoint: Checkpoint | str | None = None, *, pool: str | None = None,
               callbacks: Callbacks | None = None, wait: bool = True) -> RunDetail:
        """A new run continuing a finished run from a checkpoint (default: its latest resumable one)."""
        body: dict[str, Any] = {}
        if checkpoint is not None:
            body["checkpoint_id"] = checkpoint if isinstance(checkpoint, str) else checkpoint.id
        if pool is not None:
            body["pool"] = pool
        resumed = self.http.post_once(f"/runs/{run_id(run)}/resume", Run, body)
        return self.wait(resumed, callbacks) if wait else self.get_run(resumed)

    def stop(self, run: RunRef, *, wait: bool = True) -> bool:
        """Cancel a run; a training keeps a resumable checkpoint of its last finished epoch. With `wait`
        (default) returns once the run is finished: True if it ended canceled, False if it had finished
        otherwise. Without `wait`: True if the cancel was taken (the run was still active)."""
        try:
            canceled = self.http.post_once(f"/runs/{run_id(run)}/cancel", Run)
        except Conflict:
            return False
        if not wait:
            return not canceled.finished or canceled.status == "canceled"
        return self.wait(canceled).status == "canceled"

    def events(self, run: RunRef, *, last_event_id: str | None = None) -> Iterator[RunEvent]:
        """A run's events, oldest first: every event from the start (or after `last_event_id`), then live ones
        as they happen; reconnects with `Last-Event-ID` when the connection drops; ends after the terminal event
        (run.completed, run.failed or run.canceled)."""
        for message in self.http.follow(f"/runs/{run_id(run)}/events", last_event_id=last_event_id):
            if message.event in _EVENT_TYPES:
                yield _event_decoder.decode(message.data)

    def wait(self, run: RunRef, callbacks: Callbacks | None = None) -> RunDetail:
        """Block until the run is finished, calling `callbacks` for its events (all of them, from the start,
        in order); the finished run. A callback's exception stops the wait and is raised here; the run goes on."""
        callbacks = callbacks or {}
        handlers: dict[type[Any], Callable[[Any], object] | None] = {
            RunProgress: callbacks.get("on_progress"), RunMetrics: callbacks.get("on_metrics"),
            RunCheckpoint: callbacks.get("on_checkpoint"), RunLog: callbacks.get("on_log"),
        }
        on_event = callbacks.get("on_event")
        for event in self.events(run):
            if on_event is not None:
                on_event(event)
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
        final = self.get_run(run)
        on_end = callbacks.get("on_end")
        if on_end is not None:
            on_end(final)
        return final

    def _result(self, run: RunDetail) -> dict[str, Any]:
        if run.status != "completed":
            raise RunError(f"{run.kind} run {run.id} ended {run.status}: {run.error or 'no result'}")
        return run.result or {}

    # -- validate / infer / export -------------------------------------------------------------------
    def validate(self, model: ModelRef, dataset: str | os.PathLike[str], *, split: str | None = None,
                 imgsz: int | None = None, batch: int | None = None, conf: float | None = None,
                 iou: float | None = None, device: str | None = None, project: str | None = None,
                 callbacks: Callbacks | None = None) -> ValMetrics:
        """Validate weights on a dataset (registered, or a local folder uploaded first); its metrics (mAP50,
        mAP50-95, precision, recall, F1, per-class AP; top1/top5 for a classifier). RunError if the run fails."""
        body = {"kind": "yolo.val", "model": _model_for_run(model), "dataset": self._dataset_ref(dataset, None, None),
                "split": split, "imgsz": imgsz, "batch": batch, "conf": conf, "iou": iou, "device": device}
        run = self._start(body, project, callbacks, True)
        metrics = msgspec.convert(self._result(run), ValMetrics)
        metrics.run_id = run.id
        return metrics

    def infer(self, model: ModelRef, images: ImageInput | Iterable[ImageInput], *, conf: float | None = None,
              iou: float | None = None, imgsz: int | None = None, max_det: int | None = None,
              version: int | None = None, save: bool = False, project: str | None = None) -> list[ImagePrediction]:
        """Predictions for each image (paths, bytes, PIL images or numpy arrays, HxWxC uint8 in RGB order; one
        image or several): boxes in pixels with class names and scores, or a classifier's top-5 classes.
        A weights-library model answers synchronously, image by image (`save` keeps the annotated images:
        `annotated_artifact_id`); an exported or trained file (`artifact:<id>`, an `Artifact`) is run as one
        `yolo.predict` over all the images (uploaded first)."""
        if isinstance(model, Artifact) or (isinstance(model, str) and model.startswith("artifact:")):
            return self._infer_run(_model_for_run(model), _images(images), conf=conf, iou=iou, imgsz=imgsz,
                                   max_det=max_det, save=save, project=project)
        name, ref_version = _library_ref(model)
        fields = {"conf": conf, "iou": iou, "imgsz": imgsz, "max_det": max_det, "version": version or ref_version,
                  "save": save, "project": project}
        form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items() if v is not None}
        predictions: list[ImagePrediction] = []
        for index, image in enumerate(_images(images)):
            filename, content, media_type = _encode_image(image, index)
            answer = self.http.send("POST", f"/models/{name}/predict", data=form,
                                    files={"file": (filename, content, media_type)},
                                    timeout=httpx.Timeout(self.http.timeout, read=None))
            body = msgspec.json.decode(answer.content, type=_PredictAnswer)
            for entry in body.images:
                entry.run_id = body.run_id
                predictions.append(entry)
        return predictions

    def _infer_run(self, model: str, images: list[ImageInput], *, conf: float | None, iou: float | None,
                   imgsz: int | None, max_det: int | None, save: bool, project: str | None) -> list[ImagePrediction]:
        uploads = [self.upload_image(image, index) for index, image in enumerate(images)]
        body = {"kind": "yolo.predict", "model": model, "images": [u.id for u in uploads], "conf": conf,
                "iou": iou, "imgsz": imgsz, "max_det": max_det, "save": save}
        run = self._start(body, project, None, True)
        entries = self._result(run).get("images") or []
        predictions = [msgspec.convert(entry, ImagePrediction) for entry in entries]
        for prediction in predictions:
            prediction.run_id = run.id
        return predictions

    def upload_image(self, image: ImageInput, index: int = 0) -> Artifact:
        """Upload an image for `yolo.predict` runs (`images`: its id)."""
        filename, content, media_type = _encode_image(image, index)
        answer = self.http.send("POST", "/uploads", files={"file": (filename, content, media_type)})
        return msgspec.json.decode(answer.content, type=Artifact)

    def export(self, model: ModelRef, format: str = "onnx", *, half: bool | None = None, int8: bool | None = None,
               dynamic: bool | None = None, opset: int | None = None, imgsz: int | None = None,
               batch: int | None = None, simplify: bool | None = None, dataset: str | None = None,
               device: str | None = None, project: str | None = None,
               path: str | os.PathLike[str] | None = None, callbacks: Callbacks | None = None) -> Path:
        """Export weights to another format (onnx, torchscript, openvino, ...) on a runner, and download the
        exported file: to `path` (a file, or a folder to put it in; default the current folder). RunError if
        the export fails."""
        body = {"kind": "yolo.export", "model": _model_for_run(model), "format": format, "half": half,
                "int8": int8, "dynamic": dynamic, "opset": opset, "imgsz": imgsz, "batch": batch,
                "simplify": simplify, "dataset": dataset, "device": device}
        run = self._start(body, project, callbacks, True)
        self._result(run)
        artifact = next((a for a in self.artifacts(run) if a.kind == "model"), None)
        if artifact is None:
            raise RunError(f"export run {run.id} completed without a model file")
        return self.download_artifact(artifact, path)

    # -- the weights library -------------------------------------------------------------------------
    def list_models(self, *, task: str | None = None) -> list[Model]:
        """Every model of the weights library (with its latest version)."""
        return list(self.http.pages("/models", Model, {"task": task}))

    def get_model(self, model: ModelRef) -> ModelDetail:
        """A model with all its versions."""
        return self.http.call("GET", f"/models/{_library_ref(model)[0]}", ModelDetail)

    def delete_model(self, model: ModelRef, version: int | None = None) -> None:
        """Delete a model with all its versions, or one `version` (Conflict while a run uses it)."""
        name, ref_version = _library_ref(model)
        version = version or ref_version
        self.http.send("DELETE", f"/models/{name}" + (f"/versions/{version}" if version else ""))

    def upload_model(self, path: str | os.PathLike[str], name: str, *, description: str = "") -> ModelVersion:
        """Upload Ultralytics weights (.pt) as the next version of model `name` (created when new)."""
        source = Path(path)
        with source.open("rb") as f:
            answer = self.http.send("POST", "/models", data={"name": name, "description": description},
                                    files={"file": (source.name, f, "application/octet-stream")},
                                    timeout=httpx.Timeout(self.http.timeout, read=None, write=None))
        return msgspec.json.decode(answer.content, type=ModelVersion)

    def download_model(self, model: ModelRef, version: int | None = None, *,
                       path: str | os.PathLike[str] | None = None) -> Path:
        """Download a version's weights (default: the latest) to `path` (a file or folder; default here)."""
        name, ref_version = _library_ref(model)
        version = version or ref_version
        if version is None:
            latest = self.get_model(name).latest
            if latest is None:
                raise NotFound(f"model {name!r} has no versions", status=404)
            version = latest.version
        info = self.http.call("GET", f"/models/{name}/versions/{version}", ModelVersion)
        filename = f"{re.sub(r'[^A-Za-z0-9._-]', '_', info.model_name)}-v{version}.{info.format}"
        return self.http.download(f"/models/{name}/versions/{version}/download", _destination(path, filename))

    # -- container runs ------------------------------------------------------------------------------
    def container_run(self, project: str | None, start_command: str, *, target: str | None = None,
                      backend: Literal["local", "docker"] | None = None, env: dict[str, str] | None = None,
                      workdir: str | None = None, timeout_s: float | None = None, pool: str | None = None,
                      dataset_name: str | None = None, training_yaml_name: str | None = None,
                      callbacks: Callbacks | None = None, wait: bool = True) -> RunDetail:
        """Run a command as a training job (LLM fine-tuning): `docker exec` into container `target` (backend
        `docker`, the default when a target is given), or bash on the runner's host (backend `local`, when the
        runner allows it). Metrics parsed from its log and `checkpoint-N` folders reach the same callbacks."""
        body = {"kind": "container", "start_command": start_command, "target": target,
                "backend": backend or ("docker" if target else None), "env": env, "workdir": workdir,
                "timeout_s": timeout_s, "pool": pool, "dataset_name": dataset_name,
                "training_yaml_name": training_yaml_name}
        return self._start(body, project, callbacks, wait)


class _SamplesCreated(msgspec.Struct, kw_only=True):
    items: list[Sample]


class _PredictAnswer(msgspec.Struct, kw_only=True):
    run_id: str
    images: list[ImagePrediction]


def _destination(path: str | os.PathLike[str] | None, filename: str) -> Path:
    if path is None:
        return Path.cwd() / filename
    dest = Path(path).expanduser()
    return dest / filename if dest.is_dir() else dest


def _is_single_image(image: object) -> bool:
    return isinstance(image, str | bytes | os.PathLike) or hasattr(image, "__array_interface__") \
        or hasattr(image, "getpixel")


def _images(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    if _is_single_image(images):
        return [cast("ImageInput", images)]
    return list(cast("Iterable[ImageInput]", images))


def _encode_image(image: ImageInput, index: int) -> tuple[str, bytes, str]:
    """(file name, bytes, media type) of an image to upload."""
    if isinstance(image, bytes):
        return f"image-{index}", image, "application/octet-stream"
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return path.name, path.read_bytes(), "application/octet-stream"
    from PIL import Image

    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return f"image-{index}.png", buffer.getvalue(), "image/png"
