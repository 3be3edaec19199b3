"""`yolo.train`: Ultralytics training in a worker thread, reported through a `JobBridge`.

Reported: batch progress (throttled), each epoch's metrics (results.csv columns, epoch time, GPU memory), a
resumable checkpoint every epoch (a copy of `last.pt` taken in `on_model_save`: the final evaluation strips
`last.pt`), and at the end the run folder's files as artifacts. The training thread only takes that copy: it
is stored and recorded on the loop while the next epoch trains (the end of the job waits for it).

Cancel: the batch callback sets `trainer.stop`; Ultralytics then validates and saves the interrupted epoch,
the checkpoint is recorded, and `on_fit_epoch_end` raises `JobStopped` so the final evaluation is skipped.
Resume: training continues from a checkpoint at its next epoch (`resume=`), in a fresh folder seeded with the
checkpoint's results.csv, so the metric series stays continuous.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.executors.base import Canceled, Completed, Outcome
from runner.yolo.bridge import JobBridge, JobStopped, LogForwarder
from runner.yolo.files import publish_run_folder
from runner.yolo.inputs import InputError, ModelSource
from shared.contracts.yolo import YoloTrainSpec

CHECKPOINTS_KEPT = 2
"""Per attempt, the newest checkpoints kept in the store (older ones are deleted, save_period ones kept)."""


@dataclass(frozen=True)
class TrainInputs:
    model: ModelSource | None
    """The model to train (None when resuming)."""
    weights: str | None
    """Weights to transfer into a `model_yaml` architecture."""
    data: str
    device: str
    save_dir: Path
    resume: Path | None = None
    resume_checkpoint_id: str | None = None


@dataclass
class _State:
    epochs: int = 0
    start_epoch: int = 0
    batches: int = 0
    batch: int = 0
    done_batches: int = 0
    started: float = field(default_factory=time.monotonic)
    in_epoch: bool = False
    checkpoint_id: str | None = None
    kept: list[tuple[str, bool]] = field(default_factory=list)
    """(uri, keep forever) of checkpoints stored by this attempt."""
    final_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)


def run_train(spec: YoloTrainSpec, inputs: TrainInputs, bridge: JobBridge) -> Outcome:
    from ultralytics import YOLO

    if inputs.save_dir.exists():
        shutil.rmtree(inputs.save_dir)
    inputs.save_dir.mkdir(parents=True)
    state = _State(checkpoint_id=inputs.resume_checkpoint_id)

    if inputs.resume is not None:
        ckpt = _load_resumable(inputs.resume)
        if ckpt["epoch"] + 1 >= ckpt["train_args"]["epochs"]:
            return _finished_checkpoint(inputs, ckpt, bridge, _dataset_meta(spec))
        _seed_results_csv(inputs.save_dir, ckpt.get("train_results") or {})
        model = YOLO(str(inputs.resume))
        args: dict[str, Any] = {"resume": str(inputs.resume), "data": inputs.data, "device": inputs.device}
    else:
        assert inputs.model is not None
        model = YOLO(inputs.model.source)
        if inputs.weights:
            model.load(inputs.weights)
        args = {
            "data": inputs.data,
            "epochs": spec.epochs,
            "batch": spec.batch,
            "imgsz": spec.imgsz,
            "lr0": spec.lr0,
            "optimizer": spec.optimizer,
            "device": inputs.device,
            "patience": spec.patience,
            "save_period": spec.save_period,
            "seed": spec.seed,
            **_device_defaults(inputs.device),
            **spec.extra,
        }
    args |= {"save_dir": str(inputs.save_dir), "exist_ok": True, "save": True}

    for event, callback in _callbacks(state, bridge).items():
        model.add_callback(event, callback)
    bridge.raise_if_canceled()
    try:
        with LogForwarder(bridge):
            model.train(**args)
    except JobStopped:
        _close_loaders(model.trainer)
        bridge.drain()  # the interrupted epoch's checkpoint is recorded
        return Canceled(checkpoint_id=state.checkpoint_id)
    trainer = model.trainer
    bridge.drain()
    publish_run_folder(inputs.save_dir, bridge, _dataset_meta(spec))
    return Completed(
        result={
            "epochs": state.epochs,
            "epochs_completed": (trainer.epoch + 1) if trainer is not None else state.epochs,
            "best_fitness": _float(getattr(trainer, "best_fitness", None)),
            "metrics": state.final_metrics or state.last_metrics,
            "last_epoch_metrics": state.last_metrics,
            "save_dir": str(inputs.save_dir),
            "checkpoint_id": state.checkpoint_id,
        }
    )


def _callbacks(state: _State, bridge: JobBridge) -> dict[str, Any]:
    def on_pretrain_routine_end(trainer: Any) -> None:
        bridge.raise_if_canceled()

    def on_train_start(trainer: Any) -> None:
        state.epochs = trainer.epochs
        state.start_epoch = trainer.start_epoch
        state.batches = len(trainer.train_loader)
        state.started = time.monotonic()
        bridge.raise_if_canceled()

    def on_train_epoch_start(trainer: Any) -> None:
        bridge.raise_if_canceled()
        state.batch = 0
        state.in_epoch = True

    def on_train_batch_end(trainer: Any) -> None:
        state.batch += 1
        state.done_batches += 1
        bridge.gate.wait_while_paused()  # a paused run waits here, between two batches
        if bridge.canceled:
            trainer.stop = True  # Ultralytics checks it right after this callback
            return
        total = max(state.epochs * state.batches, 1)
        done = trainer.epoch * state.batches + state.batch
        remaining = (state.epochs - state.start_epoch) * state.batches - state.done_batches
        elapsed = time.monotonic() - state.started
        bridge.progress(
            done / total,
            step=done,
            total=total,
            epoch=trainer.epoch + 1,
            epochs=state.epochs,
            batch=state.batch,
            batches=state.batches,
            losses=trainer.label_loss_items(trainer.tloss, prefix="train") if trainer.tloss else {},
            eta_s=round(elapsed / state.done_batches * max(remaining, 0), 1),
        )

    def on_model_save(trainer: Any) -> None:
        epoch = trainer.epoch + 1
        numbered = trainer.save_period > 0 and epoch % trainer.save_period == 0
        key = bridge.key("checkpoints", f"epoch-{epoch:05d}.pt")
        meta = {"attempt": bridge.ctx.attempt, "epochs": trainer.epochs, "fitness": _float(trainer.fitness)}

        async def recorded(checkpoint_id: str, uri: str) -> None:  # on the loop, while the next epoch trains
            state.checkpoint_id = checkpoint_id
            state.kept.append((uri, numbered))
            await _prune_checkpoints(state, bridge)

        bridge.checkpoint_later(Path(trainer.last), key=key, epoch=epoch, meta=meta, recorded=recorded)

    def on_fit_epoch_end(trainer: Any) -> None:
        metrics = _epoch_metrics(trainer)
        if not state.in_epoch:  # the final evaluation (of best.pt) after the last epoch
            state.final_metrics = metrics
            return
        state.in_epoch = False
        state.last_metrics = metrics
        bridge.metrics(metrics, epoch=trainer.epoch + 1)
        if bridge.canceled:
            raise JobStopped  # skips the final evaluation; the epoch's checkpoint is recorded

    return {
        "on_pretrain_routine_end": on_pretrain_routine_end,
        "on_train_start": on_train_start,
        "on_train_epoch_start": on_train_epoch_start,
        "on_train_batch_end": on_train_batch_end,
        "on_model_save": on_model_save,
        "on_fit_epoch_end": on_fit_epoch_end,
    }


def _epoch_metrics(trainer: Any) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if trainer.tloss:
        metrics |= trainer.label_loss_items(trainer.tloss, prefix="train")
    metrics |= {k: float(v) for k, v in (trainer.metrics or {}).items() if _float(v) is not None}
    metrics |= {k: float(v) for k, v in (getattr(trainer, "lr", None) or {}).items()}
    if trainer.fitness is not None:
        metrics["fitness"] = float(trainer.fitness)
    if trainer.epoch_time is not None:
        metrics["epoch_time_s"] = round(float(trainer.epoch_time), 3)
    if trainer.device.type == "cuda":
        import torch

        metrics["gpu_mem_gb"] = round(torch.cuda.memory_reserved(trainer.device) / 1e9, 3)
    return metrics


async def _prune_checkpoints(state: _State, bridge: JobBridge) -> None:
    rolling = [uri for uri, keep in state.kept if not keep]
    for uri in rolling[:-CHECKPOINTS_KEPT]:
        await bridge.delete_stored(uri)
        state.kept.remove((uri, False))


def _device_defaults(device: str) -> dict[str, Any]:
    """AMP's self-check on CUDA downloads weights; without them here, train in full precision by default."""
    return {} if device == "cpu" else {"amp": False}


