"""The link between a YOLO job running in a worker thread and its run on the event loop.

A job calls these methods from its worker thread; each hops onto the loop with `anyio.from_thread.run` and
waits for the emitter (or the artifact store) there. Progress is throttled; cancellation is read from the
run's `cancel_requested` event or the executor's own stop flag (set when the executor task is cancelled).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.from_thread

from runner.executors.base import RunContext
from shared.artifacts import ArtifactStore, media_type

T = TypeVar("T")

ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
UNSAFE_KEY_CHARS = re.compile(r"[^-_=.A-Za-z0-9/]")
PROGRESS_INTERVAL_S = 0.25
"""At most ~4 progress events per second."""


class JobStopped(Exception):
    """Raised inside Ultralytics (from a callback) to end a job that was asked to stop."""


class JobBridge:
    def __init__(self, ctx: RunContext, store: ArtifactStore, stop: threading.Event) -> None:
        self.ctx = ctx
        self.store = store
        self.stop = stop
        self._last_progress = 0.0

    # -- cancellation --------------------------------------------------------------------------------------
    @property
    def canceled(self) -> bool:
        return self.stop.is_set() or self.ctx.cancel_requested.is_set()

    def raise_if_canceled(self) -> None:
        if self.canceled:
            raise JobStopped

    # -- calls onto the loop -------------------------------------------------------------------------------
    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        return anyio.from_thread.run(functools.partial(fn, *args, **kwargs))

    def progress(self, fraction: float, *, force: bool = False, **fields: Any) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        self.call(self.ctx.emit.progress, min(max(fraction, 0.0), 1.0), **fields)

    def metrics(self, metrics: dict[str, float], *, epoch: int | None = None, step: int | None = None) -> None:
        self.call(self.ctx.emit.metrics, metrics, epoch=epoch, step=step)

    def log(self, text: str, stream: str = "stdout") -> None:
        self.call(self.ctx.emit.log, text, stream)

    # -- files ---------------------------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        """The store key of a file of this run attempt (characters outside the key alphabet become `_`)."""
        name = UNSAFE_KEY_CHARS.sub("_", "/".join(parts)).strip("/").replace("..", "_")
        return "/".join(("runs", self.ctx.run_id, f"attempt-{self.ctx.attempt}", name))

    def store_file(self, key: str, path: Path) -> str:
        return self.call(self.store.put_file, key, path)

    def delete_file(self, uri: str) -> None:
        self.call(self.store.delete, uri)

    def artifact(self, path: Path, *, name: str | None = None, kind: str = "file", meta: dict | None = None) -> str:
        """Store a file of this run and record it as an artifact; returns its URI."""
        name = name or path.name
        uri = self.store_file(self.key(name), path)
        self.call(
            self.ctx.emit.artifact,
            name,
            uri,
            kind=kind,
            size_bytes=path.stat().st_size,
            media_type=media_type(path.name),
            meta=meta,
        )
        return uri

    def checkpoint(self, path: Path, *, key: str, epoch: int, meta: dict[str, Any]) -> tuple[str, str]:
        """Store a resumable checkpoint and record it; returns (checkpoint id, uri)."""
        size = path.stat().st_size
        uri = self.store_file(key, path)
        checkpoint_id = self.call(self.ctx.emit.checkpoint, uri, epoch=epoch, size_bytes=size, resumable=True, meta=meta)
        self.ctx.last_checkpoint_id = checkpoint_id
        return checkpoint_id, uri


class LogForwarder(logging.Handler):
    """Forwards Ultralytics' log lines written by one worker thread to the run's log."""

    def __init__(self, bridge: JobBridge) -> None:
        super().__init__(logging.INFO)
        self.bridge = bridge
        self.thread_id = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread_id:
            return
        try:
            for line in ANSI_RE.sub("", self.format(record)).splitlines():
                if line.strip():
                    self.bridge.log(line, "stderr" if record.levelno >= logging.WARNING else "stdout")
        except Exception:  # noqa: BLE001 - a log line must never break the job
            self.handleError(record)

    def __enter__(self) -> LogForwarder:
        logging.getLogger("ultralytics").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("ultralytics").removeHandler(self)
