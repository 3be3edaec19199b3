"""Runs: create, read, cancel, resume, delete; their logs, metrics, checkpoints, artifacts.

The gateway writes a run's row when it creates it and when a client cancels, resumes or deletes it; every
other status change comes from runner events, folded in by the projector. A new run waits in the gateway's
line until the dispatcher (`gateway.dispatcher`) publishes its job (`enqueue`): at once when the limits have
room and a runner that fits is free.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import msgspec
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.access import check_project
from gateway.auth.caller import Caller
from gateway.bus import GATEWAY_RUNNER_ID, PublishFailed, job_msg_id, publish_event, publish_job, signal_cancel
from gateway.db.models import Artifact, AuditEntry, Checkpoint, EventRecord, Run
from gateway.db.session import plain_fetch
from gateway.db.statements import params, typed_placeholders
from gateway.errors import BadRequest, Conflict, NotFound, Unavailable, Unprocessable
from gateway.requestid import current_request_id
from gateway.schemas import (
    ArtifactView,
    CheckpointView,
    LogLineView,
    LogPage,
    MetricsPage,
    MetricsView,
    QueueInfo,
    RunDetail,
    RunRequest,
    RunView,
    from_row,
)
from gateway.services import audit, yolo_specs
from gateway.services.container_runs import prepare_container_spec
from gateway.services.projects import check_text, get_project, read_project
from gateway.state import GatewayState
from shared.contracts.commands import ContainerSpec, Job, Limits, Requirements, ResumeFrom, RunSpec, RunSpecBase
from shared.contracts.common import TOKEN_RE, RunStatus, new_id, utcnow
from shared.contracts.events import RunCanceled, RunCancelRequested, RunQueued

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TERMINAL = [s.value for s in RunStatus if s.terminal]
DETAIL_CHECKPOINTS = 20
DETAIL_ARTIFACTS = 50
DETAIL_LOG_LINES = 50


class NotEnqueued(Unavailable):
    """The run is saved, but NATS did not take it; the gateway publishes it again when NATS is back."""

    def __init__(self, run: Run) -> None:
        super().__init__(
            f"run {run.id} is saved as queued, but NATS did not take its job; "
            "the gateway publishes it again when NATS is reachable"
        )
        self.run = run


def parse_statuses(raw: str | None) -> list[str]:
    """`?status=a,b` → ["a", "b"]; BadRequest for a status that does not exist."""
    if not raw:
        return []
    values = [v.strip() for v in raw.split(",") if v.strip()]
    allowed = {s.value for s in RunStatus}
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise BadRequest(f"unknown status {unknown[0]!r}; one of {', '.join(s.value for s in RunStatus)}")
    return values


# -- reading ---------------------------------------------------------------------------------------------


async def get_run(session: AsyncSession, run_id: str, caller: Caller | None, needed: str = "viewer", *,
                  for_update: bool = False) -> Run:
    """The run with id `run_id`, if the caller's role in its project is at least `needed` (`caller` None: the
    gateway itself); NotFound if none or not visible to the caller, Forbidden if the role is too low."""
    if not _ID_RE.fullmatch(run_id):
        raise NotFound(f"run {run_id!r} not found")
    query = select(Run).where(Run.id == run_id)
    if for_update:
        query = query.with_for_update()
    run = (await session.execute(query)).scalar_one_or_none()
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    if caller is not None:
        await check_project(session, caller, run.project_id, needed, f"run {run_id!r}")
    return run


async def find_run(gw: GatewayState, run_id: str, caller: Caller | None, needed: str = "viewer") -> Run:
    async with gw.sessionmaker() as session:
        return await get_run(session, run_id, caller, needed)


async def list_runs(
    gw: GatewayState, project_ref: str, caller: Caller, *, statuses: list[str], kind: str | None, limit: int,
    offset: int,
) -> tuple[list[Run], int]:
    """Runs of a project, newest first, and how many match in all."""
    async with gw.sessionmaker() as session:
        project = await get_project(session, project_ref, caller)
        where = [Run.project_id == project.id]
        if statuses:
            where.append(Run.status.in_(statuses))
        if kind:
            where.append(Run.kind == kind)
        total = (await session.execute(select(func.count()).select_from(Run).where(*where))).scalar_one()
        rows = await session.execute(
            select(Run).where(*where).order_by(Run.created_at.desc(), Run.id.desc()).limit(limit).offset(offset)
        )
        return list(rows.scalars()), total


async def run_detail(gw: GatewayState, run_id: str, caller: Caller) -> RunDetail:
    """A run with its latest checkpoints and artifacts and its last log lines."""
    async with gw.sessionmaker() as session:
        run = await get_run(session, run_id, caller)
        checkpoints = await session.execute(
            select(Checkpoint).where(Checkpoint.run_id == run.id)
            .order_by(Checkpoint.created_at.desc(), Checkpoint.id).limit(DETAIL_CHECKPOINTS)
        )
        artifacts = await session.execute(
            select(Artifact).where(Artifact.run_id == run.id)
            .order_by(Artifact.created_at.desc(), Artifact.id).limit(DETAIL_ARTIFACTS)
        )
        log_events = await session.execute(
            select(EventRecord).where(EventRecord.run_id == run.id, EventRecord.type == "run.log")
            .order_by(EventRecord.position.desc()).limit(DETAIL_LOG_LINES)
        )
        lines = [line for event in reversed(list(log_events.scalars())) for line in _log_lines(event)]
        waiting = run.status == RunStatus.QUEUED and run.enqueued_at is None
        return from_row(
            RunDetail,
            run,
            queue=QueueInfo(position=run.queue_position, reason=run.wait_reason) if waiting else None,
            checkpoints=[from_row(CheckpointView, c) for c in checkpoints.scalars()],
            artifacts=[from_row(ArtifactView, a) for a in artifacts.scalars()],
            recent_logs=lines[-DETAIL_LOG_LINES:],
        )


def _log_lines(event: EventRecord) -> list[LogLineView]:
    return [
        LogLineView(position=event.position, attempt=event.attempt, ts=event.ts,
                    stream=str(line.get("stream", "")), text=str(line.get("text", "")))
        for line in event.body.get("lines") or []
        if isinstance(line, dict)
    ]


async def run_logs(gw: GatewayState, run_id: str, caller: Caller, *, after: int, limit: int, attempt: int | None) -> LogPage:
    """Log lines after position `after`, oldest first. Events are never split: a page ends after the event
    that reaches `limit` lines (a page holds at least one event, however long)."""
    async with gw.sessionmaker() as session:
        run = await get_run(session, run_id, caller)
        where = [EventRecord.run_id == run.id, EventRecord.type == "run.log", EventRecord.position > after]
        if attempt is not None:
            where.append(EventRecord.attempt == attempt)
        events = await session.execute(
            select(EventRecord).where(*where).order_by(EventRecord.position).limit(limit)
        )
        items: list[LogLineView] = []
        next_after = after
        for event in events.scalars():
            lines = _log_lines(event)
            if items and len(items) + len(lines) > limit:
                break
            items.extend(lines)
            next_after = event.position
        return LogPage(items=items, next_after=next_after)


async def run_metrics(
    gw: GatewayState, run_id: str, caller: Caller, *, after: int, limit: int, attempt: int | None,
    name: str | None,
) -> MetricsPage:
    """The run.metrics events after position `after`, oldest first; with `name`, only that metric."""
    async with gw.sessionmaker() as session:
        run = await get_run(session, run_id, caller)
        where = [EventRecord.run_id == run.id, EventRecord.type == "run.metrics", EventRecord.position > after]
        if attempt is not None:
            where.append(EventRecord.attempt == attempt)
        if name is not None:
            where.append(EventRecord.body["metrics"].has_key(name))
        events = list(
            (await session.execute(select(EventRecord).where(*where).order_by(EventRecord.position).limit(limit)))
            .scalars()
        )
    items = []
    for event in events:
        metrics: dict[str, Any] = event.body.get("metrics") or {}
        if name is not None:
            metrics = {name: metrics[name]}
        items.append(MetricsView(position=event.position, attempt=event.attempt, ts=event.ts,
                                 step=event.body.get("step"), epoch=event.body.get("epoch"), metrics=metrics))
    return MetricsPage(items=items, next_after=events[-1].position if events else after)


async def list_checkpoints(gw: GatewayState, run_id: str, caller: Caller, *, limit: int, offset: int) -> tuple[list[Checkpoint], int]:
    """A run's checkpoints, latest first."""
    async with gw.sessionmaker() as session:
        run = await get_run(session, run_id, caller)
        where = Checkpoint.run_id == run.id
        total = (await session.execute(select(func.count()).select_from(Checkpoint).where(where))).scalar_one()
        rows = await session.execute(
            select(Checkpoint).where(where).order_by(Checkpoint.created_at.desc(), Checkpoint.id)
            .limit(limit).offset(offset)
        )
        return list(rows.scalars()), total


