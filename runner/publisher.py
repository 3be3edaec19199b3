"""Publishing the events of one run attempt: numbered, de-duplicated, in order, never dropped silently.

`RunPublisher` is the `Emitter` an executor gets (logs, progress, metrics, checkpoints, artifacts) and also what
the agent uses for the lifecycle events (claimed, started, the terminal event). Every event gets the next
`seq` of its (run, attempt), starting at 1, and `Nats-Msg-Id: run:attempt:seq`, so a publish retried after a
lost acknowledgement is dropped by the stream instead of stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import msgspec
from nats.js import JetStreamContext

from shared.bus import TRANSIENT_BUS_ERRORS
from shared.contracts import (
    FailureCause,
    Job,
    LogLine,
    RunArtifact,
    RunCanceled,
    RunCheckpoint,
    RunClaimed,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunLog,
    RunMetrics,
    RunPaused,
    RunProgress,
    RunRequeued,
    RunStarted,
    RunUnpaused,
)
from shared.subjects import Subjects

log = logging.getLogger(__name__)

LOG_FLUSH_S = 0.2
LOG_BATCH_LINES = 100
LOG_BATCH_BYTES = 256 * 1024
LOG_LINE_MAX_CHARS = 8 * 1024
PUBLISH_TIMEOUT_S = 5.0
PUBLISH_DEADLINE_S = 60.0

RETRYABLE = TRANSIENT_BUS_ERRORS
"""Errors after which the same publish may succeed; the Nats-Msg-Id makes a retry of one that did land harmless."""


class PublishError(RuntimeError):
    """An event could not be published before the deadline (NATS unreachable for too long)."""


async def publish_reliably(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    *,
    msg_id: str | None = None,
    deadline_s: float = PUBLISH_DEADLINE_S,
    timeout_s: float = PUBLISH_TIMEOUT_S,
) -> None:
    """Publish to JetStream, retrying with backoff through a brief disconnect; `PublishError` after the deadline."""
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    deadline = time.monotonic() + deadline_s
    delay = 0.1
    while True:
        try:
            await js.publish(subject, data, timeout=timeout_s, headers=headers)
            return
        except RETRYABLE as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PublishError(f"could not publish {msg_id or subject} within {deadline_s:g} s: {exc!r}") from exc
            log.warning("publish of %s failed (%r); retrying", msg_id or subject, exc)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 2.0)


def _raise_first(outcomes: list[Any]) -> None:
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


class RunPublisher:
    """Numbers and publishes the events of one (run, attempt). Implements `runner.executors.base.Emitter`.

    Log lines are queued and sent as `run.log` batches (at most `LOG_BATCH_LINES` lines, at least every
    `LOG_FLUSH_S`); any other event first flushes the queued lines, so the stream keeps the order in which
    things were reported. Call `close()` when the attempt is over.
    """

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        job: Job,
        *,
        attempt: int,
        runner_id: str,
        deadline_s: float = PUBLISH_DEADLINE_S,
        on_checkpoint: Callable[[str], None] | None = None,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._job = job
        self._attempt = attempt
        self._runner_id = runner_id
        self._deadline_s = deadline_s
        self.on_checkpoint = on_checkpoint
        """Called with the id of each checkpoint recorded (the agent keeps `RunContext.last_checkpoint_id`)."""
        self._seq = 0
        self._lock = asyncio.Lock()
        self._lines: list[LogLine] = []
        self._line_bytes = 0
        self._flusher: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._pipeline: list[asyncio.Task[None]] | None = None

    @property
    def seq(self) -> int:
        """The seq of the last event published (0 before the first)."""
        return self._seq

    def _common(self) -> dict[str, Any]:
        return {
            "run_id": self._job.run_id,
            "project_id": self._job.project_id,
            "attempt": self._attempt,
            "runner_id": self._runner_id,
        }

    async def _send(self, build: Callable[[int], RunEvent]) -> RunEvent:
        """Number the event and publish it; the caller holds the lock."""
        event = build(self._seq + 1)
        # The seq is used up even if the publish fails: a later event must never reuse the Nats-Msg-Id of one
        # that may have landed after all (the stream would drop it as a duplicate).
        self._seq = event.seq
        subject = self._subjects.run_event(event.project_id, event.run_id, event.type)
        sent = publish_reliably(
            self._js, subject, msgspec.json.encode(event), msg_id=event.msg_id, deadline_s=self._deadline_s
        )
        if self._pipeline is not None:  # in flight with the others (tasks start, so write, in this order)
            self._pipeline.append(asyncio.create_task(sent))
        else:
            await sent
        return event

    @contextlib.asynccontextmanager
    async def pipelined(self) -> AsyncIterator[None]:
        """Events published in this block go out without waiting for each one's acknowledgement, so that
        several cost one round trip (and reach the projector together); they are sent in order on one
        connection, and the projector stores a (run, attempt)'s events in seq order whatever the order they
        land in. The block's end waits for every one of them; a failed one is raised there."""
        assert self._pipeline is None, "pipelined blocks do not nest"
        self._pipeline = []
        try:
            yield
        finally:
            pending, self._pipeline = self._pipeline, None
            outcomes = await asyncio.gather(*pending, return_exceptions=True)
        _raise_first(outcomes)

    async def _flush_locked(self) -> None:
        if not self._lines:
            return
        lines, self._lines, self._line_bytes = self._lines, [], 0
        await self._send(lambda seq: RunLog(**self._common(), seq=seq, lines=lines))

    async def _publish(self, build: Callable[[int], RunEvent], *, lifecycle: bool = False) -> RunEvent:
        if not lifecycle:  # the executor hears of a lost log batch; the agent still reports how the run ended
            self._raise_flush_error()
        async with self._lock:
            await self._flush_locked()
            return await self._send(build)

    def _raise_flush_error(self) -> None:
        if self._error is not None:
            raise PublishError(f"an earlier batch of log lines was not published: {self._error}") from self._error

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(LOG_FLUSH_S)
        except asyncio.CancelledError:
            return
        # From here on the timer is spent (close() no longer cancels it; lines queued now start a new one).
        self._flusher = None
        try:
            async with self._lock:
                await self._flush_locked()
        except PublishError as exc:
            log.error("run %s attempt %s: %s", self._job.run_id, self._attempt, exc)
            self._error = exc

    # -- Emitter ---------------------------------------------------------------------------------------
    async def log(self, text: str, stream: Literal["stdout", "stderr", "system"] = "stdout") -> None:
        self._raise_flush_error()
        if len(text) > LOG_LINE_MAX_CHARS:
            text = text[:LOG_LINE_MAX_CHARS] + " …[truncated]"
        self._lines.append(LogLine(stream=stream, text=text))
        self._line_bytes += len(text) + 32
        if len(self._lines) >= LOG_BATCH_LINES or self._line_bytes >= LOG_BATCH_BYTES:
            async with self._lock:
                await self._flush_locked()
        elif self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later(), name=f"log-flush-{self._job.run_id}")

    async def progress(
        self,
        progress: float,
        *,
        step: int | None = None,
        total: int | None = None,
        epoch: int | None = None,
        epochs: int | None = None,
        batch: int | None = None,
        batches: int | None = None,
        losses: dict[str, float] | None = None,
        eta_s: float | None = None,
        message: str | None = None,
    ) -> None:
        await self._publish(
            lambda seq: RunProgress(
                **self._common(),
                seq=seq,
                progress=progress,
                step=step,
                total=total,
                epoch=epoch,
                epochs=epochs,
                batch=batch,
                batches=batches,
                losses=losses or {},
                eta_s=eta_s,
                message=message,
            )
        )

    async def metrics(self, metrics: dict[str, float], *, step: int | None = None, epoch: int | None = None) -> None:
        await self._publish(lambda seq: RunMetrics(**self._common(), seq=seq, metrics=metrics, step=step, epoch=epoch))

    async def checkpoint(
        self,
        uri: str,
        *,
        step: int | None = None,
        epoch: int | None = None,
        size_bytes: int | None = None,
        resumable: bool = True,
        meta: dict[str, Any] | None = None,
    ) -> str:
        event = await self._publish(
            lambda seq: RunCheckpoint(
                **self._common(),
                seq=seq,
                uri=uri,
                step=step,
                epoch=epoch,
                size_bytes=size_bytes,
                resumable=resumable,
                meta=meta or {},
            )
        )
        assert isinstance(event, RunCheckpoint)
        if self.on_checkpoint is not None:
            self.on_checkpoint(event.checkpoint_id)
        return event.checkpoint_id

    async def artifact(
        self,
        name: str,
        uri: str,
        *,
        kind: str = "file",
        size_bytes: int | None = None,
        media_type: str | None = None,
        meta: dict[str, Any] | None = None,
        artifact_id: str | None = None,
    ) -> str:
        """Record an artifact; returns its id (`artifact_id` when given: one promised already)."""
        ids = {"artifact_id": artifact_id} if artifact_id else {}
        event = await self._publish(
            lambda seq: RunArtifact(
                **self._common(),
                **ids,
                seq=seq,
                name=name,
                uri=uri,
                kind=kind,
                size_bytes=size_bytes,
                media_type=media_type,
                meta=meta or {},
            )
        )
        assert isinstance(event, RunArtifact)
        return event.artifact_id

    # -- lifecycle (used by the agent) -----------------------------------------------------------------
    async def claimed(self, *, host: str, device: str) -> None:
        await self._publish(
            lambda seq: RunClaimed(**self._common(), seq=seq, host=host, device=device), lifecycle=True
        )

    async def started(self, *, resumed_from: str | None = None) -> None:
        await self._publish(
            lambda seq: RunStarted(**self._common(), seq=seq, resumed_from=resumed_from), lifecycle=True
        )

    async def completed(self, *, exit_code: int | None = 0, result: dict[str, Any] | None = None) -> None:
        await self._publish(
            lambda seq: RunCompleted(**self._common(), seq=seq, exit_code=exit_code, result=result), lifecycle=True
        )

    async def failed(
        self, *, cause: FailureCause, error_type: str, message: str, exit_code: int | None = None
    ) -> None:
        await self._publish(
            lambda seq: RunFailed(
                **self._common(), seq=seq, cause=cause, error_type=error_type, message=message, exit_code=exit_code
            ),
            lifecycle=True,
        )

    async def canceled(self, *, reason: str = "requested", checkpoint_id: str | None = None) -> None:
        await self._publish(
            lambda seq: RunCanceled(**self._common(), seq=seq, reason=reason, checkpoint_id=checkpoint_id),
            lifecycle=True,
        )

    async def paused(self, *, requested_by: str | None = None) -> None:
        await self._publish(lambda seq: RunPaused(**self._common(), seq=seq, requested_by=requested_by),
                            lifecycle=True)

    async def unpaused(self, *, requested_by: str | None = None, paused_s: float | None = None) -> None:
        await self._publish(lambda seq: RunUnpaused(**self._common(), seq=seq, requested_by=requested_by,
                                                    paused_s=paused_s), lifecycle=True)

    async def requeued(self, *, reason: str) -> None:
        await self._publish(lambda seq: RunRequeued(**self._common(), seq=seq, reason=reason), lifecycle=True)

    async def close(self) -> None:
        """Send the log lines still queued (the terminal event does this too) and stop the flush timer."""
        if self._flusher is not None:  # still waiting: send its lines now instead
            self._flusher.cancel()
            self._flusher = None
        async with self._lock:
            await self._flush_locked()
