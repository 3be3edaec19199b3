"""Runs: `/api/v1/projects/{ref}/runs` to create and list, `/api/v1/runs/{run_id}` for one run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.params import Parameter
from litestar.response import Response

from gateway.auth.caller import Me
from gateway.controllers.common import (
    After,
    Attempt,
    IdempotencyKey,
    Limit,
    Offset,
    Reply,
    idempotency_scope,
    page_limit,
    respond_once,
)
from gateway.db.models import Run
from gateway.errors import BadRequest
from gateway.schemas import (
    ArtifactPage,
    ArtifactView,
    CheckpointPage,
    CheckpointView,
    LogPage,
    MetricsPage,
    ResumeRequest,
    RunCreate,
    RunDetail,
    RunPage,
    RunView,
    from_row,
    to_run_spec,
)
from gateway.services import pausing, runs
from gateway.state import Gateway
from shared import names

Kind = Annotated[str | None, Parameter(pattern=names.whole(r"[A-Za-z0-9._-]{1,64}"), description="Only runs of this kind")]
Statuses = Annotated[str | None, Parameter(description="Only runs in these states (comma-separated)")]
MetricName = Annotated[str | None, Parameter(pattern=names.whole(r"[^\x00-\x1f\x7f]{1,256}"), description="Only this metric")]
LOG_PAGE_MAX = 5000


def _log_limit(limit: int) -> int:
    if limit > LOG_PAGE_MAX:
        raise BadRequest(f"limit must be at most {LOG_PAGE_MAX}")
    return limit


def _reply(status_code: int, create: Callable[[], Awaitable[Run]]) -> Callable[[], Awaitable[Reply]]:
    """Reply for a run-creating call; a run saved but not enqueued is still the answer to a repeat."""

    async def work() -> Reply:
        try:
            run = await create()
        except runs.NotEnqueued as exc:
            return Reply(status_code, runs.run_view(exc.run), error=exc)
        return Reply(status_code, runs.run_view(run))

    return work


class RunsController(Controller):
    tags = ["runs"]

    @post("/projects/{ref:str}/runs", summary="Start a run (body tagged by `kind`)", status_code=201)
    async def create(
        self, gw: Gateway, me: Me, request: Request[Any, Any, Any], ref: str, data: RunCreate,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[RunView]:
        spec, pool, priority, requirements = to_run_spec(data)
        idempotency = (idempotency_scope(request), idempotency_key) if idempotency_key else None
        work = _reply(201, lambda: runs.create_run(gw, ref, spec, caller=me, pool=pool, priority=priority,
                                                   requirements=requirements, idempotency=idempotency))
        return await respond_once(gw, request, idempotency_key, data, work)

    @get("/projects/{ref:str}/runs", summary="List a project's runs, newest first")
    async def index(
        self, gw: Gateway, me: Me, ref: str, status: Statuses = None, kind: Kind = None,
        limit: Limit = 50, offset: Offset = 0,
    ) -> RunPage:
        rows, total = await runs.list_runs(gw, ref, me, statuses=runs.parse_statuses(status), kind=kind,
                                           limit=page_limit(gw, limit), offset=offset)
        return RunPage(items=[runs.run_view(r) for r in rows], total=total, limit=limit, offset=offset)

    @get("/runs/{run_id:str}", summary="A run: status, progress, metrics, checkpoints, artifacts, recent logs")
    async def read(self, gw: Gateway, me: Me, run_id: str) -> RunDetail:
        return await runs.run_detail(gw, run_id, me)

    @post("/runs/{run_id:str}/cancel", summary="Cancel a run (202; repeating it is harmless)", status_code=202)
    async def cancel(
        self, gw: Gateway, me: Me, request: Request[Any, Any, Any], run_id: str,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[RunView]:
        async def work() -> Reply:
            return Reply(202, runs.run_view(await runs.cancel_run(gw, run_id, me)))

        return await respond_once(gw, request, idempotency_key, None, work)

    @post("/runs/{run_id:str}/pause", summary="Pause a running run in place", status_code=200,
          description="Only a `running` run (409 otherwise). Its runner stops its processes (SIGSTOP of the "
                      "process group, locally or in its container; a YOLO training at the next batch boundary) "
                      "and publishes `run.paused`; it keeps its runner, GPU, leases and job. Paused longer than "
                      "`TRAINFORGE_PAUSE_MAX_S`, it is canceled with its checkpoints kept. 503: no runner answered.")
    async def pause(self, gw: Gateway, me: Me, run_id: str) -> RunView:
        return runs.run_view(await pausing.pause_run(gw, run_id, me, "pause"))

    @post("/runs/{run_id:str}/unpause", summary="Continue a paused run from where it stopped", status_code=200,
          description="Only a `paused` run (409 otherwise): SIGCONT of its processes, or its training goes on "
                      "from the batch it stopped at; `run.unpaused` follows.")
    async def unpause(self, gw: Gateway, me: Me, run_id: str) -> RunView:
        return runs.run_view(await pausing.pause_run(gw, run_id, me, "unpause"))

    @post("/runs/{run_id:str}/resume", summary="Start a new run from a checkpoint of a finished run", status_code=201)
    async def resume(
        self, gw: Gateway, me: Me, request: Request[Any, Any, Any], run_id: str,
        data: ResumeRequest | None = None, idempotency_key: IdempotencyKey = None,
    ) -> Response[RunView]:
        body = data or ResumeRequest()
        idempotency = (idempotency_scope(request), idempotency_key) if idempotency_key else None
        work = _reply(201, lambda: runs.resume_run(gw, run_id, me, checkpoint_id=body.checkpoint_id, pool=body.pool,
                                                   idempotency=idempotency))
        return await respond_once(gw, request, idempotency_key, body, work)

    @delete("/runs/{run_id:str}", summary="Delete a finished run (409 while active)", status_code=204)
    async def remove(self, gw: Gateway, me: Me, run_id: str) -> None:
        await runs.delete_run(gw, run_id, me)

    @get("/runs/{run_id:str}/logs", summary="Log lines, oldest first, after a position")
    async def logs(
        self, gw: Gateway, me: Me, run_id: str, after: After = 0, limit: Limit = 500, attempt: Attempt = None
    ) -> LogPage:
        return await runs.run_logs(gw, run_id, me, after=after, limit=_log_limit(limit), attempt=attempt)

    @get("/runs/{run_id:str}/metrics", summary="Metric series (run.metrics events), oldest first")
    async def metrics(
        self, gw: Gateway, me: Me, run_id: str, after: After = 0, limit: Limit = 500, attempt: Attempt = None,
        name: MetricName = None,
    ) -> MetricsPage:
        return await runs.run_metrics(gw, run_id, me, after=after, limit=_log_limit(limit), attempt=attempt, name=name)

    @get("/runs/{run_id:str}/checkpoints", summary="A run's checkpoints, latest first")
    async def checkpoints(self, gw: Gateway, me: Me, run_id: str, limit: Limit = 50,
                          offset: Offset = 0) -> CheckpointPage:
        rows, total = await runs.list_checkpoints(gw, run_id, me, limit=page_limit(gw, limit), offset=offset)
        return CheckpointPage(items=[from_row(CheckpointView, c) for c in rows], total=total, limit=limit,
                              offset=offset)

    @get("/runs/{run_id:str}/artifacts", summary="A run's artifacts, latest first")
    async def artifacts(self, gw: Gateway, me: Me, run_id: str, limit: Limit = 50,
                        offset: Offset = 0) -> ArtifactPage:
        rows, total = await runs.list_artifacts(gw, run_id, me, limit=page_limit(gw, limit), offset=offset)
        return ArtifactPage(items=[from_row(ArtifactView, a) for a in rows], total=total, limit=limit, offset=offset)