async def list_artifacts(gw: GatewayState, run_id: str, caller: Caller, *, limit: int, offset: int) -> tuple[list[Artifact], int]:
    """A run's artifacts, latest first."""
    async with gw.sessionmaker() as session:
        run = await get_run(session, run_id, caller)
        where = Artifact.run_id == run.id
        total = (await session.execute(select(func.count()).select_from(Artifact).where(where))).scalar_one()
        rows = await session.execute(
            select(Artifact).where(where).order_by(Artifact.created_at.desc(), Artifact.id).limit(limit).offset(offset)
        )
        return list(rows.scalars()), total


# -- creating and enqueuing ------------------------------------------------------------------------------


async def create_run(
    gw: GatewayState,
    project_ref: str,
    spec: RunSpecBase | RunRequest,
    *,
    caller: Caller,
    pool: str | None,
    priority: int | None,
    requirements: Requirements | None = None,
    idempotency: tuple[str, str] | None = None,
    resume: ResumeFrom | None = None,
    options: dict[str, Any] | None = None,
    settle: bool = False,
) -> Run:
    """Save a queued run (counting it in its project's `runs_started`) and hand it to the dispatcher, which
    publishes run.queued and the run's job, at once if it may start now (else it waits in line). The run is
    returned once its row is committed (durably accepted), before the dispatcher is done with it: `settle`
    waits for that too (tests that look at the line right after).

    A `RunRequest` (the `yolo.*` kinds: references instead of paths) is first resolved into its spec by
    `yolo_specs.resolve_spec`, which also gives pool, priority (when None here) and the run's `options`.
    Without a dispatcher (none started), run.queued is published here: NotEnqueued (503) if NATS does not
    take it; the run stays queued without `enqueued_at`. With one, a run NATS does not take now waits in
    line ("NATS did not take its job; retrying") and is published when NATS is back. `idempotency` (scope, key) of the
    request, if it had an Idempotency-Key: the job's `Nats-Msg-Id` is made from it. The caller (at least a
    member of the project) owns the run: limits and fair share count runs per owner.
    """
    if pool is not None:
        _check_pool(pool)
    check_text(spec)
    if isinstance(spec, ContainerSpec) and spec.backend == "docker":  # asks a runner: not in the transaction
        async with gw.sessionmaker() as session:
            project = await get_project(session, project_ref, caller, "member")
            spec = await prepare_container_spec(gw, project, spec, pool or "cpu", caller)
    run_id = new_id()
    # autocommit: the reads need no transaction around them, and the one write is one statement (_CREATE_RUN)
    async with gw.autocommit() as session:
        project = await read_project(session, project_ref, caller, "member")
        if isinstance(spec, ContainerSpec) and spec.backend != "docker":  # no I/O: the caller's role only
            spec = await prepare_container_spec(gw, project, spec, pool or "cpu", caller)
        if isinstance(spec, RunRequest):
            resolved = await yolo_specs.resolve_spec(session, gw.settings, project, spec, caller)
            spec, options = resolved.spec, {**resolved.options, **(options or {})}
            pool = pool or resolved.pool
            priority = resolved.priority if priority is None else priority
            _check_pool(pool)
            spec = await _with_dataset_archive(gw, spec)
        now = utcnow()
        run = Run(  # with the defaults insert_run fills in, every column is set: no re-read after the commit
            id=run_id,
            created_at=now,
            updated_at=now,
            project_id=project.id,
            kind=spec.__struct_config__.tag,
            pool=pool or "cpu",
            priority=50 if priority is None else priority,
            owner_id=caller.user_id,
            status=RunStatus.QUEUED.value,
            spec=msgspec.to_builtins(spec),
            gateway_seq=1,
            resume_of=resume.source_run_id if resume else None,
            resume_checkpoint_id=resume.checkpoint_id if resume else None,
            job_msg_id=job_msg_id(run_id, idempotency),
            options=_with_request_id(options or {}),
            requirements=msgspec.to_builtins(requirements) if requirements is not None else None,
        )
        if resume is not None:
            entry = audit.entry(caller, "run.resume", "run", run_id, project_id=project.id, kind=run.kind,
                                source_run_id=resume.source_run_id, checkpoint_id=resume.checkpoint_id)
        else:
            action = "model.export" if run.kind == "yolo.export" else "run.create"
            entry = audit.entry(caller, action, "run", run_id, project_id=project.id, kind=run.kind,
                                model=run.options.get("model"), format=run.spec.get("format"))
        if not await insert_run(session, run, entry):
            raise Conflict(f"project {project.name!r} is archived; unarchive it to start runs")
    dispatcher = gw.dispatcher
    if dispatcher is None:
        try:
            await publish_event(gw, queued_event(run))
        except PublishFailed as exc:
            raise NotEnqueued(run) from exc
        return run
    accepted = dispatcher.accept(run)
    if settle:
        await asyncio.shield(accepted)
        async with gw.sessionmaker() as session:
            run = await get_run(session, run_id, None)
    return run


