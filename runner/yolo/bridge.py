"""The link between a YOLO job running in a worker thread and its run on the event loop.

A job calls these methods from its worker thread. They go, in the order they were made, through one queue
that a task on the loop works off: progress, metrics and log lines are handed over without waiting (the
training thread never waits for a publish), while calls that need an answer (storing a file, recording a
checkpoint or artifact) wait for theirs. `close()` waits until everything handed over is done, so every event
of the job precedes its terminal event. Progress is throttled; cancellation is read from the run's
`cancel_requested` event or the executor's own stop flag (set when the executor task is cancelled).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import re
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from runner.executors.base import RunContext
from shared.artifacts import ArtifactStore, media_type

log = logging.getLogger(__name__)
T = TypeVar("T")

ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
UNSAFE_KEY_CHARS = re.compile(r"[^-_=.A-Za-z0-9/]")
PROGRESS_INTERVAL_S = 0.25
"""At most ~4 progress events per second."""
STORE_CONCURRENCY = 4
"""Files stored at once by `artifacts()`."""


async def _nothing() -> None:
    return None


class JobStopped(Exception):
    """Raised inside Ultralytics (from a callback) to end a job that was asked to stop."""


class BatchGate:
    """Pauses a training at a batch boundary: `pause()`/`resume()` on the loop (the run's `Pauser`), and
    `wait_while_paused()` from the training thread's batch callback, which parks there until resumed or
    canceled; the training then goes on from the batch it stopped at, nothing lost."""

    def __init__(self, canceled: Callable[[], bool]) -> None:
        self._running = threading.Event()
        self._running.set()
        self._canceled = canceled
        self.parked = threading.Event()
        """Set while the training thread waits at a batch boundary."""

    async def pause(self) -> None:
        self._running.clear()

    async def resume(self) -> None:
        self._running.set()

    def wait_while_paused(self) -> None:
        if self._running.is_set():
            return
        self.parked.set()
        try:
            while not self._running.wait(0.2):
                if self._canceled():
                    return
        finally:
            self.parked.clear()


class JobBridge:
    def __init__(self, ctx: RunContext, store: ArtifactStore, stop: threading.Event) -> None:
        self.ctx = ctx
        self.store = store
        self.stop = stop
        self.gate = BatchGate(lambda: self.canceled)
        self._last_progress = 0.0
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[Callable[[], Awaitable[Any]], concurrent.futures.Future[Any] | None]] = (
            asyncio.Queue()
        )
        self._error: BaseException | None = None
        self._pump = self._loop.create_task(self._work_off(), name=f"bridge {ctx.run_id}")

    # -- cancellation --------------------------------------------------------------------------------------
    @property
    def canceled(self) -> bool:
        return self.stop.is_set() or self.ctx.cancel_requested.is_set()

    def raise_if_canceled(self) -> None:
        if self.canceled:
            raise JobStopped

    # -- calls onto the loop -------------------------------------------------------------------------------
    async def _work_off(self) -> None:
        while True:
            work, answer = await self._queue.get()
            try:
                result = await work()
            except Exception as exc:  # noqa: BLE001 - handed to whoever waits, or kept for close()
                if answer is None:
                    self._error = self._error or exc
                else:
                    answer.set_exception(exc)
            else:
                if answer is not None:
                    answer.set_result(result)
            finally:
                self._queue.task_done()

    def post(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> None:
        """Hand a call to the loop without waiting for it (from the worker thread)."""
        if self._error is not None:
            raise self._error
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (functools.partial(fn, *args, **kwargs), None))

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Hand a call to the loop, after everything handed before it, and wait for its result."""
        if self._error is not None:
            raise self._error
        answer: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (functools.partial(fn, *args, **kwargs), answer))
        return answer.result()

    def drain(self) -> None:
        """From the worker thread: wait until every call handed over so far is done; raise a failed one."""
        self.call(_nothing)
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        """On the loop, after the job: wait until every call handed over is done; raise a failed publish."""
        try:
            await self._queue.join()
        finally:
            self._pump.cancel()
        if self._error is not None:
            raise self._error

    def progress(self, fraction: float, *, force: bool = False, **fields: Any) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        self.post(self.ctx.emit.progress, min(max(fraction, 0.0), 1.0), **fields)

    def metrics(self, metrics: dict[str, float], *, epoch: int | None = None, step: int | None = None) -> None:
        self.post(self.ctx.emit.metrics, metrics, epoch=epoch, step=step)

    def log(self, text: str, stream: str = "stdout") -> None:
        self.post(self.ctx.emit.log, text, stream)

    # -- files ---------------------------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        """The store key of a file of this run attempt (characters outside the key alphabet become `_`)."""
        name = UNSAFE_KEY_CHARS.sub("_", "/".join(parts)).strip("/").replace("..", "_")
        return "/".join(("runs", self.ctx.run_id, f"attempt-{self.ctx.attempt}", name))

    def store_file(self, key: str, path: Path) -> str:
        return self.call(self.store.put_file, key, path)

    def delete_file(self, uri: str) -> None:
        """Delete a stored file of this attempt; skipped while the attempt is not sure it still holds the run
        (`RunContext.holds_claim`): a next attempt may be about to resume from it."""
        if not self.ctx.holds_claim():
            log.warning("run %s: not deleting %s (this attempt's claim is not confirmed)", self.ctx.run_id, uri)
            return
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

    def artifacts(self, files: list[tuple[Path, str, str]], metas: dict[str, dict[str, Any]] | None = None) -> list[str]:
        """Store several files of this run at once ((path, name, kind) each) and record them, in that order,
        as artifacts (those of a kind in `metas` with that meta); returns their URIs. One wait for all of
        them, not one per file."""

        async def store_all() -> list[str]:
            slots = asyncio.Semaphore(STORE_CONCURRENCY)

            async def store(path: Path, name: str) -> str:
                async with slots:
                    return await self.store.put_file(self.key(name), path)

            uris = await asyncio.gather(*(store(path, name) for path, name, _ in files))
            for (path, name, kind), uri in zip(files, uris, strict=True):
                await self.ctx.emit.artifact(name, uri, kind=kind, size_bytes=path.stat().st_size,
                                             media_type=media_type(path.name), meta=(metas or {}).get(kind))
            return list(uris)

        return self.call(store_all)

    def checkpoint_later(self, path: Path, *, key: str, epoch: int, meta: dict[str, Any],
                         recorded: Callable[[str, str], Awaitable[None]]) -> None:
        """Take a copy of `path` now (the trainer overwrites it next epoch and strips it after the last one),
        then store and record it on the loop while training goes on; `recorded(checkpoint_id, uri)` runs on
        the loop once it is. `drain()` waits for it."""
        snapshot = path.with_name(f".{path.name}.epoch-{epoch}.snapshot")
        shutil.copyfile(path, snapshot)
        size = snapshot.stat().st_size

        async def store_and_record() -> None:
            try:
                uri = await self.store.put_file(key, snapshot)
            finally:
                snapshot.unlink(missing_ok=True)
            checkpoint_id = await self.ctx.emit.checkpoint(uri, epoch=epoch, size_bytes=size, resumable=True,
                                                           meta=meta)
            self.ctx.last_checkpoint_id = checkpoint_id
            await recorded(checkpoint_id, uri)

        self.post(store_and_record)

    async def delete_stored(self, uri: str) -> None:
        """On the loop: `delete_file`'s work (skipped unless this attempt is sure it still holds the run)."""
        if not self.ctx.holds_claim():
            log.warning("run %s: not deleting %s (this attempt's claim is not confirmed)", self.ctx.run_id, uri)
            return
        await self.store.delete(uri)

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
