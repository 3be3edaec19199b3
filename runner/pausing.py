"""Pause and unpause of a run in place (core NATS request/reply on `Subjects.run_pause(run_id)`).

The runner running the run answers; others ignore the request. Pausing asks the run's executor to stop
(`RunContext.pauser`: SIGSTOP of the process group, or a YOLO training's next batch boundary) and publishes
run.paused; the job stays claimed (the agent's progress acks go on), its leases and attempt claim stay held, so
it keeps its runner and its place against the limits. A run paused longer than `pause_max_s` is continued and
canceled (reason `pause_timeout`), its checkpoints kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from runner.executors.base import ExecutorError, RunContext
from runner.publisher import PublishError
from shared.contracts.fleet import RunPauseReply, RunPauseRequest, pause_request_decoder
from shared.settings import Settings
from shared.subjects import Subjects

log = logging.getLogger(__name__)


class PausableJob(Protocol):
    """What of a running job pausing needs (the agent's `ActiveJob`)."""

    ctx: RunContext

    @property
    def publisher(self) -> _Publisher: ...


class _Publisher(Protocol):
    async def paused(self, *, requested_by: str | None = None) -> None: ...

    async def unpaused(self, *, requested_by: str | None = None, paused_s: float | None = None) -> None: ...


class PauseControl:
    def __init__(self, nc: NATS, subjects: Subjects, settings: Settings, runner_id: str,
                 lookup: Callable[[str], PausableJob | None]) -> None:
        self._nc = nc
        self._subjects = subjects
        self._settings = settings
        self._runner_id = runner_id
        self._lookup = lookup
        self._sub: Subscription | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._since: dict[str, float] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._subjects.run_pause_all, cb=self._on_request)

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    def forget(self, run_id: str) -> None:
        """The run's attempt ended here: no pause timer any more."""
        if timer := self._timers.pop(run_id, None):
            timer.cancel()
        self._since.pop(run_id, None)
        self._locks.pop(run_id, None)

    async def _on_request(self, msg: Msg) -> None:
        run_id = msg.subject.rsplit(".", 1)[-1]
        job = self._lookup(run_id)
        if job is None:
            return  # not running here: the runner that runs it answers
        try:
            request = pause_request_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reply = self._reply(job, error=f"bad pause request: {exc}")
        else:
            try:
                async with self._locks.setdefault(run_id, asyncio.Lock()):
                    reply = await self._apply(job, request)
            except Exception as exc:  # noqa: BLE001 - answered, not lost in the subscription's callback
                log.exception("run %s: %s failed", run_id, request.action)
                reply = self._reply(job, error=f"{request.action} failed: {exc!r}")
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(msgspec.json.encode(reply))

    def _reply(self, job: PausableJob, *, error: str | None = None, conflict: bool = False) -> RunPauseReply:
        return RunPauseReply(run_id=job.ctx.run_id, runner_id=self._runner_id, paused=job.ctx.paused, error=error,
                             conflict=conflict)

    async def _apply(self, job: PausableJob, request: RunPauseRequest) -> RunPauseReply:
        ctx = job.ctx
        if ctx.cancel_requested.is_set():
            return self._reply(job, error="the run is stopping", conflict=True)
        try:
            if request.action == "pause":
                if ctx.paused:
                    return self._reply(job, error="the run is paused already", conflict=True)
                if ctx.pauser is None:
                    return self._reply(job, error=f"a {ctx.job.spec.kind} run cannot be paused now (it pauses once "
                                                  "its command or training loop runs)", conflict=True)
                await ctx.pauser.pause()
                ctx.paused = True
                self._since[ctx.run_id] = time.monotonic()
                log.info("run %s attempt %d: paused", ctx.run_id, ctx.attempt)
                await job.publisher.paused(requested_by=request.requested_by)
                if self._settings.pause_max_s > 0:
                    self._timers[ctx.run_id] = asyncio.create_task(self._expire(job), name=f"pause {ctx.run_id}")
            else:
                if not ctx.paused:
                    return self._reply(job, error="the run is not paused", conflict=True)
                paused_s = await self._continue(job)
                log.info("run %s attempt %d: unpaused after %.1f s", ctx.run_id, ctx.attempt, paused_s)
                await job.publisher.unpaused(requested_by=request.requested_by, paused_s=round(paused_s, 3))
        except PublishError as exc:
            log.error("run %s: the %s event could not be published (%s)", ctx.run_id, request.action, exc)
            return self._reply(job, error=f"the {request.action} event could not be published: {exc}")
        except (ExecutorError, OSError) as exc:
            log.error("run %s: %s failed: %s", ctx.run_id, request.action, exc)
            return self._reply(job, error=f"{request.action} failed: {exc}")
        return self._reply(job)

    async def _continue(self, job: PausableJob) -> float:
        ctx = job.ctx
        if timer := self._timers.pop(ctx.run_id, None):
            if timer is not asyncio.current_task():
                timer.cancel()
        assert ctx.pauser is not None
        await ctx.pauser.resume()
        ctx.paused = False
        return time.monotonic() - self._since.pop(ctx.run_id, time.monotonic())

    async def _expire(self, job: PausableJob) -> None:
        await asyncio.sleep(self._settings.pause_max_s)
        ctx = job.ctx
        async with self._locks.setdefault(ctx.run_id, asyncio.Lock()):
            if not ctx.paused or self._lookup(ctx.run_id) is not job:
                return
            log.warning("run %s attempt %d: paused longer than %g s; canceling it (checkpoints kept)", ctx.run_id,
                        ctx.attempt, self._settings.pause_max_s)
            await ctx.emit.log(f"paused longer than pause_max_s={self._settings.pause_max_s:g} s: canceling",
                               "system")
            ctx.pause_expired = True
            await self._continue(job)  # a stopped process would not see its SIGTERM; a training must wake up
            ctx.cancel_requested.set()
