"""An in-memory `Emitter` that records what an executor reports (the runner's real one publishes to NATS)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.executors.base import RunContext
from shared.contracts import Job
from shared.contracts.common import new_id
from shared.settings import Settings


@dataclass
class Record:
    type: str
    fields: dict[str, Any]


@dataclass
class RecordingEmitter:
    records: list[Record] = field(default_factory=list)
    on_record: Any = None
    """Optional `callable(record)` run after each record (for example to request a cancel)."""
    ctx: RunContext | None = None

    def _add(self, type_: str, **fields: Any) -> None:
        record = Record(type_, fields)
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [r.fields for r in self.records if r.type == type_]

    async def log(self, text: str, stream: str = "stdout") -> None:
        self._add("log", text=text, stream=stream)

    async def progress(self, progress: float, **fields: Any) -> None:
        self._add("progress", progress=progress, **fields)

    async def metrics(self, metrics: dict[str, float], *, step: int | None = None, epoch: int | None = None) -> None:
        self._add("metrics", metrics=metrics, step=step, epoch=epoch)

    async def checkpoint(self, uri: str, **fields: Any) -> str:
        checkpoint_id = new_id()
        self._add("checkpoint", checkpoint_id=checkpoint_id, uri=uri, **fields)
        if self.ctx is not None:
            self.ctx.last_checkpoint_id = checkpoint_id
        return checkpoint_id

    async def artifact(self, name: str, uri: str, **fields: Any) -> str:
        artifact_id = new_id()
        self._add("artifact", artifact_id=artifact_id, name=name, uri=uri, **fields)
        return artifact_id


def make_context(settings: Settings, spec: Any, *, workdir: Path, resume: Any = None, attempt: int = 1) -> RunContext:
    """A real RunContext for one attempt of a run with `spec`, recording into a fresh RecordingEmitter."""
    emitter = RecordingEmitter()
    job = Job(run_id=new_id(), project_id="p1", pool="cpu", spec=spec, resume=resume)
    ctx = RunContext(
        job=job,
        attempt=attempt,
        runner_id="r1",
        device="cpu",
        settings=settings,
        emit=emitter,
        workdir=workdir,
        cancel_requested=asyncio.Event(),
        resume=resume,
    )
    emitter.ctx = ctx
    return ctx
