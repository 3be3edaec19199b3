"""Weights registration: each completed `yolo.train` run's best weights become the next version of a model
in the weights library.

The projector holds back the `run.completed` that completes a training and hands it over with `prepare()`
(the projection's hot path only pays for a queue put); it stores the completion once `runs.registration` is
written, so a client that sees the run completed can read its model version. A background task registers
the runs one by one:
the run's `weights/best.pt` artifact (else `weights/last.pt`) is read safely (`inspect_weights`: task and
class names), then `register_version` stores it as the next version of the model named by the run's
`register_as` option (default: the project's name, or `<project>-<task>` when that model holds another
task), with the run's final metrics, the run, its dataset and the library version it started from.
The outcome is written to `runs.registration`; at start the task also takes every completed training
that has none yet, and whatever the projector completed without waiting (`submit()`, after its commit: the
registrar took too long), so a gateway stopped in between loses nothing. Registering twice is harmless:
`register_version` returns the version a run already made.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import case, select, update

from gateway.background import TaskService
from gateway.db.models import Artifact, Model, Project, Run
from gateway.errors import GatewayError
from gateway.services.models import register_version
from gateway.state import GatewayState
from gateway.weights import WeightsError, inspect_weights
from shared.artifacts import ArtifactError, LocalArtifactStore, artifact_store
from shared.contracts.common import RunStatus
from shared.contracts.events import RunCompleted

log = logging.getLogger(__name__)

TRAIN_KIND = "yolo.train"
WEIGHTS_NAMES = ("weights/best.pt", "weights/last.pt")
MODEL_NAME_MAX = 128


class WeightsRegistrar(TaskService):
    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        self._queue: asyncio.Queue[tuple[str, RunCompleted | None]] = asyncio.Queue()
        self._preparing: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="weights-registrar")

    async def stop(self) -> None:
        await self._cancel_task()

    def submit(self, run_ids: list[str]) -> None:
        """Register these completed training runs (called by the projector after its commit)."""
        for run_id in run_ids:
            self._queue.put_nowait((run_id, None))

    def prepare(self, run_id: str, completion: RunCompleted) -> None:
        """Register a training whose `completion` the projector holds back until `runs.registration` is
        written (an error is written too). Asking again while it is queued or under way does nothing."""
        if run_id not in self._preparing:
            self._preparing.add(run_id)
            self._queue.put_nowait((run_id, completion))

    async def _run(self) -> None:
        try:
            for run_id in await self._unregistered():
                await self._register_logged(run_id)
        except Exception:  # noqa: BLE001 - the database may be away at start; the next start sweeps again
            log.exception("weights registration: the sweep of unregistered trainings failed")
        while True:
            run_id, completion = await self._queue.get()
            try:
                await self._register_logged(run_id, completion)
            finally:
                if completion is not None:
                    self._preparing.discard(run_id)
                    if self.gw.projector is not None:  # it holds the completion until now: store it at once
                        self.gw.projector.nudge()

    async def _unregistered(self) -> list[str]:
        async with self.gw.sessionmaker() as session:
            return list((await session.execute(
                select(Run.id).where(Run.kind == TRAIN_KIND, Run.status == RunStatus.COMPLETED.value,
                                     Run.registration.is_(None)).order_by(Run.finished_at))).scalars())

    async def _register_logged(self, run_id: str, completion: RunCompleted | None = None) -> None:
        try:
            await self.register(run_id, completion)
        except Exception:  # noqa: BLE001 - one run's trouble must not stop the others
            log.exception("weights registration of run %s failed", run_id)

    async def register(self, run_id: str, completion: RunCompleted | None = None) -> dict[str, Any] | None:
        """Register the run's weights unless done; returns what `runs.registration` now says. The run is
        completed, or `completion` is its run.completed, not stored yet (the run is still active)."""
        async with self.gw.sessionmaker() as session:
            run = await session.get(Run, run_id)
            if run is None or run.kind != TRAIN_KIND:
                return None
            status = RunStatus(run.status)
            if status != RunStatus.COMPLETED and (completion is None or status.terminal):
                return None
            if run.registration is not None:
                return run.registration
            weights = (await session.execute(
                select(Artifact).where(Artifact.run_id == run.id, Artifact.name.in_(WEIGHTS_NAMES))
                .order_by(case((Artifact.name == WEIGHTS_NAMES[0], 0), else_=1), Artifact.created_at.desc())
                .limit(1))).scalar_one_or_none()
            project = await session.get_one(Project, run.project_id)
        if weights is None:
            return await self._record(run.id, {"error": "the run stored no weights (weights/best.pt)"})
        try:
            pending = completion is not None and status != RunStatus.COMPLETED
            result = completion.result if pending else run.result  # type: ignore[union-attr]
            registration = await self._register_weights(run, project, weights, result)
        except (GatewayError, WeightsError, ArtifactError) as exc:
            log.warning("weights of run %s not registered: %s", run.id, exc)
            return await self._record(run.id, {"error": str(exc)})
        log.info("run %s registered as %s:%s", run.id, registration["model"], registration["version"])
        return registration

    async def _register_weights(self, run: Run, project: Project, weights: Artifact,
                                result: dict[str, Any] | None) -> dict[str, Any]:
        settings = self.gw.settings
        store = artifact_store(settings, self.gw.js)
        with tempfile.TemporaryDirectory(prefix="tf-register-") as tmp:
            local = LocalArtifactStore(settings.artifacts_dir)
            path = local.path_of(weights.uri) if local.owns(weights.uri) else await store.fetch(
                weights.uri, Path(tmp) / "best.pt")
            info = await anyio.to_thread.run_sync(inspect_weights, path, settings.state_dir)
            metrics = {k: float(v) for k, v in ((result or {}).get("metrics") or {}).items()
                       if isinstance(v, int | float) and not isinstance(v, bool)} or info.metrics
            async with self.gw.sessionmaker() as session:
                name = run.options.get("register_as") or await default_model_name(
                    session, project.name, info.task, run.owner_id)
                version = await register_version(  # in the library of the user who started the run
                    session, store, name=name, file_path=path, task=info.task, class_names=info.class_names,
                    metrics=metrics, source_run_id=run.id, dataset_id=run.spec.get("dataset_id"),
                    dataset_version=run.spec.get("dataset_version"),
                    owner_id=run.owner_id, parent_version_id=run.options.get("model_version_id"), format="pt")
                registration = {"model": name, "version": version.version, "model_version_id": version.id,
                                "ref": f"{name}:{version.version}"}
                await session.execute(update(Run).where(Run.id == run.id).values(registration=registration))
                try:
                    await session.commit()
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await store.delete(version.uri)
                    raise
        return registration

    async def _record(self, run_id: str, registration: dict[str, Any]) -> dict[str, Any]:
        async with self.gw.sessionmaker() as session, session.begin():
            await session.execute(update(Run).where(Run.id == run_id).values(registration=registration))
        return registration


async def default_model_name(session: Any, project_name: str, task: str, owner_id: str | None) -> str:
    """The project's name, unless a model of that name (of the run's owner) holds another task: then
    `<project>-<task>`."""
    owned = Model.owner_id.is_(None) if owner_id is None else Model.owner_id == owner_id
    existing = (await session.execute(select(Model.task).where(Model.name == project_name, owned))).scalar_one_or_none()
    if existing is None or existing == task:
        return project_name
    suffix = f"-{task}"
    return project_name[: MODEL_NAME_MAX - len(suffix)] + suffix