_CREATE_COLUMNS = ("id", "created_at", "updated_at", "project_id", "kind", "pool", "priority", "owner_id", "status",
                   "spec", "progress", "latest_metrics", "attempt", "cancel_requested", "gateway_seq", "resume_of",
                   "resume_checkpoint_id", "job_msg_id", "options", "requirements", "enqueued_at")
_CREATE_RUN = f"""
    WITH counted AS (
        UPDATE projects SET runs_started = runs_started + 1 WHERE id = $1 AND status = 'active' RETURNING id
    ), created AS (
        INSERT INTO runs ({", ".join(_CREATE_COLUMNS)})
        SELECT {typed_placeholders(Run.__table__, _CREATE_COLUMNS, 2)} FROM counted RETURNING id
    )
    INSERT INTO audit_log ({", ".join(audit.ENTRY_COLUMNS)})
    SELECT {typed_placeholders(AuditEntry.__table__, audit.ENTRY_COLUMNS, 2 + len(_CREATE_COLUMNS))} FROM created
    RETURNING id
"""
"""A new run in one statement: its project counts it (only an active project), its row, its audit entry.
No row back: the project is archived (or gone)."""
_UPLOAD_COLUMNS = tuple(column.name for column in Artifact.__table__.columns)
_UPLOAD_FIRST = 2 + len(_CREATE_COLUMNS) + len(audit.ENTRY_COLUMNS)
_CREATE_RUN_WITH_UPLOAD = _CREATE_RUN.replace("    INSERT INTO audit_log", f"""    , uploaded AS (
        INSERT INTO artifacts ({", ".join(_UPLOAD_COLUMNS)})
        SELECT {typed_placeholders(Artifact.__table__, _UPLOAD_COLUMNS, _UPLOAD_FIRST)} FROM created
    )
    INSERT INTO audit_log""", 1)
