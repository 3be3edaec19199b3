"""Hyperparameter sweeps: trial runs of one yolo.train request over a search space.

A sweep's trials are planned when it is created (grid: the combinations in order; random: drawn with its
seed) and started through `runs.create_run`, so each is an ordinary run of the sweep's creator: fair share,
limits and the queue apply as for any other. `advance` keeps at most `parallelism` trials unfinished: it
reads the trials' runs, records each completed trial's metric, names the best, starts the next pending
trials and completes the sweep when none is left. The gateway's `SweepTracker` calls it whenever the
projector commits run events; creating and canceling call it too.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from typing import Any

import msgspec
from sqlalchemy import func, select, text

from gateway.auth.caller import Caller
from gateway.db.models import Run, Sweep, SweepTrial, User
from gateway.errors import Conflict, GatewayError, NotFound, Unprocessable
from gateway.schemas import RunCreate, SweepCreate, SweepTrialView, SweepView, to_run_spec
from gateway.services import audit, runs
from gateway.services.projects import get_project
from gateway.state import GatewayState
from shared.contracts.common import TERMINAL_STATUSES, RunStatus, new_id, utcnow

log = logging.getLogger(__name__)

SWEEPS_CHANNEL = "trainforge_sweeps"
"""Notified with a sweep's id in the transaction that creates it: the sweep trackers (`gateway.sweeps_tracker`)
look at run events only while some sweep runs."""

SPEC_FIELDS = frozenset({"lr0", "batch", "imgsz", "optimizer", "epochs"})
"""Searched settings that are fields of the yolo.train request; the others go into its `extra`."""
TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)
MAX_COMBINATIONS = 100_000


def plan(data: SweepCreate) -> list[dict[str, Any]]:
    """The trials' parameters, in order."""
    keys = sorted(data.space)
    sizes = [len(data.space[k]) for k in keys]
    total = math.prod(sizes)
    if data.method == "grid":
        count = total if data.trials is None else min(data.trials, total)
        return [dict(zip(keys, values, strict=True)) for values in itertools.islice(
            itertools.product(*(data.space[k] for k in keys)), count)]
    if data.trials is None:
        raise Unprocessable("a random sweep needs `trials`", errors=[{"field": "$.trials", "message": "required"}])
    rng = random.Random(data.seed)
    if total <= MAX_COMBINATIONS and data.trials <= total:  # distinct combinations while there are enough
        picks = rng.sample(range(total), data.trials)
        combos = list(itertools.product(*(data.space[k] for k in keys)))
        return [dict(zip(keys, combos[i], strict=True)) for i in picks]
    return [{k: rng.choice(data.space[k]) for k in keys} for _ in range(data.trials)]


