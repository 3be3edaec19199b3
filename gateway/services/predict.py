"""Synchronous predict: one uploaded image through a library model, answered in the same request.

`POST /api/v1/models/{ref}/predict` stores the image like `POST /uploads`, starts a `yolo.predict` run with
it (in the request's `project`, by default the project `predict`, created on first use), waits for the run's
terminal event through the event hub (re-reading the run's row, so nothing is missed), and answers its
predictions. After `predict_timeout_s` it answers 504 with the run id: the run goes on and can be read later.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import msgspec
from sqlalchemy import select

from gateway.auth.caller import Caller
from gateway.db.models import Artifact, Project, Run
from gateway.errors import Conflict, GatewayError, NotFound, Unavailable, Unprocessable
from gateway.eventhub import EventHub, Subscription
from gateway.schemas import PROJECT_NAME_RE, REQUEST_TYPES, Pool, ProjectCreate
from gateway.services import models as library
from gateway.services.artifacts import store_upload
from gateway.services.projects import create_project, find_project
from gateway.services.runs import create_run, get_run
from gateway.state import GatewayState
from gateway.uploads import UploadedFile
from shared.contracts.common import RunStatus
from shared.contracts.yolo import Fraction, ImageSize

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


async def predict(gw: GatewayState, ref: str, options: PredictOptions, image: UploadedFile,
                  caller: Caller) -> PredictResponse:
    started = time.monotonic()
    async with gw.sessionmaker() as session:
        model = await library.resolve_model(session, ref, caller)
        version = (await library.get_version(session, model, options.version) if options.version
                   else await library.latest_version(session, model))
        if version is None:
            raise Conflict(f"model {model.name!r} has no versions")
    project = await _project(gw, options.project, caller)
    upload = await store_upload(gw, image, caller)
    request = REQUEST_TYPES["yolo.predict"](
        model=f"library:{version.id}", images=[upload.id], conf=options.conf, iou=options.iou,
        imgsz=options.imgsz, max_det=options.max_det, save=options.save)
    run = await create_run(gw, project.id, request, caller=caller, pool=options.pool, priority=50)  # type: ignore[arg-type]
    run = await wait_for_run(gw, run.id, gw.settings.predict_timeout_s)
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
    return PredictResponse(run_id=run.id, model=model.name, version=version.version, task=result.get("task"),
                           images=images, elapsed_s=round(time.monotonic() - started, 3))


async def _project(gw: GatewayState, name: str, caller: Caller) -> Project:
    """The project the prediction runs in; the caller's own `predict` project is created on first use."""
    try:
        return await find_project(gw, name, caller)
    except NotFound:
        if name != DEFAULT_PROJECT:
            raise Unprocessable(f"project {name!r} not found",
                                errors=[{"field": "project", "message": "not found"}]) from None
    try:
        return await create_project(gw, ProjectCreate(name=name, description="synchronous predictions"), caller)
    except Conflict:  # created meanwhile by another request
        return await find_project(gw, name, caller)


async def wait_for_run(gw: GatewayState, run_id: str, timeout_s: float) -> Run:
    """The run once it is finished; PredictTimeout after `timeout_s`."""
    hub = gw.extras["eventhub"]
    assert isinstance(hub, EventHub)
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
