"""Synchronous predict: one uploaded image through a library model, answered in the same request.

`POST /api/v1/models/{ref}/predict` stores the image like `POST /uploads` and asks a runner of the pool by
request/reply (`Subjects.predict(pool)`, answered by `runner.yolo.serve_predict` with a model it keeps
loaded): no job, no dispatcher pass and no projection on the way to the answer. The prediction is still a
`yolo.predict` run of the request's `project` (by default `predict`, created on first use): the runner
records its events (claimed, started, the annotated image, completed) right after answering, and the
gateway writes the run's row once the answer is in (not while the runner predicts: on a small machine both
would share its cores); the projector holds the events that come before the row (`Projector.expect`).
With `save` (an annotated image asked for) the answer waits until the run is stored completed, so that its
`annotated_artifact_id` can be downloaded at once; with `save=false` it does not wait for the record at all.
The request reads the model, its version and the project in two plain statements.

With no runner of the pool answering predict requests (none online, or runners of an older version), the
run waits in the queue like any other and the request waits for its terminal event through the event hub;
after `predict_timeout_s` it answers 504 with the run id: the run goes on and can be read later.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import msgspec
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from sqlalchemy import select

from gateway.auth.caller import Caller
from gateway.bus import PublishFailed, job_msg_id, publish_event
from gateway.db.models import Artifact, Model, ModelVersion, Project, Run
from gateway.errors import RETRY_AFTER_S, Conflict, GatewayError, NotFound, Unavailable, Unprocessable
from gateway.eventhub import Subscription
from gateway.requestid import current_request_id
from gateway.schemas import PROJECT_NAME_RE, Pool, ProjectCreate
from gateway.services import audit
from gateway.services import models as library
from gateway.services.artifacts import delete_stored_files, image_info, not_an_image, put_upload
from gateway.services.projects import create_project, find_project, read_project
from gateway.services.runs import get_run, insert_run, queued_event
from gateway.state import GatewayState
from gateway.uploads import UploadedFile
from shared.contracts.common import RunStatus, new_id, utcnow
from shared.contracts.yolo import Fraction, ImageSize, YoloPredictSpec
from shared.contracts.yolo_service import PredictRequest, predict_reply_decoder

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "predict"
TERMINAL_TYPES = frozenset({"run.completed", "run.failed", "run.canceled"})
RECHECK_S = 2.0


class PredictTimeout(GatewayError):
    """The prediction did not finish in time; the run goes on."""

    status_code, code, title = 504, "timeout", "Gateway Timeout"


class PredictOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The text fields of a predict form."""

    conf: Fraction = 0.25
    iou: Fraction = 0.7
    imgsz: ImageSize = 640
    max_det: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 300
    version: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Version of the model (default: its latest)."""
    project: Annotated[str, msgspec.Meta(pattern=PROJECT_NAME_RE)] = DEFAULT_PROJECT
    """Project the run is recorded in (created when it is `predict` and missing)."""
    pool: Pool = "cpu"
    save: bool = True
    """Keep the annotated image as an artifact of the run."""


class PredictResponse(msgspec.Struct, kw_only=True):
    run_id: str
    model: str
    version: int
    task: str | None
    images: list[dict[str, Any]]
    """Per image: width, height, speed_ms, `boxes` [{xyxy, class_id, name, score}] (detect) or `classes`
    (top 5, classify), `annotated_artifact_id` when saved."""
    elapsed_s: float
    """Time the request took, upload to answer."""


INLINE_MAX_BYTES = 512 * 1024
"""Images up to this size travel inside the predict request (base64 in JSON, within NATS' 1 MB payload);
larger ones are stored first and read by the runner from the artifact store."""
_recording: set[asyncio.Task[None]] = set()
"""Runs of cancelled requests being recorded in the background (kept referenced until done)."""


@dataclass(frozen=True, slots=True)
class Prediction:
    response: PredictResponse
    after: Callable[[], Awaitable[None]] | None = None
    """What the caller runs once the answer is sent (`save=false`: writing the run's row), if anything."""


async def predict(gw: GatewayState, ref: str, options: PredictOptions, image: UploadedFile,
                  caller: Caller) -> Prediction:
    """The prediction; its run's row is written before it is returned, or by its `after`."""
    started = time.monotonic()
    after: Callable[[], Awaitable[None]] | None = None
    model, version, project = await _lookups(gw, ref, options, caller)
    if project is None:
        project = await _create_project(gw, caller)
    if project.status != "active":
        raise Conflict(f"project {project.name!r} is archived; unarchive it to start runs")
    inline_ok = image.size <= INLINE_MAX_BYTES
    try:
        info, data = await anyio.to_thread.run_sync(_read_image, image.path, inline_ok)
    except ValueError as exc:
        raise not_an_image(exc) from None
    spec = YoloPredictSpec(model=version.uri, sources=["upload"], conf=options.conf, iou=options.iou,
                           imgsz=options.imgsz, max_det=options.max_det, save=options.save)
    run_id = new_id()
    stored = asyncio.create_task(put_upload(gw, image, caller, info))  # a copy: done before the answer
    if data is None:  # too large to travel in the request: the runner reads it from the store
        spec = msgspec.structs.replace(spec, sources=[(await stored).uri])
    # The run's row is written once the runner has answered, not while it predicts (on a small machine the
    # two would share its cores); the runner's events that come first wait for it in the projector.
    projector = gw.projector
    if projector is not None:
        projector.expect(run_id)
    record = functools.partial(_record_run, gw, project, run_id, spec, stored, options.pool, caller,
                               {"model": f"library:{version.id}"}, current_request_id())
    try:
        try:
            reply = await _ask_runner(gw, PredictRequest(run_id=run_id, project_id=project.id, spec=spec,
                                                         images=[data] if data is not None else []), options.pool)
        except Exception:  # a timeout or an unreadable answer: the run goes on and must be readable
            await record(handed=True)
            raise
        except BaseException:  # cancelled (the client left): the runner may have the request; record it anyway
            task = asyncio.create_task(_record_quietly(functools.partial(record, handed=True)))
            _recording.add(task)  # kept referenced until done
            task.add_done_callback(_recording.discard)
            raise
        if reply is None:  # no runner answers predict requests: the run waits in line like any other
            await record(handed=False)
            await _hand_to_dispatcher(gw, run_id)
            return Prediction(await _answer_from_run(gw, run_id, model.name, version.version, started))
        if options.save and reply.status == "ok":
            # The annotated image must be downloadable once answered: wait until the run is stored completed
            # (its run.artifact events come first), which the runner records right after answering.
            await record(handed=True)
            await wait_for_run(gw, run_id, max(0.0, gw.settings.predict_timeout_s - (time.monotonic() - started)))
        elif reply.status == "ok":  # the answer does not wait for the run's row: the caller writes it once sent
            await asyncio.wait([stored])  # the uploaded file is read (the caller deletes it once answered)
            after = functools.partial(_record_quietly, functools.partial(record, handed=True))
        else:  # a failed prediction answers with an error: its run is written first
            await record(handed=True)
    finally:
        if not stored.done():
            await asyncio.gather(stored, return_exceptions=True)
    if reply.status == "failed":
        raise Unprocessable(f"prediction run {run_id} failed: {reply.error}")
    if reply.status != "ok" or reply.result is None:
        raise Unavailable(f"prediction run {run_id} failed: {reply.error}",
                          headers={"Retry-After": str(RETRY_AFTER_S)})
    images = [dict(entry) for entry in reply.result.get("images") or []]
    for entry in images:
        entry.pop("source", None)  # a server path
    return Prediction(PredictResponse(run_id=run_id, model=model.name, version=version.version,
                                      task=reply.result.get("task"), images=images,
                                      elapsed_s=round(time.monotonic() - started, 3)), after)


async def _record_quietly(record: Callable[[], Awaitable[None]]) -> None:
    try:
        await record()
    except Exception as exc:  # noqa: BLE001 - nobody waits for it; the runner's events are stored unfolded
        log.error("predict: recording a run failed: %r", exc)


def _read_image(path: Path, inline: bool) -> tuple[tuple[str, int, int], bytes | None]:
    """The image's `image_info`, and its bytes when it travels inside the request (`inline`)."""
    return image_info(path), (path.read_bytes() if inline else None)


async def _lookups(gw: GatewayState, ref: str, options: PredictOptions, caller: Caller
                   ) -> tuple[Model, ModelVersion, Project | None]:
    """The model, its version and the project the prediction runs in (None for a `predict` project not made
    yet): two plain statements on one connection, with no transaction around them."""
    async with gw.autocommit() as session:
        model, version = await library.read_model_version(session, ref, caller, options.version)
        try:
            project = await read_project(session, options.project, caller)
        except NotFound:
            if options.project != DEFAULT_PROJECT:
                raise Unprocessable(f"project {options.project!r} not found",
                                    errors=[{"field": "project", "message": "not found"}]) from None
            project = None
    return model, version, project


async def _create_project(gw: GatewayState, caller: Caller) -> Project:
    """The caller's own `predict` project, on first use."""
    try:
        return await create_project(gw, ProjectCreate(name=DEFAULT_PROJECT, description="synchronous predictions"),
                                    caller)
    except Conflict:  # created meanwhile by another request
        return await find_project(gw, DEFAULT_PROJECT, caller)


async def _ask_runner(gw: GatewayState, request: PredictRequest, pool: str) -> Any:
    """The runner's `PredictReply`; None when no runner of the pool answers predict requests."""
    timeout_s = gw.settings.predict_timeout_s
    try:
        msg = await gw.nc.request(gw.subjects.predict(pool), msgspec.json.encode(request), timeout=timeout_s)
    except NoRespondersError:
        return None
    except NatsTimeout:
        raise PredictTimeout(f"run {request.run_id} did not finish within {timeout_s:g}s; it goes on: "
                             f"GET /api/v1/runs/{request.run_id}") from None
    try:
        return predict_reply_decoder.decode(msg.data)
    except msgspec.DecodeError as exc:
        log.warning("predict: a runner answered something unreadable: %s", exc)
        raise Unavailable("prediction is unavailable: the runner's answer was unreadable",
                          headers={"Retry-After": str(RETRY_AFTER_S)}) from None


async def _record_run(gw: GatewayState, project: Project, run_id: str, spec: YoloPredictSpec,
                      stored: asyncio.Task[Artifact], pool: str, caller: Caller, options: dict[str, Any],
                      request_id: str | None, *, handed: bool) -> None:
    """The upload's row and the run's, in one transaction, with the stored upload as the run's source: the
    run handed to a runner already (`handed`: `enqueued_at` set, the dispatcher leaves it alone) or waiting
    for the dispatcher. The runner's events fold into it as for any run (the projector holds those that came
    first: `Projector.expect`). Then its run.queued, built from the row written (no read back)."""
    try:
        await _write_run(gw, project, run_id, spec, stored, pool, caller, options, request_id, handed)
    finally:
        if gw.projector is not None:
            gw.projector.written(run_id)


async def _write_run(gw: GatewayState, project: Project, run_id: str, spec: YoloPredictSpec,
                     stored: asyncio.Task[Artifact], pool: str, caller: Caller, options: dict[str, Any],
                     request_id: str | None, handed: bool) -> None:
    upload = await stored
    spec = msgspec.structs.replace(spec, sources=[upload.uri])
    options = {**options, "images": [upload.id]}
    run = Run(id=run_id, project_id=project.id, kind="yolo.predict", pool=pool, priority=50, owner_id=caller.user_id,
              status=RunStatus.QUEUED.value, spec=msgspec.to_builtins(spec), gateway_seq=1, resume_of=None,
              job_msg_id=job_msg_id(run_id, None), enqueued_at=utcnow() if handed else None, created_at=utcnow(),
              options={**options, **({"request_id": request_id} if request_id else {})})
    try:
        entry = audit.entry(caller, "run.create", "run", run_id, project_id=project.id, kind="yolo.predict",
                            model=options["model"], format=None)
        async with gw.autocommit() as session:  # one statement: the run, its audit entry, the upload's row
            if not await insert_run(session, run, entry, upload=upload):
                raise Conflict(f"project {project.name!r} is archived; unarchive it to start runs")
    except BaseException:
        with anyio.CancelScope(shield=True):  # no row points at the stored image: do not keep it
            await delete_stored_files(gw, [upload.uri])
        raise
    try:
        await publish_event(gw, queued_event(run))
    except PublishFailed:
        log.warning("predict: run.queued of run %s not published; its runner's events record it anyway", run_id)


async def _hand_to_dispatcher(gw: GatewayState, run_id: str) -> None:
    """No runner took the request: the run (written waiting) waits in line, the dispatcher publishes its job."""
    if gw.dispatcher is not None:
        gw.dispatcher.announced(run_id)
        await gw.dispatcher.admit(run_id)


async def _answer_from_run(gw: GatewayState, run_id: str, model: str, version: int, started: float
                           ) -> PredictResponse:
    run = await wait_for_run(gw, run_id, max(0.0, gw.settings.predict_timeout_s - (time.monotonic() - started)))
    if run.status == RunStatus.FAILED:
        error = Unprocessable if run.failure_cause == "user" else Unavailable
        raise error(f"prediction run {run.id} failed: {run.error}")
    if run.status == RunStatus.CANCELED:
        raise Conflict(f"prediction run {run.id} was canceled")
    result = run.result or {}
    images = [dict(entry) for entry in result.get("images") or []]
    annotated = await _artifact_ids(gw, run.id)
    for entry in images:
        if (uri := entry.pop("annotated_uri", None)) is not None and uri in annotated:
            entry["annotated_artifact_id"] = annotated[uri]
        entry.pop("source", None)  # a server path
    return PredictResponse(run_id=run.id, model=model, version=version, task=result.get("task"),
                           images=images, elapsed_s=round(time.monotonic() - started, 3))


async def wait_for_run(gw: GatewayState, run_id: str, timeout_s: float) -> Run:
    """The run once it is finished; PredictTimeout after `timeout_s`."""
    hub = gw.eventhub
    assert hub is not None, "the event hub starts with the gateway"
    deadline = time.monotonic() + timeout_s
    with hub.subscribe(run_id=run_id) as sub:
        while True:
            async with gw.sessionmaker() as session:
                run = await get_run(session, run_id, None)
            if RunStatus(run.status).terminal:
                return run
            if time.monotonic() >= deadline:
                raise PredictTimeout(f"run {run_id} did not finish within {timeout_s:g}s; it goes on: "
                                     f"GET /api/v1/runs/{run_id}")
            await _terminal_event(sub, deadline)


async def _terminal_event(sub: Subscription, deadline: float) -> None:
    """Wait for the run's terminal event, at most RECHECK_S at a time and not past `deadline`."""
    until = min(deadline, time.monotonic() + RECHECK_S)
    while (remaining := until - time.monotonic()) > 0:
        try:
            event = await sub.next(remaining)
        except TimeoutError:
            return
        if event is None:  # the hub dropped us or stopped: fall back to reading the row
            await asyncio.sleep(remaining)
            return
        if event.type in TERMINAL_TYPES:
            return


async def _artifact_ids(gw: GatewayState, run_id: str) -> dict[str, str]:
    async with gw.sessionmaker() as session:
        rows = await session.execute(select(Artifact.uri, Artifact.id).where(Artifact.run_id == run_id))
        return {uri: artifact_id for uri, artifact_id in rows}
