"""An in-memory `Emitter` for executor tests: keeps what an executor reports, in order (test code)."""

from __future__ import annotations

from typing import Any, Literal

from shared.contracts.common import new_id


class RecordingEmitter:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.ctx: Any = None
        """Set to the RunContext to have `last_checkpoint_id` updated, as the real emitter does."""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [payload for event_kind, payload in self.events if event_kind == kind]

    @property
    def log_text(self) -> str:
        return "\n".join(e["text"] for e in self.of("log"))

    async def log(self, text: str, stream: Literal["stdout", "stderr", "system"] = "stdout") -> None:
        self.events.append(("log", {"text": text, "stream": stream}))

    async def progress(self, progress: float, **fields: Any) -> None:
        self.events.append(("progress", {"progress": progress, **fields}))

    async def metrics(self, metrics: dict[str, float], *, step: int | None = None, epoch: int | None = None) -> None:
        self.events.append(("metrics", {"metrics": metrics, "step": step, "epoch": epoch}))

    async def checkpoint(self, uri: str, **fields: Any) -> str:
        checkpoint_id = new_id()
        self.events.append(("checkpoint", {"checkpoint_id": checkpoint_id, "uri": uri, **fields}))
        if self.ctx is not None:
            self.ctx.last_checkpoint_id = checkpoint_id
        return checkpoint_id

    async def artifact(self, name: str, uri: str, **fields: Any) -> str:
        artifact_id = new_id()
        self.events.append(("artifact", {"artifact_id": artifact_id, "name": name, "uri": uri, **fields}))
        return artifact_id