"""The same with the row of an uploaded image the run reads (written only with the run)."""


async def insert_run(session: AsyncSession, run: Run, entry: dict[str, Any], *, upload: Artifact | None = None) -> bool:
    """Count `run` in its project (an active one only), insert its row and its audit entry (`audit.entry`),
    and the row of the `upload` it reads if any: one statement, on the session's connection. The columns the
    ORM or the server would default are filled in `run` first.
    False: the project is archived (or gone), and nothing was written."""
    run.created_at = run.created_at or utcnow()
    run.updated_at = run.updated_at or run.created_at  # what the server defaults give them
    for name in _CREATE_COLUMNS:
        default = Run.__table__.columns[name].default
        if getattr(run, name) is None and default is not None:
            setattr(run, name, default.arg(None) if default.is_callable else default.arg)  # type: ignore[attr-defined]
    uploaded = () if upload is None else params(
        Artifact.__table__, _UPLOAD_COLUMNS, {name: getattr(upload, name) for name in _UPLOAD_COLUMNS})
    created = await plain_fetch(
        session, _CREATE_RUN if upload is None else _CREATE_RUN_WITH_UPLOAD, run.project_id,
        *params(Run.__table__, _CREATE_COLUMNS, {name: getattr(run, name) for name in _CREATE_COLUMNS}),
        *params(AuditEntry.__table__, audit.ENTRY_COLUMNS, entry), *uploaded,
    )
    return bool(created)


