"""Fold rules: how one run event changes a run's row. Pure functions, no I/O.

`fold(row, event)` returns a `Fold`: the column changes for the run (empty when the event changes nothing)
and, for checkpoints and artifacts, the row to insert. Rules:
- An event from an attempt older than the run's current one is stored but changes no status (a runner
  presumed dead may still talk). Its checkpoints and artifacts are still recorded: the files exist.
- One exception, so that the outcome is what really happened: a runner's `run.completed` from any attempt
  completes a run that is still active or `failed` (the work was done: a later attempt's failure, e.g. a
  checkpoint that was gone, does not undo it). Runners fence attempts (`runner.claims`), so two attempts
  never run at once and a superseded attempt publishes no terminal event; this rule covers what fencing
  cannot see (e.g. an attempt that finished while the bus was down and reported after its successor).
- Attempt 0 belongs to the gateway: its run.canceled applies only while the run has attempt 0 (nobody
  claimed it); its run.cancel_requested and run.failed apply to any active run.
- Nothing moves a terminal run back to an active state; invalid transitions change nothing (`Fold.ignored`
  says why, for the log).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.contracts.common import RunStatus
from shared.contracts.events import (
    EventBase,
    RunArtifact,
    RunCanceled,
    RunCancelRequested,
    RunCheckpoint,
    RunClaimed,
    RunCompleted,
    RunFailed,
    RunLog,
    RunMetrics,
    RunPaused,
    RunProgress,
    RunQueued,
    RunRequeued,
    RunStarted,
    RunUnpaused,
)

GATEWAY_ATTEMPT = 0
_PROGRESS_DETAIL_FIELDS = (
    "step", "total", "epoch", "epochs", "batch", "batches", "losses", "eta_s", "message",
)


@dataclass(frozen=True, slots=True)
class RunRow:
    """The columns of a run that events change."""

    status: str = RunStatus.QUEUED
    attempt: int = 0
    runner_id: str | None = None
    progress: float = 0.0
    progress_detail: dict[str, Any] | None = None
    latest_metrics: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    failure_cause: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    cancel_requested: bool = False
    claimed_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @property
    def terminal(self) -> bool:
        return RunStatus(self.status).terminal

    def apply(self, changes: dict[str, Any]) -> RunRow:
        return dataclasses.replace(self, **changes) if changes else self


@dataclass(frozen=True, slots=True)
class Fold:
    changes: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None
    """A `checkpoints` row to insert."""
    artifact: dict[str, Any] | None = None
    """An `artifacts` row to insert."""
    ignored: str | None = None
    """Why the event changed nothing, when that is worth a log line."""


def _ignore(why: str, **inserts: Any) -> Fold:
    return Fold(ignored=why, **inserts)


def fold(row: RunRow, event: EventBase) -> Fold:
    """The changes `event` makes to a run whose columns are `row`."""
    inserts: dict[str, Any] = {}
    if isinstance(event, RunCheckpoint):
        inserts["checkpoint"] = _checkpoint_row(event)
    elif isinstance(event, RunArtifact):
        inserts["artifact"] = _artifact_row(event)

    if event.attempt == GATEWAY_ATTEMPT:
        return _fold_gateway(row, event, inserts)
    if isinstance(event, RunCompleted) and event.attempt != row.attempt and _completes(row):
        return Fold(changes=_completed(event, attempt=event.attempt, runner_id=event.runner_id), **inserts)
    if row.terminal:
        passive = isinstance(event, RunLog | RunCheckpoint | RunArtifact)
        return Fold(ignored=None if passive else f"{event.type} for a {row.status} run", **inserts)
    if event.attempt < row.attempt:
        why = f"{event.type} from attempt {event.attempt}, run is at attempt {row.attempt}"
        return _ignore(why, **inserts)

    changes: dict[str, Any] = {}
    canceling = row.status == RunStatus.CANCELING
    if event.attempt > row.attempt:
        # A new attempt: its claim normally says so first, but any of its events proves it.
        changes.update(attempt=event.attempt, runner_id=event.runner_id or row.runner_id)
        if not canceling:
            changes["status"] = RunStatus.CLAIMED
        if isinstance(event, RunClaimed | RunStarted):
            changes["claimed_at"] = event.ts

    match event:
        case RunClaimed():
            if row.status not in (RunStatus.QUEUED, RunStatus.CLAIMED, RunStatus.CANCELING) and not changes:
                return _ignore(f"run.claimed for a {row.status} run of the same attempt")
            changes.setdefault("runner_id", event.runner_id or row.runner_id)
            changes.setdefault("claimed_at", row.claimed_at or event.ts)
            if not canceling:
                changes["status"] = RunStatus.CLAIMED
        case RunStarted():
            if not canceling:
                changes["status"] = RunStatus.RUNNING
            if row.started_at is None:
                changes["started_at"] = event.ts
            if row.runner_id is None and event.runner_id:
                changes["runner_id"] = event.runner_id
        case RunProgress():
            changes["progress"] = min(max(event.progress, 0.0), 1.0)
            changes["progress_detail"] = _progress_detail(event)
        case RunMetrics():
            changes["latest_metrics"] = {**row.latest_metrics, **event.metrics}
        case RunCompleted():
            changes.update(_completed(event))
        case RunFailed():
            changes.update(_failed(event))
        case RunCanceled():
            changes.update(status=RunStatus.CANCELED, finished_at=event.ts)
        case RunRequeued():
            if not canceling:
                changes["status"] = RunStatus.QUEUED
        case RunCancelRequested():
            changes.update(status=RunStatus.CANCELING, cancel_requested=True)
        case RunPaused():
            if row.status == RunStatus.RUNNING and not changes:
                changes["status"] = RunStatus.PAUSED
        case RunUnpaused():
            if row.status == RunStatus.PAUSED:
                changes["status"] = RunStatus.RUNNING
        case _:
            pass  # run.log, run.queued, checkpoints and artifacts change no run column
    return Fold(changes=changes, **inserts)


def _fold_gateway(row: RunRow, event: EventBase, inserts: dict[str, Any]) -> Fold:
    match event:
        case RunQueued():
            return Fold(**inserts)
        case RunCancelRequested():
            if row.terminal:
                return _ignore(f"run.cancel_requested for a {row.status} run")
            return Fold(changes={"status": RunStatus.CANCELING, "cancel_requested": True})
        case RunCanceled():
            if row.terminal or row.attempt != GATEWAY_ATTEMPT:
                return _ignore(f"gateway run.canceled for a {row.status} run at attempt {row.attempt}")
            return Fold(changes={"status": RunStatus.CANCELED, "finished_at": event.ts})
        case RunFailed():
            if row.terminal:
                return _ignore(f"gateway run.failed for a {row.status} run")
            return Fold(changes=_failed(event))
        case _:
            return _ignore(f"{event.type} is not a gateway event", **inserts)


def _completes(row: RunRow) -> bool:
    """Whether another attempt's run.completed completes this run: it is active, or failed (not canceled)."""
    return not row.terminal or row.status == RunStatus.FAILED


