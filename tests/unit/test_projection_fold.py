"""Fold rules: what each run event does to a run's row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.projection import RunRow, fold
from shared.contracts import (
    EventBase,
    FailureCause,
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

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ev(cls: type[EventBase], attempt: int = 1, seq: int = 1, **kw: Any) -> Any:
    kw.setdefault("ts", T0 + timedelta(seconds=seq))
    return cls(run_id="r1", project_id="p1", attempt=attempt, runner_id="" if attempt == 0 else "w1", seq=seq,
               **kw)


def run_through(row: RunRow, *events: EventBase) -> RunRow:
    for event in events:
        row = row.apply(fold(row, event).changes)
    return row


def test_claim_start_progress_complete_walks_the_happy_path() -> None:
    row = run_through(
        RunRow(),
        ev(RunQueued, attempt=0, kind="container", pool="cpu"),
        ev(RunClaimed, seq=1),
        ev(RunStarted, seq=2),
        ev(RunProgress, seq=3, progress=0.5, epoch=1, epochs=2, batch=3, batches=4, losses={"box": 1.5},
           eta_s=9.0, message="training"),
        ev(RunMetrics, seq=4, metrics={"map50": 0.1}),
        ev(RunMetrics, seq=5, metrics={"map": 0.05}),
        ev(RunCompleted, seq=6, exit_code=0, result={"best": "x.pt"}),
    )
    assert row.status == "completed" and row.attempt == 1 and row.runner_id == "w1"
    assert row.progress == 1.0 and row.exit_code == 0 and row.result == {"best": "x.pt"}
    assert row.progress_detail == {"epoch": 1, "epochs": 2, "batch": 3, "batches": 4, "losses": {"box": 1.5},
                                   "eta_s": 9.0, "message": "training"}
    assert row.latest_metrics == {"map50": 0.1, "map": 0.05}
    assert row.claimed_at == T0 + timedelta(seconds=1) and row.started_at == T0 + timedelta(seconds=2)
    assert row.finished_at == T0 + timedelta(seconds=6)


def test_failed_records_cause_error_and_exit_code() -> None:
    row = run_through(RunRow(), ev(RunClaimed), ev(RunFailed, seq=2, cause=FailureCause.USER,
                                                   error_type="ValueError", message="bad lr", exit_code=2))
    assert (row.status, row.failure_cause, row.error) == ("failed", "user", "ValueError: bad lr")
    assert row.exit_code == 2
    assert row.finished_at is not None


def test_cancel_requested_makes_active_run_canceling_and_claim_and_start_keep_it() -> None:
    row = run_through(RunRow(), ev(RunCancelRequested, attempt=0, seq=2), ev(RunClaimed),
                      ev(RunStarted, seq=2))
    assert row.status == "canceling" and row.cancel_requested and row.attempt == 1 and row.started_at
    row = run_through(row, ev(RunCanceled, seq=3))
    assert row.status == "canceled"


def test_gateway_cancel_applies_only_before_any_claim() -> None:
    unclaimed = run_through(RunRow(), ev(RunCancelRequested, attempt=0, seq=2),
                            ev(RunCanceled, attempt=0, seq=3))
    assert unclaimed.status == "canceled"
    claimed = run_through(RunRow(), ev(RunClaimed), ev(RunCanceled, attempt=0, seq=3))
    assert claimed.status == "claimed"


def test_events_of_an_older_attempt_change_nothing_but_checkpoints_are_kept() -> None:
    row = run_through(RunRow(), ev(RunClaimed, attempt=1), ev(RunStarted, attempt=1, seq=2),
                      ev(RunClaimed, attempt=2), ev(RunStarted, attempt=2, seq=2))
    assert row.attempt == 2 and row.status == "running"
    stale = fold(row, ev(RunFailed, attempt=1, seq=3, cause=FailureCause.USER, error_type="E", message="m"))
    assert stale.changes == {} and stale.ignored
    assert fold(row, ev(RunProgress, attempt=1, seq=4, progress=0.9)).changes == {}
    checkpoint = fold(row, ev(RunCheckpoint, attempt=1, seq=5, checkpoint_id="c1", uri="/x/last.pt", epoch=3))
    assert checkpoint.changes == {} and checkpoint.checkpoint and checkpoint.checkpoint["id"] == "c1"


def test_an_event_of_a_newer_attempt_moves_the_run_to_that_attempt() -> None:
    row = run_through(RunRow(), ev(RunClaimed, attempt=1), ev(RunStarted, attempt=1, seq=2))
    row = run_through(row, ev(RunStarted, attempt=2, seq=2))
    assert row.attempt == 2 and row.status == "running"


def test_nothing_moves_a_terminal_run_back_to_active() -> None:
    done = run_through(RunRow(), ev(RunClaimed), ev(RunCompleted, seq=2))
    for event in (ev(RunStarted, seq=3), ev(RunClaimed, attempt=2), ev(RunRequeued, seq=4, reason="x"),
                  ev(RunCancelRequested, attempt=0, seq=5), ev(RunProgress, seq=6, progress=0.1),
                  ev(RunFailed, attempt=0, seq=7, cause=FailureCause.INFRASTRUCTURE, error_type="E",
                     message="")):
        result = fold(done, event)
        assert result.changes == {} and result.ignored, event
    assert fold(done, ev(RunLog, seq=8, lines=[])).ignored is None


def test_requeued_returns_the_run_to_queued_and_the_next_attempt_claims_it() -> None:
    row = run_through(RunRow(), ev(RunClaimed), ev(RunStarted, seq=2),
                      ev(RunRequeued, seq=3, reason="shutdown"))
    assert row.status == "queued"
    row = run_through(row, ev(RunClaimed, attempt=2, seq=1))
    assert row.status == "claimed" and row.attempt == 2


def test_gateway_failure_fails_any_active_run() -> None:
    row = run_through(RunRow(), ev(RunClaimed, attempt=5), ev(
        RunFailed, attempt=0, seq=2, cause=FailureCause.INFRASTRUCTURE, error_type="MaxDeliveriesExceeded",
        message="no runner finished it in 5 attempts"))
    assert row.status == "failed" and row.failure_cause == "infrastructure"
    assert row.error and row.error.startswith("MaxDeliveriesExceeded: ")


def test_artifact_event_yields_an_artifact_row() -> None:
    result = fold(RunRow(), ev(RunArtifact, artifact_id="a1", name="best.pt", uri="file:///a/best.pt",
                               size_bytes=10))
    assert result.artifact == {"id": "a1", "run_id": "r1", "project_id": "p1", "name": "best.pt",
                               "kind": "file", "uri": "file:///a/best.pt", "size_bytes": 10, "media_type": None,
                               "meta": {},
                               "created_at": T0 + timedelta(seconds=1)}


# -- two attempts that overlapped anyway: the outcome is what really happened ---------------------------


def test_a_completed_attempt_is_not_overridden_by_a_later_attempts_failure() -> None:
    running_2 = run_through(RunRow(), ev(RunClaimed, 1, 1), ev(RunStarted, 1, 2), ev(RunClaimed, 2, 1),
                            ev(RunStarted, 2, 2))
    failed_2 = run_through(running_2, ev(RunFailed, 2, 3, cause=FailureCause.USER, error_type="InputError",
                                         message="checkpoint gone"))
    assert failed_2.status == "failed"
    done = run_through(failed_2, ev(RunCompleted, 1, 50, exit_code=0, result={"epochs_completed": 3}))
    assert (done.status, done.attempt, done.result, done.error, done.failure_cause) == (
        "completed", 1, {"epochs_completed": 3}, None, None)
    # ...and in the other order, the later attempt's failure changes nothing
    assert fold(done, ev(RunFailed, 2, 3, cause=FailureCause.USER, error_type="X", message="")).changes == {}


def test_an_older_attempt_that_completes_while_a_newer_one_runs_completes_the_run() -> None:
    running_2 = run_through(RunRow(), ev(RunClaimed, 1, 1), ev(RunClaimed, 2, 1), ev(RunStarted, 2, 2))
    done = run_through(running_2, ev(RunCompleted, 1, 9, exit_code=0))
    assert (done.status, done.attempt) == ("completed", 1)
    assert fold(done, ev(RunProgress, 2, 3, progress=0.5)).changes == {}


def test_a_superseded_attempts_other_events_never_change_the_run() -> None:
    running_2 = run_through(RunRow(), ev(RunClaimed, 1, 1), ev(RunStarted, 1, 2), ev(RunClaimed, 2, 1),
                            ev(RunStarted, 2, 2), ev(RunProgress, 2, 3, progress=0.3))
    for late in (ev(RunProgress, 1, 7, progress=0.9), ev(RunRequeued, 1, 8, reason="lost the bus"),
                 ev(RunCanceled, 1, 9), ev(RunFailed, 1, 10, cause=FailureCause.INFRASTRUCTURE, error_type="X",
                                           message="m"), ev(RunClaimed, 1, 11), ev(RunMetrics, 1, 12, metrics={"a": 1.0})):
        assert fold(running_2, late).changes == {}, late.type


def test_a_completion_never_overrides_a_cancel() -> None:
    canceled = run_through(RunRow(), ev(RunClaimed, 1, 1), ev(RunClaimed, 2, 1), ev(RunCanceled, 2, 2))
    assert fold(canceled, ev(RunCompleted, 1, 5, exit_code=0)).changes == {}


def test_paused_only_from_running_and_unpaused_back_to_running() -> None:
    running = run_through(RunRow(), ev(RunQueued, attempt=0, kind="container", pool="cpu"), ev(RunClaimed, seq=1),
                          ev(RunStarted, seq=2))
    paused = run_through(running, ev(RunPaused, seq=3))
    assert paused.status == "paused"
    assert run_through(paused, ev(RunProgress, seq=4, progress=0.5)).status == "paused"
    assert run_through(paused, ev(RunUnpaused, seq=4, paused_s=1.0)).status == "running"
    assert run_through(paused, ev(RunCanceled, seq=4, reason="pause_timeout")).status == "canceled"
    claimed = run_through(RunRow(), ev(RunClaimed, seq=1))
    assert run_through(claimed, ev(RunPaused, seq=2)).status == "claimed"  # not running: no pause
    assert run_through(running, ev(RunUnpaused, seq=3)).status == "running"
