"""Executor of the `yolo.*` run kinds: Ultralytics in-process, in a worker thread.

The event loop stays free: the job runs under `anyio.to_thread.run_sync`; its callbacks report through
`ctx.emit` through an ordered queue on the loop (see `runner.yolo.bridge`). Inputs (weights, checkpoints, images) are
fetched from the artifact store before the job starts; outputs go to the store and are recorded as artifacts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import anyio
from nats.js import JetStreamContext

from runner.executors.base import Canceled, ExecutorError, Failed, Outcome, RunContext
from runner.yolo.bridge import JobBridge, JobStopped
from runner.yolo.inputs import InputResolver
from runner.yolo.offline import prepare_ultralytics
from shared.artifacts import ArtifactStore, artifact_store
from shared.contracts import FailureCause
from shared.contracts.yolo import (
    YoloExportSpec,
    YoloPredictSpec,
    YoloTrainSpec,
    YoloValSpec,
    validate_train_extra,
)
from shared.settings import Settings

USER_ERRORS = (ExecutorError, ValueError, TypeError, KeyError, AssertionError, FileNotFoundError, SyntaxError)
"""Exceptions that mean the spec or its inputs are wrong (failure cause `user`); anything else: `infrastructure`."""

log = logging.getLogger(__name__)


class YoloExecutor:
    kinds: ClassVar[tuple[str, ...]] = ("yolo.train", "yolo.val", "yolo.export", "yolo.predict")
    uses_bus: ClassVar[bool] = True
    """The runner's registry passes its JetStream connection (`js`), for `artifact_store = nats`."""

    def __init__(
        self, settings: Settings, store: ArtifactStore | None = None, js: JetStreamContext | None = None
    ) -> None:
        """`store`: where outputs go and inputs come from; default the store `settings.artifact_store` names
        (`local` needs nothing; `nats` uses `js`, the runner's JetStream connection)."""
        self.settings = settings
        self.store = store or artifact_store(settings, js)

    async def run(self, ctx: RunContext) -> Outcome:
        try:
            await anyio.to_thread.run_sync(prepare_ultralytics, self.settings.state_dir)
            async with InputResolver(self.settings, self.store, ctx.workdir) as resolver:  # inputs held to the end
                job = await self._prepare(ctx, resolver)
                return await self._run_in_thread(ctx, job)
        except JobStopped:
            return Canceled(checkpoint_id=ctx.resume.checkpoint_id if ctx.resume else None)
        except USER_ERRORS as exc:
            return Failed(cause=FailureCause.USER, error_type=type(exc).__name__, message=_message(exc))
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure is the platform's, reported not raised
            return Failed(cause=FailureCause.INFRASTRUCTURE, error_type=type(exc).__name__, message=_message(exc))

    async def _prepare(self, ctx: RunContext, resolver: InputResolver) -> Callable[[JobBridge], Outcome]:
        """Resolve the spec's inputs on the loop; returns the job to run in the worker thread."""
        from runner.yolo import export, predict, train, val

        spec = ctx.job.spec
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        device = resolve_device(getattr(spec, "device", "auto"), ctx.device)
        folder = ctx.workdir / f"attempt-{ctx.attempt}"
        match spec:
            case YoloTrainSpec():
                if problems := validate_train_extra(spec.extra):
                    raise ExecutorError("; ".join(f"{path}: {message}" for path, message in problems))
                data = await resolver.data(spec.data, spec.dataset_sha256)
                if ctx.resume is not None:
                    checkpoint = await resolver.fetch(ctx.resume.uri, "resume")
                    inputs = train.TrainInputs(
                        model=None,
                        weights=None,
                        data=data,
                        device=device,
                        save_dir=folder / "train",
                        resume=checkpoint,
                        resume_checkpoint_id=ctx.resume.checkpoint_id,
                    )
                else:
                    model, weights = await _train_model(spec, resolver, ctx.workdir)
                    inputs = train.TrainInputs(
                        model=model, weights=weights, data=data, device=device, save_dir=folder / "train"
                    )
                return lambda bridge: train.run_train(spec, inputs, bridge)
            case YoloValSpec():
                model = await resolver.model(spec.model)
                data = await resolver.data(spec.data, spec.dataset_sha256)
                return lambda bridge: val.run_val(spec, model, data, device, folder / "val", bridge)
            case YoloExportSpec():
                model = await resolver.model(spec.model)
                data = await resolver.data(spec.data) if spec.data else None
                return lambda bridge: export.run_export(spec, model, data, device, folder / "export", bridge)
            case YoloPredictSpec():
                model = await resolver.model(spec.model)
                sources = [await resolver.image(ref, i) for i, ref in enumerate(spec.sources)]
                return lambda bridge: predict.run_predict(spec, model, sources, device, folder / "predict", bridge)
            case _:
                kind = type(spec).__struct_config__.tag
                raise ExecutorError(f"the YOLO executor does not run kind {kind!r}")

    async def _run_in_thread(self, ctx: RunContext, job: Callable[[JobBridge], Outcome]) -> Outcome:
        """Run the job in a worker thread. If this task is cancelled, the job is told to stop and awaited
        (shielded), so no training outlives its executor."""
        stop, finished = threading.Event(), threading.Event()
        bridge = JobBridge(ctx, self.store, stop)

        def work() -> Outcome:
            try:
                return job(bridge)
            finally:
                finished.set()

        if isinstance(ctx.job.spec, YoloTrainSpec):  # a training pauses at its next batch boundary
            ctx.pauser = bridge.gate
        try:
            outcome = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            ctx.pauser = None
            stop.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(finished.wait)
                try:
                    await bridge.close()
                except Exception:  # noqa: BLE001 - being cancelled wins over a failed publish
                    log.warning("run %s: events lost while stopping", ctx.run_id, exc_info=True)
            raise
        except BaseException:
            ctx.pauser = None
            await bridge.close()
            raise
        ctx.pauser = None
        await bridge.close()  # every event of the job is out before the agent publishes the terminal one
        return outcome


async def _train_model(spec: YoloTrainSpec, resolver: InputResolver, workdir: Path) -> tuple[Any, str | None]:
    from runner.yolo.architecture import check_model_yaml, parse_model_yaml
    from runner.yolo.inputs import ModelSource

    if spec.model_yaml is None:
        assert spec.model is not None
        return await resolver.model(spec.model), None
    check_model_yaml(*parse_model_yaml(spec.model_yaml))
    path = workdir / "model.yaml"
    path.write_text(spec.model_yaml)
    weights = None
    if spec.model is not None:
        source = await resolver.model(spec.model)
        weights = source.source if source.weights else None
    return ModelSource(str(path), weights=False), weights


def resolve_device(requested: str, runner_device: str) -> str:
    """Ultralytics' device string (`cpu`, `0`, ...) for a spec's `auto|cpu|cuda[:N]` on this runner."""
    import torch

    if requested == "auto":
        requested = runner_device if runner_device.startswith(("cpu", "cuda")) else "auto"
        if requested == "auto":
            requested = "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    index = int(requested.partition(":")[2] or 0)
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise ExecutorError(f"device {requested!r} is not available on this runner")
    return str(index)


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or (type(exc).__doc__ or type(exc).__name__).strip()
    return text[:4000]