def _completed(event: RunCompleted, **extra: Any) -> dict[str, Any]:
    changes = {"status": RunStatus.COMPLETED, "progress": 1.0, "exit_code": event.exit_code,
               "result": event.result, "finished_at": event.ts, **extra}
    if extra:  # from another attempt than the row's: the failure it replaces is no longer the run's
        changes.update(failure_cause=None, error=None)
    return changes


def _failed(event: RunFailed) -> dict[str, Any]:
    return {
        "status": RunStatus.FAILED,
        "failure_cause": str(event.cause),
        "error": f"{event.error_type}: {event.message}" if event.message else event.error_type,
        "exit_code": event.exit_code,
        "finished_at": event.ts,
    }


def _progress_detail(event: RunProgress) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    for name in _PROGRESS_DETAIL_FIELDS:
        value = getattr(event, name)
        if value is not None and value != {}:
            detail[name] = value
    return detail


def _checkpoint_row(event: RunCheckpoint) -> dict[str, Any]:
    return {
        "id": event.checkpoint_id,
        "run_id": event.run_id,
        "attempt": event.attempt,
        "uri": event.uri,
        "step": event.step,
        "epoch": event.epoch,
        "size_bytes": event.size_bytes,
        "resumable": event.resumable,
        "meta": event.meta,
        "created_at": event.ts,
    }


def _artifact_row(event: RunArtifact) -> dict[str, Any]:
    return {
        "id": event.artifact_id,
        "run_id": event.run_id,
        "project_id": event.project_id,
        "name": event.name,
        "kind": event.kind,
        "uri": event.uri,
        "size_bytes": event.size_bytes,
        "media_type": event.media_type,
        "meta": event.meta,
        "created_at": event.ts,
    }
