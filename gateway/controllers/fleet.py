"""The fleet: runners (list, drain, resume), system resources (also as Server-Sent Events), the models
Ultralytics ships with the devices to train them on, and measured training advice."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Literal

import anyio.to_thread
import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from sqlalchemy import func, select

from gateway.auth.access import admin_only, member_of
from gateway.auth.caller import Caller, Me
from gateway.auth.middleware import QUERY_TOKEN_OPT
from gateway.controllers.common import AccessTokenQuery, Limit, Offset, page_limit
from gateway.db.models import Run
from gateway.errors import Conflict, NotFound, Unavailable, Unprocessable
from gateway.fleet import FleetError, FleetService, HostSample, RunnerState, RunnerView, TargetView, host_sample
from gateway.model_catalog import ModelFamily, catalog, known_models
from gateway.services import audit
from gateway.services.datasets import resolve_dataset
from gateway.state import Gateway, GatewayState
from shared import names
from shared.contracts.common import RunStatus
from shared.contracts.events import DeviceInfo
from shared.contracts.fleet import AdviceReply, AdviceRequest, RunnerControlReply
from shared.hoststats import sample_host

StateQuery = Annotated[RunnerState | None, QueryParameter(name="state", required=False,
                                                          description="Only runners in this state")]

ACTIVE_STATUSES = (RunStatus.CLAIMED, RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.CANCELING)


class RunnerPage(msgspec.Struct, kw_only=True):
    items: list[RunnerView]
    total: int
    limit: int
    offset: int


class Resources(msgspec.Struct, kw_only=True):
    sampled_at: datetime
    hosts: list[HostSample]
    """One per host of a live runner (its newest heartbeat)."""
    gateway: HostSample
    """The gateway's own host (disk: the gateway's state folder)."""
    active_runs: int
    """Runs claimed, running or canceling."""
    max_concurrent_runs: int
    """Slots of the live runners together."""
    live_runners: int


class AvailableDevice(msgspec.Struct, kw_only=True):
    runner_id: str
    pool: str
    host: str
    device: str
    kinds: list[str]
    info: DeviceInfo


class AvailableModels(msgspec.Struct, kw_only=True):
    families: list[ModelFamily]
    devices: list[AvailableDevice]
    """The devices of live runners."""


class TargetPage(msgspec.Struct, kw_only=True):
    items: list[TargetView]
    """By name; a run's `target` must be one of these for a runner to take it."""
    total: int


class AdviceBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="e.g. yolov8n, yolo11s-seg")]
    imgsz: Annotated[int, msgspec.Meta(ge=32, le=4096)] = 640
    device: Annotated[str, msgspec.Meta(pattern=names.whole(r"auto|cpu|cuda:\d{1,3}"))] = "auto"
    pool: Annotated[str, msgspec.Meta(pattern=names.whole(r"[A-Za-z0-9_-]{1,64}"))] | None = None
    dataset: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    """A registered dataset (id or name): its size decides the cache."""
    batch: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None
    """The batch you intend to use: checked against the measurement."""
    memory_limit_mb: Annotated[int, msgspec.Meta(ge=64)] | None = None
    """Plan within this much memory (default: 60 % of what the runner's host has available)."""


def _fleet(gw: GatewayState) -> FleetService:
    assert gw.fleet is not None, "the fleet service starts with the gateway"
    return gw.fleet


def _known_runner(gw: GatewayState, runner_id: str) -> RunnerView:
    view = _fleet(gw).runner(runner_id)
    if view is None:
        raise NotFound(f"no runner {runner_id!r}")
    return view