def _close_loaders(trainer: Any) -> None:
    for loader in (getattr(trainer, "train_loader", None), getattr(trainer, "test_loader", None)):
        if loader is not None and hasattr(loader, "close"):
            loader.close()


def _load_resumable(path: Path) -> dict[str, Any]:
    from ultralytics.utils.patches import torch_load

    try:
        ckpt = torch_load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the caller's problem
        raise InputError(f"cannot read checkpoint {path.name}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("optimizer") is None or ckpt.get("epoch", -1) < 0:
        raise InputError(f"checkpoint {path.name} is not resumable (no optimizer state: a final or stripped weights file)")
    return ckpt


def _dataset_meta(spec: YoloTrainSpec) -> dict[str, Any] | None:
    """What the weights artifacts record of the data they were trained on."""
    if spec.dataset_id is None:
        return None
    return {"dataset_id": spec.dataset_id, "dataset_version": spec.dataset_version}


def _finished_checkpoint(inputs: TrainInputs, ckpt: dict[str, Any], bridge: JobBridge,
                         weights_meta: dict[str, Any] | None = None) -> Outcome:
    """Resuming a checkpoint of the last epoch: nothing is left to train; its weights are the result."""
    weights = inputs.save_dir / "weights" / "last.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(inputs.resume, weights)  # type: ignore[arg-type]
    _seed_results_csv(inputs.save_dir, ckpt.get("train_results") or {})
    publish_run_folder(inputs.save_dir, bridge, weights_meta)
    return Completed(
        result={
            "epochs": ckpt["train_args"]["epochs"],
            "epochs_completed": ckpt["epoch"] + 1,
            "metrics": {k: float(v) for k, v in (ckpt.get("train_metrics") or {}).items() if _float(v) is not None},
            "save_dir": str(inputs.save_dir),
            "checkpoint_id": inputs.resume_checkpoint_id,
        }
    )


def _seed_results_csv(save_dir: Path, results: dict[str, list[Any]]) -> None:
    """Write the epochs a checkpoint already trained into results.csv (Ultralytics appends to it)."""
    if not results or not all(results.values()):
        return
    columns = list(results)
    rows = zip(*(results[c] for c in columns), strict=False)
    lines = [",".join(columns)] + [",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row) for row in rows]
    (save_dir / "results.csv").write_text("\n".join(lines) + "\n")


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