def _check_pool(pool: str) -> None:
    if not TOKEN_RE.fullmatch(pool):
        raise Unprocessable(f"invalid pool {pool!r}", errors=[
            {"field": "pool", "message": f"Expected `str` matching regex {TOKEN_RE.pattern!r}"}])


def queued_event(run: Run) -> RunQueued:
    """The run's run.queued (attempt 0, seq 1)."""
    return RunQueued(run_id=run.id, project_id=run.project_id, attempt=0, runner_id=GATEWAY_RUNNER_ID, seq=1,
                     ts=run.created_at, kind=run.kind, pool=run.pool, resume_of=run.resume_of)


def _with_request_id(options: dict[str, Any]) -> dict[str, Any]:
    """The run's options with the id of the request creating it (`request_id`), which its job carries."""
    options = {k: v for k, v in options.items() if k != "request_id"}  # a resume's source had its own
    request_id = current_request_id()
    return {**options, "request_id": request_id} if request_id else options


async def enqueue(gw: GatewayState, run: Run, *, resume: ResumeFrom | None, limits: Limits | None = None,
                  announce: bool = True, announce_first: bool = False, note: bool = True) -> None:
    """Publish a run's job (and, with `announce`, its run.queued again), then note `enqueued_at` and clear
    the run's place in the gateway's line (not with `note=False`: the dispatcher's pass notes all its runs in
    one statement). With `announce_first` (a new run's first publication), run.queued goes out just before
    the job, both in flight at once (one round trip); else after the job.

    Safe to repeat: the job's and the event's `Nats-Msg-Id` stay the same, so JetStream drops a duplicate.
    """
    spec = msgspec.convert(run.spec, RunSpec)
    requirements = msgspec.convert(run.requirements, Requirements) if run.requirements is not None else None
    job = Job(run_id=run.id, project_id=run.project_id, pool=run.pool, spec=spec, resume=resume,
              owner_id=run.owner_id, priority=run.priority, created_at=run.created_at,
              requirements=requirements, limits=limits, request_id=(run.options or {}).get("request_id"))
    if announce and announce_first:
        await asyncio.gather(publish_event(gw, queued_event(run)), publish_job(gw, job, run.job_msg_id or run.id))
    else:
        await publish_job(gw, job, run.job_msg_id or run.id)
        if announce:
            await publish_event(gw, queued_event(run))
    if not note:
        return
    async with gw.autocommit() as session:
        enqueued = await plain_fetch(session, _ENQUEUED, run.id)
    run.enqueued_at = enqueued[0]["enqueued_at"] if enqueued else run.enqueued_at


_ENQUEUED = """
    UPDATE runs SET enqueued_at = now(), queue_position = NULL, wait_reason = NULL
    WHERE id = $1 AND enqueued_at IS NULL RETURNING enqueued_at
"""


async def resume_of(session: AsyncSession, run: Run) -> ResumeFrom | None:
    """Where a resumed run starts (its source's checkpoint); LookupError when that checkpoint is gone."""
    if not run.resume_of or not run.resume_checkpoint_id:
        return None
    checkpoint = await session.get(Checkpoint, run.resume_checkpoint_id)
    if checkpoint is None:
        raise LookupError(f"checkpoint {run.resume_checkpoint_id} of run {run.resume_of} is gone")
    return ResumeFrom(source_run_id=run.resume_of, checkpoint_id=checkpoint.id, uri=checkpoint.uri,
                      step=checkpoint.step, epoch=checkpoint.epoch)


# -- cancel, resume, delete ------------------------------------------------------------------------------


async def cancel_run(gw: GatewayState, run_id: str, caller: Caller) -> Run:
    """Ask for a run to stop. A run no runner has claimed yet is canceled at once; otherwise it is
    `canceling` until its runner reports. Conflict for a finished run; repeating a cancel is harmless."""
    run = await find_run(gw, run_id, caller, "member")
    _check_cancelable(run)
    if run.status == RunStatus.CANCELING:
        return run
    await signal_cancel(gw, run.id)
    async with gw.sessionmaker() as session, session.begin():
        run = await get_run(session, run_id, None, for_update=True)
        _check_cancelable(run)
        if run.status == RunStatus.CANCELING:
            return run
        run.gateway_seq += 1
        run.cancel_requested = True
        run.updated_at = utcnow()
        common = dict(run_id=run.id, project_id=run.project_id, attempt=0, runner_id=GATEWAY_RUNNER_ID,
                      seq=run.gateway_seq)
        if run.status == RunStatus.QUEUED and run.attempt == 0:
            run.status = RunStatus.CANCELED.value
            run.finished_at = run.updated_at
            event: RunCanceled | RunCancelRequested = RunCanceled(**common, reason="requested")
        else:
            run.status = RunStatus.CANCELING.value
            event = RunCancelRequested(**common)
        audit.record(session, caller, "run.cancel", "run", run.id, project_id=run.project_id, status=run.status)
        await session.flush()
        # Published before the commit: if NATS refuses it, nothing changed and the seq is not used up.
        await publish_event(gw, event)
    return run