class RunnersController(Controller):
    path = "/runners"
    tags = ["fleet"]

    @get("/", summary="Runners from their heartbeats: state idle, busy, draining, stopped or lost")
    async def list_runners(self, gw: Gateway, me: Me, pool: str | None = None, runner_state: StateQuery = None,
                           offset: Offset = 0, limit: Limit = 50) -> RunnerPage:
        limit = page_limit(gw, limit)
        views = _fleet(gw).runners(pool=pool, state=runner_state)
        page = await _visible_runs(gw, me, views[offset:offset + limit])
        return RunnerPage(items=page, total=len(views), limit=limit, offset=offset)

    @get("/{runner_id:str}", summary="One runner")
    async def get_runner(self, gw: Gateway, me: Me, runner_id: FromPath[str]) -> RunnerView:
        return (await _visible_runs(gw, me, [_known_runner(gw, runner_id)]))[0]

    @post("/{runner_id:str}/drain", status_code=200, guards=[admin_only],
          summary="Drain a runner: it finishes its runs and takes no new one (admins)")
    async def drain(self, gw: Gateway, me: Me, runner_id: FromPath[str]) -> RunnerControlReply:
        return await _control(gw, me, runner_id, "drain")

    @post("/{runner_id:str}/resume", status_code=200, guards=[admin_only],
          summary="Resume a drained runner: it takes work again (admins)")
    async def resume(self, gw: Gateway, me: Me, runner_id: FromPath[str]) -> RunnerControlReply:
        return await _control(gw, me, runner_id, "resume")


async def _visible_runs(gw: GatewayState, caller: Caller, views: list[RunnerView]) -> list[RunnerView]:
    """The views with the runs the caller may not see left out: `current_run` blanked, `active_runs` and
    `released_runs` filtered."""
    running = {run for v in views
               for run in [*v.active_runs, *v.released_runs, *([v.current_run] if v.current_run else [])]}
    if caller.is_admin or not running:
        return views
    async with gw.sessionmaker() as session:
        visible = set((await session.execute(select(Run.id).where(
            Run.id.in_(running), member_of(caller, Run.project_id)))).scalars())
    return [msgspec.structs.replace(
        v, current_run=v.current_run if v.current_run in visible else None,
        active_runs=[run for run in v.active_runs if run in visible],
        released_runs=[run for run in v.released_runs if run in visible]) for v in views]


async def _control(gw: GatewayState, caller: Caller, runner_id: str,
                   action: Literal["drain", "resume"]) -> RunnerControlReply:
    view = _known_runner(gw, runner_id)
    if view.state in ("lost", "stopped"):
        raise Conflict(f"runner {runner_id!r} is {view.state}")
    try:
        reply = await _fleet(gw).control(runner_id, action)
    except FleetError as exc:
        raise Unavailable(str(exc)) from None
    await audit.record_now(gw, caller, f"runner.{action}", "runner", runner_id, host=view.host, pool=view.pool)
    return reply


class SystemController(Controller):
    path = "/system"
    tags = ["fleet"]

    @get("/resources", summary="CPU, memory, disk and GPUs of every runner host; active and maximum runs")
    async def resources(self, gw: Gateway) -> Resources:
        return await _resources(gw)

    @get("/resources/events", summary="Resource samples as Server-Sent Events (first: the full resources)",
         opt={QUERY_TOKEN_OPT: True})
    async def resource_events(self, gw: Gateway, access_token: AccessTokenQuery = None) -> ServerSentEvent:
        return ServerSentEvent(_samples(gw))


async def _resources(gw: GatewayState) -> Resources:
    fleet = _fleet(gw)
    stats = await anyio.to_thread.run_sync(sample_host, gw.settings.state_dir)
    async with gw.sessionmaker() as session:
        active = (await session.execute(
            select(func.count()).select_from(Run).where(Run.status.in_([s.value for s in ACTIVE_STATUSES]))
        )).scalar_one()
    live = fleet.live()
    now = datetime.now(UTC)
    return Resources(sampled_at=now, hosts=fleet.hosts(), gateway=host_sample(socket.gethostname(), [], now, stats),
                     active_runs=active, max_concurrent_runs=sum(v.slots for v in live), live_runners=len(live))