def trial_body(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    body = {**base, "kind": "yolo.train"}
    extra = dict(body.get("extra") or {})
    for key, value in params.items():
        if key in SPEC_FIELDS:
            body[key] = value
        else:
            extra[key] = value
    if extra:
        body["extra"] = extra
    return body


def _request(body: dict[str, Any], index: int) -> Any:
    try:
        request = msgspec.convert(body, RunCreate)  # type: ignore[arg-type]
    except msgspec.ValidationError as exc:
        raise Unprocessable(f"trial {index}: {exc}", errors=[{"field": "$.spec", "message": str(exc)}]) from exc
    if type(request).__struct_config__.tag != "yolo.train":
        raise Unprocessable("a sweep's spec is a yolo.train request",
                            errors=[{"field": "$.spec.kind", "message": "only yolo.train"}])
    return request


async def create_sweep(gw: GatewayState, ref: str, data: SweepCreate, caller: Caller) -> SweepView:
    async with gw.sessionmaker() as session:
        project = await get_project(session, ref, caller, "member")
    base = {k: v for k, v in data.spec.items() if k != "kind"}
    if data.spec.get("kind", "yolo.train") != "yolo.train":
        raise Unprocessable("a sweep's spec is a yolo.train request",
                            errors=[{"field": "$.spec.kind", "message": "only yolo.train"}])
    trials = plan(data)
    for index, params in enumerate(trials):
        _request(trial_body(base, params), index)
    sweep = Sweep(id=new_id(), project_id=project.id, owner_id=caller.user_id, status="running", base=base,
                  space={k: list(v) for k, v in data.space.items()}, method=data.method, metric=data.metric,
                  direction=data.direction, parallelism=data.parallelism)
    async with gw.sessionmaker() as session, session.begin():
        session.add(sweep)
        await session.flush()
        session.add_all(SweepTrial(sweep_id=sweep.id, index=i, params=p, status="pending")
                        for i, p in enumerate(trials))
        audit.record(session, caller, "sweep.create", "sweep", sweep.id, project_id=project.id, trials=len(trials))
        await session.execute(text("SELECT pg_notify(:channel, :id)"), {"channel": SWEEPS_CHANNEL, "id": sweep.id})
    await advance(gw, sweep.id)
    return await sweep_detail(gw, ref, sweep.id, caller)


async def _owner(session: Any, sweep: Sweep) -> Caller | None:
    user = (await session.execute(select(User).where(User.id == sweep.owner_id))).scalar_one_or_none()
    if user is None or user.disabled:
        return None
    return Caller(user_id=user.id, username=user.username, is_admin=user.is_admin)


async def advance(gw: GatewayState, sweep_id: str) -> None:
    """Bring one sweep up to date and start what may start (under a lock on the sweep's row)."""
    async with gw.sessionmaker() as session, session.begin():
        sweep = (await session.execute(select(Sweep).where(Sweep.id == sweep_id).with_for_update())).scalar_one_or_none()
        if sweep is None:
            return
        trials = list((await session.execute(select(SweepTrial).where(SweepTrial.sweep_id == sweep_id)
                                             .order_by(SweepTrial.index))).scalars())
        run_ids = [t.run_id for t in trials if t.run_id]
        rows = {r.id: r for r in (await session.execute(select(Run).where(Run.id.in_(run_ids)))).scalars()} \
            if run_ids else {}
        for trial in trials:
            if trial.run_id is None or trial.status in TERMINAL:
                continue
            run = rows.get(trial.run_id)
            if run is None:  # deleted before the tracker saw it end
                trial.status, trial.error = "canceled", "the trial's run was deleted"
                continue
            trial.status = run.status
            if run.status == RunStatus.COMPLETED.value:
                value = (run.latest_metrics or {}).get(sweep.metric)
                if isinstance(value, int | float) and math.isfinite(value):
                    trial.value = float(value)
                else:
                    trial.error = f"metric {sweep.metric!r} is not among the trial's metrics"
        scored = [t for t in trials if t.value is not None]
        if scored:
            pick = max if sweep.direction == "maximize" else min
            sweep.best_trial = pick(scored, key=lambda t: (t.value, -t.index) if sweep.direction == "maximize"
                                    else (t.value, t.index)).index
        if sweep.status != "running":
            return
        unfinished = sum(1 for t in trials if t.run_id and t.status not in TERMINAL)
        pending = [t for t in trials if t.status == "pending" and t.run_id is None]
        if pending and unfinished < sweep.parallelism:
            owner = await _owner(session, sweep)
            for trial in pending[: sweep.parallelism - unfinished]:
                if owner is None:
                    trial.status, trial.error = "failed", "the sweep's owner is gone or disabled"
                    continue
                await _start(gw, sweep, trial, owner)
        if all(t.status in TERMINAL for t in trials):
            sweep.status = "completed"
            sweep.finished_at = utcnow()


async def _start(gw: GatewayState, sweep: Sweep, trial: SweepTrial, owner: Caller) -> None:
    spec, pool, priority, requirements = to_run_spec(_request(trial_body(sweep.base, trial.params), trial.index))
    try:
        run = await runs.create_run(gw, sweep.project_id, spec, caller=owner, pool=pool, priority=priority,
                                    requirements=requirements,
                                    options={"sweep_id": sweep.id, "sweep_trial": trial.index})
    except runs.NotEnqueued as exc:  # saved; the dispatcher publishes it when NATS is back
        run = exc.run
    except GatewayError as exc:  # the dataset is gone, the project archived, a limit refused it
        trial.status, trial.error = "failed", str(exc)
        log.warning("sweep %s: trial %d not started: %s", sweep.id, trial.index, exc)
        return
    trial.run_id, trial.status = run.id, run.status


async def _sweep(gw: GatewayState, ref: str, sweep_id: str, caller: Caller, needed: str) -> Sweep:
    async with gw.sessionmaker() as session:
        project = await get_project(session, ref, caller, needed)
        sweep = (await session.execute(select(Sweep).where(Sweep.id == sweep_id, Sweep.project_id == project.id))
                 ).scalar_one_or_none()
    if sweep is None:
        raise NotFound(f"sweep {sweep_id!r} not found")
    return sweep


def _view(sweep: Sweep, trials: list[SweepTrial] | None) -> SweepView:
    best = next((t for t in trials or [] if t.index == sweep.best_trial), None)
    return SweepView(
        id=sweep.id, project_id=sweep.project_id, status=sweep.status, method=sweep.method,  # type: ignore[arg-type]
        metric=sweep.metric, direction=sweep.direction, parallelism=sweep.parallelism, space=sweep.space,
        base=sweep.base, best_trial=sweep.best_trial, best_run_id=best.run_id if best else None,
        best_value=best.value if best else None, created_at=sweep.created_at, finished_at=sweep.finished_at,
        trials=[SweepTrialView(index=t.index, params=t.params, run_id=t.run_id, status=t.status, value=t.value,
                               error=t.error) for t in trials or []])


async def sweep_detail(gw: GatewayState, ref: str, sweep_id: str, caller: Caller) -> SweepView:
    sweep = await _sweep(gw, ref, sweep_id, caller, "viewer")
    async with gw.sessionmaker() as session:
        trials = list((await session.execute(select(SweepTrial).where(SweepTrial.sweep_id == sweep.id)
                                             .order_by(SweepTrial.index))).scalars())
    return _view(sweep, trials)


async def list_sweeps(gw: GatewayState, ref: str, caller: Caller, *, limit: int,
                      offset: int) -> tuple[list[SweepView], int]:
    async with gw.sessionmaker() as session:
        project = await get_project(session, ref, caller, "viewer")
        where = Sweep.project_id == project.id
        total = (await session.execute(select(func.count()).select_from(Sweep).where(where))).scalar_one()
        sweeps = list((await session.execute(select(Sweep).where(where).order_by(Sweep.created_at.desc(), Sweep.id)
                                             .limit(limit).offset(offset))).scalars())
        trials: dict[str, list[SweepTrial]] = {s.id: [] for s in sweeps}
        if sweeps:
            for t in (await session.execute(select(SweepTrial).where(SweepTrial.sweep_id.in_(list(trials)))
                                            .order_by(SweepTrial.index))).scalars():
                trials[t.sweep_id].append(t)
    return [_view(s, trials[s.id]) for s in sweeps], total


async def cancel_sweep(gw: GatewayState, ref: str, sweep_id: str, caller: Caller) -> SweepView:
    """Stop starting trials and cancel the unfinished ones. Repeating it is harmless; a completed sweep: 409."""
    sweep = await _sweep(gw, ref, sweep_id, caller, "member")
    async with gw.sessionmaker() as session, session.begin():
        sweep = (await session.execute(select(Sweep).where(Sweep.id == sweep.id).with_for_update())).scalar_one()
        if sweep.status == "completed":
            raise Conflict(f"sweep {sweep.id} is completed")
        sweep.status = "canceled"
        sweep.finished_at = sweep.finished_at or utcnow()
        trials = list((await session.execute(select(SweepTrial).where(SweepTrial.sweep_id == sweep.id))).scalars())
        for trial in trials:
            if trial.run_id is None and trial.status == "pending":
                trial.status = "canceled"
        started = [t.run_id for t in trials if t.run_id and t.status not in TERMINAL]
        audit.record(session, caller, "sweep.cancel", "sweep", sweep.id, project_id=sweep.project_id)
    for run_id in started:
        try:
            await runs.cancel_run(gw, run_id, caller)
        except Conflict:  # finished meanwhile
            pass
    await advance(gw, sweep.id)
    return await sweep_detail(gw, ref, sweep.id, caller)