def _check_cancelable(run: Run) -> None:
    if RunStatus(run.status).terminal:
        raise Conflict(f"run {run.id} is already {run.status}")


async def resume_run(
    gw: GatewayState, run_id: str, caller: Caller, *, checkpoint_id: str | None, pool: str | None,
    idempotency: tuple[str, str] | None = None,
) -> Run:
    """A new run of the same spec that starts from a checkpoint of a finished run (default: its latest
    resumable one)."""
    async with gw.sessionmaker() as session:
        source = await get_run(session, run_id, caller, "member")
        if not RunStatus(source.status).terminal:
            raise Conflict(f"run {source.id} is {source.status}; only a completed, failed or canceled run can be resumed")
        if checkpoint_id is not None:
            checkpoint = await session.get(Checkpoint, checkpoint_id) if _ID_RE.fullmatch(checkpoint_id) else None
            if checkpoint is None or checkpoint.run_id != source.id:
                raise NotFound(f"run {source.id} has no checkpoint {checkpoint_id!r}")
            if not checkpoint.resumable:
                raise Conflict(f"checkpoint {checkpoint.id} of run {source.id} is not resumable")
        else:
            checkpoint = (
                await session.execute(
                    select(Checkpoint).where(Checkpoint.run_id == source.id, Checkpoint.resumable.is_(True))
                    .order_by(Checkpoint.created_at.desc(), Checkpoint.step.desc().nulls_last()).limit(1)
                )
            ).scalar_one_or_none()
            if checkpoint is None:
                raise Conflict(f"run {source.id} has no checkpoint to resume from")
        try:
            spec = msgspec.convert(source.spec, RunSpec)
        except msgspec.ValidationError as exc:
            raise Conflict(f"the spec of run {source.id} is not valid any more ({exc})") from exc
    resume = ResumeFrom(source_run_id=source.id, checkpoint_id=checkpoint.id, uri=checkpoint.uri,
                        step=checkpoint.step, epoch=checkpoint.epoch)
    requirements = msgspec.convert(source.requirements, Requirements) if source.requirements else None
    return await create_run(gw, source.project_id, spec, pool=pool or source.pool, priority=source.priority,
                            requirements=requirements, caller=caller, idempotency=idempotency,
                            resume=resume, options=source.options)


async def delete_run(gw: GatewayState, run_id: str, caller: Caller) -> None:
    """Delete a finished run with its checkpoints, artifacts and events. Conflict while it is active."""
    async with gw.sessionmaker() as session, session.begin():
        run = await get_run(session, run_id, caller, "member", for_update=True)
        if not RunStatus(run.status).terminal:
            raise Conflict(f"run {run.id} is {run.status}; cancel it before deleting it")
        await session.execute(delete(EventRecord).where(EventRecord.run_id == run.id))
        await session.execute(delete(Run).where(Run.id == run.id))
        audit.record(session, caller, "run.delete", "run", run.id, project_id=run.project_id, kind=run.kind)


def run_view(run: Run) -> RunView:
    return from_row(RunView, run)


async def _with_dataset_archive(gw: GatewayState, spec: RunSpecBase) -> RunSpecBase:
    """With `settings.dataset_archives` (runners on other hosts), the spec with the content hash of its
    dataset's archive, packed and stored if not yet (`gateway.dataset_archives`)."""
    dataset_id, data = getattr(spec, "dataset_id", None), getattr(spec, "data", None)
    if not gw.settings.dataset_archives or not dataset_id or not data or not hasattr(spec, "dataset_sha256"):
        return spec
    from gateway.dataset_archives import ensure_archive

    info = await ensure_archive(gw.settings, gw.js, dataset_id, data)
    return msgspec.structs.replace(spec, dataset_sha256=info.sha256)  # type: ignore[type-var]