async def _samples(gw: GatewayState) -> AsyncIterator[ServerSentEventMessage]:
    keepalive = gw.settings.sse_keepalive_s
    with _fleet(gw).subscribe() as sub:  # before the snapshot: samples arriving meanwhile are queued
        yield ServerSentEventMessage(event="resources", data=msgspec.json.encode(await _resources(gw)).decode())
        while True:
            try:
                item = await sub.next(timeout=keepalive)
            except TimeoutError:
                yield ServerSentEventMessage(comment="keep-alive", data=None)
                continue
            if item is None:
                return
            sample_id, sample = item
            yield ServerSentEventMessage(id=sample_id, event="sample", data=msgspec.json.encode(sample).decode())


class CatalogController(Controller):
    tags = ["fleet"]

    @get("/models/available", summary="Model families, sizes and tasks Ultralytics ships; devices of live runners")
    async def available(self, gw: Gateway) -> AvailableModels:
        families = await anyio.to_thread.run_sync(catalog)
        devices = [AvailableDevice(runner_id=v.id, pool=v.pool, host=v.host, device=v.device, kinds=v.kinds,
                                   info=info)
                   for v in _fleet(gw).live() for info in v.devices]
        return AvailableModels(families=list(families), devices=devices)

    @get("/targets", summary="Container targets (docker backend) the live runners offer, with their runners and pools")
    async def targets(self, gw: Gateway) -> TargetPage:
        items = _fleet(gw).targets()
        return TargetPage(items=items, total=len(items))

    @post("/advice", status_code=200,
          summary="Suggested batch, imgsz, workers, amp and cache for a model, measured by a runner of the pool")
    async def advice(self, gw: Gateway, me: Me, data: AdviceBody) -> AdviceReply:
        model = data.model.removesuffix(".yaml").removesuffix(".pt")
        if model not in await anyio.to_thread.run_sync(known_models):
            raise Unprocessable(f"unknown model {data.model!r}; see GET /api/v1/models/available",
                                errors=[{"field": "$.model", "message": "not a model Ultralytics ships"}])
        request = AdviceRequest(model=model, imgsz=data.imgsz, device=data.device, batch=data.batch,
                                memory_limit_mb=data.memory_limit_mb)
        if data.dataset is not None:
            request = await _with_dataset(gw, me, request, data.dataset)
        pool = data.pool or _pool_for(gw, data.device)
        try:
            reply = await _fleet(gw).advice(pool, request)
        except FleetError as exc:
            raise Unavailable(str(exc)) from None
        if reply.error is not None:
            if reply.error_kind == "invalid":
                raise Unprocessable(reply.error)
            raise Unavailable(f"runner {reply.runner_id or '?'} of pool {pool!r}: {reply.error}")
        return reply


def _pool_for(gw: GatewayState, device: str) -> str:
    """The pool to ask: one with a live runner on that kind of device (the default pool preferred)."""
    kind = "cuda" if device.startswith("cuda") else "cpu" if device == "cpu" else None
    pools = [v.pool for v in _fleet(gw).live() if kind is None or v.device.startswith(kind)]
    if not pools:
        raise Unavailable(f"no live runner{'' if kind is None else ' with a ' + kind + ' device'} to measure on "
                          f"(default pool {gw.settings.runner_pool!r})")
    return gw.settings.runner_pool if gw.settings.runner_pool in pools else pools[0]


async def _with_dataset(gw: GatewayState, caller: Caller, request: AdviceRequest, ref: str) -> AdviceRequest:
    async with gw.sessionmaker() as session:
        try:
            dataset = await resolve_dataset(session, ref, caller)
        except (NotFound, Conflict) as exc:
            raise Unprocessable(exc.detail, errors=[{"field": "$.dataset", "message": exc.detail}]) from None
    images = (dataset.stats or {}).get("images")
    return msgspec.structs.replace(request, dataset_path=dataset.root_path,
                                   dataset_images=images if isinstance(images, int) else None)
