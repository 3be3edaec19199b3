"""Fleet control: drain or resume one runner, and ask a runner of a pool for training-resource advice.

Both are core NATS request/reply. Control: `Subjects.runner_control(runner_id)`, answered by that runner.
Advice: `Subjects.advice(pool)`, answered by one runner of the pool (queue group `Subjects.advice_group`),
which measures the model on its own device.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class RunnerControl(msgspec.Struct, frozen=True, kw_only=True):
    action: Literal["drain", "resume"]


class RunnerControlReply(msgspec.Struct, frozen=True, kw_only=True):
    runner_id: str
    state: str
    """The runner's state after the action (`draining`, `idle`, `busy`, `stopped`)."""
    active_runs: list[str] = []
    error: str | None = None


class AdviceRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    """A model name Ultralytics ships a YAML for (`yolov8n`, `yolo11s-seg`)."""
    imgsz: int = 640
    device: str = "auto"
    """`auto` (the runner's device), `cpu` or `cuda:N`."""
    batch: int | None = None
    """A batch the client intends to use: checked against the measurement."""
    dataset_path: str | None = None
    """Where the (prepared) dataset lives on the runner's host, for the cache decision."""
    dataset_images: int | None = None
    """Images in the dataset, when the gateway knows it."""
    memory_limit_mb: int | None = None
    """Plan within this much memory (default: 60 % of what the host has available)."""


class AdviceReply(msgspec.Struct, frozen=True, kw_only=True):
    runner_id: str = ""
    host: str = ""
    device: str = ""
    model: str = ""
    task: str | None = None
    imgsz: int = 0
    batch: int | None = None
    workers: int | None = None
    amp: bool | None = None
    cache: Literal["ram", "disk"] | bool | None = None
    warnings: list[str] = []
    notes: list[str] = []
    measurement: dict[str, Any] = {}
    """How the suggestion was derived (method, probed batch sizes, memory and step time per probe)."""
    error: str | None = None
    """Why the runner could not advise."""
    error_kind: Literal["invalid", "failed"] | None = None
    """`invalid`: the request (unknown model, a device the runner does not have); `failed`: the measurement."""


control_decoder = msgspec.json.Decoder(RunnerControl)
control_reply_decoder = msgspec.json.Decoder(RunnerControlReply)
advice_request_decoder = msgspec.json.Decoder(AdviceRequest)
advice_reply_decoder = msgspec.json.Decoder(AdviceReply)


class RunPauseRequest(msgspec.Struct, frozen=True, kw_only=True):
    """On `Subjects.run_pause(run_id)`: answered (`RunPauseReply`) by the runner running that run."""

    action: Literal["pause", "unpause"]
    requested_by: str | None = None


class RunPauseReply(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    runner_id: str
    paused: bool
    """Whether the run is paused after the request."""
    error: str | None = None
    """Why the request was refused (the run cannot pause, is not paused, ...); None: done."""
    conflict: bool = False
    """The refusal is a state conflict (409), not a failure."""


pause_request_decoder = msgspec.json.Decoder(RunPauseRequest)
pause_reply_decoder = msgspec.json.Decoder(RunPauseReply)
