"""The runner agent: claims jobs of one pool, runs each on this runner's device, reports and acknowledges.

One pull consumer per pool is shared by all its runners; a runner fetches a job only when one of its slots is
free. Per job: run.claimed, run.started, the executor's own events, then the terminal event, and only then the
ack. While the job runs, `msg.in_progress()` keeps JetStream from handing it to another runner; a runner that
dies stops sending it, so the job is delivered again (the next attempt) once `ack_wait` has passed.

Signatures: before anything else, a job must carry the gateway's signature over its subject and bytes
(`shared.jobsign`); one that does not is terminated (`term()`, never retried), logged as critical, and neither
runs nor gets an event. Only `runner_allow_unsigned_jobs` (insecure) lets a runner start without a verify key.

Scheduling: a job that does not fit this runner (its kind, device, GPU memory or count: `Job.requirements`)
is handed back at once (`nak`) for another runner of the pool. Note that JetStream counts such a hand-back as
a delivery: attempt numbers are delivery numbers and may skip, and hand-backs count against `job_max_deliver`.
A job whose leases (`Job.limits`, `runner.leases`) cannot all be taken now (typically the next attempt of a
run whose runner died: its leases lapsed and another run took the slot) waits for them instead: run.requeued,
the delivery kept (`in_progress`, no delivery used up), the leases taken as soon as they are free. The
gateway's dispatcher publishes a job only when it fits a live runner and the limits have room: both are rare.

Stopping (`stop()`, SIGTERM): stop fetching, wait `shutdown_grace_s` for running jobs, cancel what is left
(or give it back, `shutdown_action = "requeue"`), publish their final events, drain the connection.

Draining (`drain()`, or a `drain` request on `Subjects.runner_control(runner_id)`): stop fetching, let running
jobs finish, keep heartbeating with state `draining`; `resume()` takes work again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Literal

import anyio.to_thread
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from runner.advice import serve_advice
from runner.claims import CALL_TIMEOUT_S, AttemptClaims, Claim, ClaimRecord, Standby, new_instance
from runner.control import CancelListener
from runner.devices import DeviceError, describe_device, describe_devices, parse_device, pick_device
from runner.executors.base import Canceled, Completed, Executor, Failed, Outcome, RunContext
from runner.executors.registry import ExecutorRegistry, ExecutorUnavailable, spec_kind
from runner.gpu_sampler import cuda_indices
from runner.leases import RunLeases
from runner.pausing import PauseControl
from runner.preflight import serve_preflight
from runner.publisher import PUBLISH_DEADLINE_S, PUBLISH_TIMEOUT_S, RETRYABLE, PublishError, RunPublisher
from runner.targets import load_targets
from runner.yolo.serve_predict import PredictService, serve_predict
from runner.yolo.service import YoloService, serve_yolo_service
from shared import logsetup
from shared.bus import connect, ensure_pool_consumer, ensure_topology
from shared.contracts import FailureCause, Job, ResumeFrom, RunCheckpoint, RunnerHeartbeat, event_decoder, job_decoder
from shared.contracts.common import TOKEN_RE
from shared.contracts.events import TERMINAL_EVENT_TYPES, DeviceInfo, HostStats
from shared.contracts.fleet import RunnerControlReply, control_decoder
from shared.hoststats import sample_host
from shared.jobsign import JobSignatureError, JobVerifier
from shared.pull import PullConsumer
from shared.scheduling import misfit
from shared.settings import Settings
from shared.subjects import Subjects
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 1.0
"""A fetch waits this long for a job; a stopping runner finishes the fetch in flight (so no job is stranded)."""
EXECUTOR_STOP_SLACK_S = 5.0
"""After a cancel, an executor gets cancel_grace_s plus this long to return before its task is cancelled."""
ACK_DEADLINE_S = 10.0
MISFIT_NAK_S = 0.5
"""A job this runner cannot take goes back for this long (another runner of the pool takes it meanwhile)."""
LEASE_RETRY_S = 2.0
"""How long a runner keeps trying to take a job's leases (a finishing run may not have released its own yet)
before it hands the job back."""
LEASE_POLL_S = 0.2
LEASE_WAIT_POLL_S = 1.0
"""How often a job that waits for its leases tries them again."""
SHUTDOWN_REASON = "runner shutdown"
PREDECESSOR_TRIES = 5
"""How often a starting runner tries to read and free its earlier process's claims before leaving them to lapse."""
OWNER_BACK_NAK_S = 1.0
"""A standby on a detached claim whose runner id is live again hands its delivery back for this long."""
OWNER_BACK_PAUSE_S = 3.0
"""... and fetches nothing for this long, so the owner's waiting fetch gets the redelivery (each delivery counts
against `job_max_deliver`)."""


class RunnerError(RuntimeError):
    """The runner stopped because one of its parts failed."""


def default_runner_id(pool: str, device: str) -> str:
    """`<hostname>-<pool>-<device>-<pid>`, made a valid subject token (at most 64 characters, pid kept)."""
    raw = f"{socket.gethostname()}-{pool}-{device.replace(':', '')}-{os.getpid()}"
    token = re.sub(r"[^A-Za-z0-9_-]", "-", raw)[-64:].lstrip("-_")
    return token if TOKEN_RE.match(token) else f"runner-{os.getpid()}"


def job_verifier(settings: Settings) -> JobVerifier | None:
    """The verifier of the gateway's job signatures; None only when unsigned jobs are explicitly allowed.
    Raises ValueError (`KeyFileError`) when no key is set, or it cannot be read."""
    if settings.job_verify_key:
        return JobVerifier.load(settings.job_verify_key)
    if settings.runner_allow_unsigned_jobs:
        log.warning("INSECURE: TRAINFORGE_RUNNER_ALLOW_UNSIGNED_JOBS is on: this runner runs any job anyone who may "
                    "publish on the bus sends, without checking the gateway's signature")
        return None
    raise ValueError(
        "no job verify key: set TRAINFORGE_JOB_VERIFY_KEY to the gateway's public key (base64, or a file holding "
        "it; `trainforge up` writes <state_dir>/secrets/job-verify.pub), so that this runner refuses jobs the "
        "gateway did not sign; or, INSECURE, set TRAINFORGE_RUNNER_ALLOW_UNSIGNED_JOBS=true to run unsigned jobs"
    )


@dataclass
class ActiveJob:
    msg: Msg
    ctx: RunContext
    publisher: RunPublisher
    leases: RunLeases | None = None
    claim: Claim | None = None
    """This attempt's claim on the run (`runner.claims`): held from before run.claimed until after the ack."""
    superseded: str | None = None
    """Why this attempt stopped because it no longer holds the run (another attempt took it over, or the bus
    was unreachable for `attempt_hold_s`): it publishes no terminal event then."""
    shutdown: bool = False
    """Canceled because the runner stops (not because someone asked)."""
    detached_holder: str | None = None
    """The runner id whose detached claim this attempt stood by on (`runner.claims`)."""
    remembering: asyncio.Future[None] | None = None
    """The claims ledger noting this run (in a worker thread, while the attempt goes on to its leases and
    run.claimed): done before the command starts, and before the ledger forgets the run."""

    @property
    def job(self) -> Job:
        return self.ctx.job


class RunnerAgent:
    """Runs the jobs of `pool` on `device`, at most `slots` at a time. `await run()` until `stop()`."""

    def __init__(
        self,
        settings: Settings,
        pool: str,
        device: str = "cpu",
        slots: int = 1,
        runner_id: str | None = None,
        *,
        registry: ExecutorRegistry | None = None,
    ) -> None:
        self.subjects = Subjects(settings.bus_prefix)
        self.subjects.job(pool)  # validates the pool name
        parse_device(device)
        if settings.lease_ttl_s <= 2 * settings.runner_heartbeat_s:
            raise ValueError(f"lease_ttl_s ({settings.lease_ttl_s}) must be more than twice runner_heartbeat_s "
                             f"({settings.runner_heartbeat_s}): leases are renewed on every heartbeat")
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.runner_id = runner_id or default_runner_id(pool, device)
        self.subjects.runner_heartbeat(self.runner_id)  # validates the runner id
        if settings.shutdown_action not in ("cancel", "requeue"):
            raise ValueError(f"shutdown_action must be cancel or requeue, got {settings.shutdown_action!r}")
        self.settings = settings
        self.verifier = job_verifier(settings)
        self.pool = pool
        self.device = device
        self.slots = slots
        self.host = socket.gethostname()
        self.instance = new_instance()
        """Unique per process: heartbeats and attempt claims carry it, so a restart under the same id shows."""
        self._claims: AttemptClaims | None = None
        self._released_runs: list[str] = []
        self._target_names: list[str] = []
        """The container targets of the targets file (sent with every heartbeat)."""
        self._beat_lock = asyncio.Lock()
        self._extra_beat_due = False
        """An extra heartbeat is on its way and has not read the runner's state yet: later changes ride on it."""
        self.registry = registry or ExecutorRegistry(settings)
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._control: CancelListener | None = None
        self._preflight: Subscription | None = None
        self._runner_control: Subscription | None = None
        self._pausing: PauseControl | None = None
        self._advice: Subscription | None = None
        self._yolo_service: YoloService | None = None
        self._predict: PredictService | None = None
        self._devices: list[DeviceInfo] = []
        self._host_stats: HostStats | None = None
        self._draining = False
        self._drain_changed = asyncio.Event()
        self._fetch_idle = asyncio.Event()
        self._fetch_idle.set()
        self._leases_kv: KeyValue | None = None
        self._heartbeat_seq = 0
        self._stop_requested = asyncio.Event()
        self._hurry = asyncio.Event()
        self._finished = asyncio.Event()
        self.ready = asyncio.Event()
        """Set once the runner is subscribed (jobs, cancel, preflight) and about to take work."""
        self._running = False
        self._canceling_all = False
        self._stopped = False
        self._jobs: set[asyncio.Task[None]] = set()
        self._active: dict[str, ActiveJob] = {}
        self._finishing: set[asyncio.Task[None]] = set()
        self._claim_keepers: dict[str, asyncio.Task[None]] = {}
        self._fetch_paused_until = 0.0

    @property
    def takeover_margin_s(self) -> float:
        """How much longer than `attempt_hold_s` a claim must be silent before a new attempt takes it over: the
        time its holder needs to notice (a heartbeat, a KV call that times out) and stop its job."""
        s = self.settings
        return s.cancel_grace_s + EXECUTOR_STOP_SLACK_S + s.runner_heartbeat_s + 2 * CALL_TIMEOUT_S

    async def _release_predecessors(self) -> None:
        """Claims an earlier process of this runner id held: it is dead, its jobs' processes with it. Free them
        and nak their deliveries, so the next attempts start now; the first heartbeat names them. A detached
        claim (its command left running on this host) is adopted, or, when its run has ended meanwhile, its
        command is ended and the claim deleted. The bus may be slow right after a start: tried a few times."""
        assert self._claims is not None
        for attempt in range(1, PREDECESSOR_TRIES + 1):
            try:
                for record, revision in await self._claims.predecessors():
                    await self._release_predecessor(record, revision)
                return
            except (*RETRYABLE, nats.errors.Error) as exc:
                if attempt == PREDECESSOR_TRIES:
                    log.warning("runner %s: earlier claims not checked (%r); they lapse by themselves",
                                self.runner_id, exc)
                    return
                log.info("runner %s: checking earlier claims failed (%r); trying again", self.runner_id, exc)
                await asyncio.sleep(attempt)

    async def _release_predecessor(self, record: ClaimRecord, revision: int) -> None:
        assert self._claims is not None
        if record.detached and await self._already_ended(record.project_id, record.run_id):
            from runner.executors.docker import end_left_running  # noqa: PLC0415 - docker runners only

            what = await end_left_running(self.settings, record.run_id)
            log.warning("run %s ended while attempt %d of this runner's previous process had its command "
                        "left running: %s", record.run_id, record.attempt, what)
            await self._claims.drop(record, revision)
            return
        if record.detached:
            log.warning("run %s: attempt %d of this runner's previous process left its command running; "
                        "adopting its claim (the next delivery reattaches here)", record.run_id, record.attempt)
        else:
            log.warning("run %s: attempt %d ended with this runner's previous process; handing it on",
                        record.run_id, record.attempt)
        await self._claims.release_predecessor(record, revision)
        if record.run_id not in self._released_runs:
            self._released_runs.append(record.run_id)

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        if self._stopped:
            return "stopped"
        if self._stop_requested.is_set() or self._draining:
            return "draining"
        return "busy" if self._active else "idle"

    async def drain(self) -> str:
        """Take no new job (running ones finish); returns the state. Jobs fetched meanwhile are given back."""
        self._draining = True
        self._drain_changed.set()
        with contextlib.suppress(TimeoutError):  # a fetch in flight ends within FETCH_TIMEOUT_S
            await asyncio.wait_for(self._fetch_idle.wait(), FETCH_TIMEOUT_S + 1.0)
        await self._heartbeat_now()
        return self.state

    async def resume(self) -> str:
        """Undo `drain()` (not a stop); returns the state."""
        self._draining = False
        self._drain_changed.set()
        await self._heartbeat_now()
        return self.state

    @property
    def active_runs(self) -> list[str]:
        return sorted(self._active)

    def request_stop(self) -> None:
        """Begin a graceful stop (safe from a signal handler); a second call skips the grace period."""
        if self._stop_requested.is_set():
            self._hurry.set()
        self._stop_requested.set()

    async def stop(self) -> None:
        """Stop gracefully and wait until the runner has drained."""
        self.request_stop()
        if self._running:
            await self._finished.wait()

    async def run(self) -> None:
        """Connect, claim and run jobs until stopped. Raises `RunnerError` if a part of the runner failed."""
        if self._running or self._finished.is_set():
            raise RuntimeError("a RunnerAgent runs once")
        self._running = True
        token = logsetup.bind(runner_id=self.runner_id)
        try:
            await self._run()
        finally:
            logsetup.unbind(token)
            self._running = False
            self._finished.set()

    async def _run(self) -> None:
        self._devices = await anyio.to_thread.run_sync(describe_devices, self.device)
        self._nc = await connect(self.settings, name=f"trainforge-runner {self.runner_id}")
        sub: PullConsumer | None = None
        try:
            self._js = self._nc.jetstream()
            self.registry.bind_bus(self._js)
            await ensure_topology(self._js, self.settings)
            self._leases_kv = await self._js.key_value(self.subjects.leases_bucket)
            self._claims = AttemptClaims(
                self._js, await self._js.key_value(self.subjects.attempts_bucket), self.subjects,
                runner_id=self.runner_id, instance=self.instance, hold_s=self.settings.attempt_hold_s,
                takeover_margin_s=self.takeover_margin_s,
                ledger=self.settings.state_dir / "runners" / f"{self.runner_id}.claims",
            )
            await self._release_predecessors()
            durable = await ensure_pool_consumer(self._js, self.settings, self.pool)
            # shared.pull, not nats-py's fetch: a job reaches `_handle` about 2 ms sooner (no task, uuid and
            # wait_for per fetch), and a job a cancelled fetch brought is handed back at the stop, not left
            # to its ack wait
            sub = await PullConsumer.bind(self._nc, self.subjects.jobs_stream, durable)
            self._control = CancelListener(self._nc, self._js, self.subjects, self._on_cancel)
            await self._control.start()
            if self.settings.runner_targets_file is not None:
                targets = await anyio.to_thread.run_sync(load_targets, self.settings.runner_targets_file)
                self._target_names = sorted(targets.targets)
                self._preflight = await serve_preflight(self._nc, self.settings, self.pool, targets)
            self._runner_control = await self._nc.subscribe(
                self.subjects.runner_control(self.runner_id), cb=self._on_control)
            self._pausing = PauseControl(self._nc, self.subjects, self.settings, self.runner_id, self._active.get)
            await self._pausing.start()
            self._advice = await serve_advice(self._nc, self.settings, self.pool, self.device, self._advice_context)
            self._yolo_service = await serve_yolo_service(self._nc, self.settings, self.runner_id)
            self._predict = await serve_predict(self._nc, self._js, self.settings, self.runner_id, self.pool,
                                                self.device)
            log.info(
                "runner %s: pool %s, device %s, %d slot(s), kinds %s",
                self.runner_id, self.pool, self.device, self.slots, ", ".join(self.registry.kinds()) or "none",
            )
            self.ready.set()
            await self._serve(sub)
        finally:
            for task in self._jobs:  # only left when we are cancelled ourselves: stop their processes
                task.cancel()
            await asyncio.gather(*self._jobs, *self._finishing, return_exceptions=True)
            await self.registry.aclose()
            # Our own subscriptions first: a drain waits for their queues, which a fetch that found a stale
            # status message leaves unfinished (nats-py), so draining them would take its full timeout.
            closers = (
                sub.unsubscribe if sub else None,
                self._control.close if self._control else None,
                self._preflight.unsubscribe if self._preflight else None,
                self._runner_control.unsubscribe if self._runner_control else None,
                self._pausing.close if self._pausing else None,
                self._advice.unsubscribe if self._advice else None,
                self._yolo_service.stop if self._yolo_service else None,
                self._predict.stop if self._predict else None,
            )
            for close in closers:
                if close is not None:
                    with contextlib.suppress(nats.errors.Error):
                        await close()
            try:
                await self._nc.drain()
            except Exception as exc:  # noqa: BLE001 - closing anyway
                log.warning("nats: drain failed (%r); closing", exc)
                await self._nc.close()

    async def _serve(self, sub: PullConsumer) -> None:
        assert self._control is not None
        stop_waiter = asyncio.create_task(self._stop_requested.wait())
        fetching = asyncio.create_task(self._fetch_loop(sub, stop_waiter), name="fetch loop")
        helpers = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._control.listen(), name="cancel listener"),
        ]
        try:
            await asyncio.wait([stop_waiter, fetching, *helpers], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # cancelled ourselves: leave no loop running behind
            for task in (stop_waiter, fetching, *helpers):
                task.cancel()
            raise
        failure: RunnerError | None = None
        stopping = self._stop_requested.is_set()
        for task in [fetching, *helpers]:
            if not task.done():
                continue
            if task is fetching and stopping and not task.cancelled() and task.exception() is None:
                continue  # it ended because we asked it to
            exc = task.exception() if not task.cancelled() else asyncio.CancelledError()
            failure = RunnerError(f"runner {self.runner_id}: {task.get_name()} stopped: {exc!r}")
            log.critical("%s; stopping the runner", failure, exc_info=exc)
        self._stop_requested.set()
        await self._publish_heartbeat()
        await asyncio.gather(fetching, return_exceptions=True)
        await self._drain_jobs()
        await cancel_and_wait(*helpers)  # the heartbeat's publish may swallow one cancel (shared.tasks)
        self._stopped = True
        await self._publish_heartbeat()
        log.info("runner %s stopped", self.runner_id)
        if failure is not None:
            raise failure

    async def _drain_jobs(self) -> None:
        if self._jobs and not self._hurry.is_set():
            log.info("runner %s: letting %d job(s) finish (up to %g s)", self.runner_id, len(self._jobs),
                     self.settings.shutdown_grace_s)
            deadline = time.monotonic() + self.settings.shutdown_grace_s
            hurry = asyncio.create_task(self._hurry.wait())
            while self._jobs and not hurry.done() and (left := deadline - time.monotonic()) > 0:
                await asyncio.wait([*self._jobs, hurry], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            hurry.cancel()
        if self._jobs:
            self._canceling_all = True
            for active in self._active.values():
                self._cancel_for_shutdown(active)
            log.warning("runner %s: stopping %d job(s) still running (%s)", self.runner_id, len(self._jobs),
                        self.settings.shutdown_action)
            await asyncio.wait(self._jobs)
        if self._finishing:
            await asyncio.wait(self._finishing)

    def _cancel_for_shutdown(self, active: ActiveJob) -> None:
        active.shutdown = True
        ctx = active.ctx
        ctx.let_go = self.settings.shutdown_action == "requeue" and ctx.attempt < self.settings.job_max_deliver
        ctx.cancel_requested.set()

    # -- claiming jobs ---------------------------------------------------------------------------------
    async def _fetch_loop(self, sub: PullConsumer, stop_waiter: asyncio.Task[bool]) -> None:
        while not self._stop_requested.is_set():
            while (len(self._jobs) >= self.slots or self._draining) and not self._stop_requested.is_set():
                self._drain_changed.clear()
                changed = asyncio.create_task(self._drain_changed.wait())
                try:
                    await asyncio.wait([*self._jobs, stop_waiter, changed], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
            if self._stop_requested.is_set():
                return
            if (pause := self._fetch_paused_until - time.monotonic()) > 0:  # a run handed back to its owner
                await asyncio.wait([stop_waiter], timeout=pause)
                continue
            self._fetch_idle.clear()
            try:
                msgs = await sub.fetch(1, timeout=FETCH_TIMEOUT_S)
            except nats.errors.TimeoutError:
                continue
            except nats.errors.Error as exc:  # e.g. while reconnecting: wait a little, never busy-loop
                log.warning("runner %s: fetch failed (%r)", self.runner_id, exc)
                await asyncio.wait([stop_waiter], timeout=1.0)
                continue
            finally:
                self._fetch_idle.set()
            for msg in msgs:
                if self._stop_requested.is_set() or self._draining:  # arrived while stopping: give it back
                    await msg.nak()
                    continue
                task = asyncio.create_task(self._handle(msg), name=f"job {msg.metadata.sequence.stream}")
                self._jobs.add(task)
                task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._jobs.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.critical("runner %s: job task crashed", self.runner_id, exc_info=task.exception())

    async def _handle(self, msg: Msg) -> None:
        if self.verifier is not None:
            try:
                self.verifier.verify(msg.subject, msg.data, msg.headers)
            except JobSignatureError as exc:
                log.critical(
                    "runner %s: REFUSED a job the gateway did not sign (stream seq %s on %s): %s; "
                    "terminating it, nothing runs. Someone with bus credentials published it: check who may publish on %s",
                    self.runner_id, msg.metadata.sequence.stream, msg.subject, exc, self.subjects.jobs_all,
                )
                await msg.term()
                return
        try:
            job = job_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error(
                "runner %s: undecodable job (stream seq %s on %s): %s; terminating it, it will not be retried",
                self.runner_id, msg.metadata.sequence.stream, msg.subject, exc,
            )
            await msg.term()
            return
        if job.run_id in self._active:  # delivered again while we still run it (missed heartbeats)
            log.warning("run %s delivered again while running here; ignoring the duplicate", job.run_id)
            return
        if (device := await self._device_for(job)) is None:
            await msg.nak(delay=MISFIT_NAK_S)
            return
        attempt = msg.metadata.num_delivered
        # this task's own context (one task per delivery): every line logged for the job, by its helper tasks
        # and threads too, carries the run, attempt and request ids
        logsetup.bind(run_id=job.run_id, attempt=attempt, request_id=job.request_id)
        assert self._js is not None
        publisher = RunPublisher(self._js, self.subjects, job, attempt=attempt, runner_id=self.runner_id,
                                 deadline_s=max(PUBLISH_DEADLINE_S, self.settings.attempt_hold_s))
        ctx = RunContext(
            job=job,
            attempt=attempt,
            runner_id=self.runner_id,
            device=device,
            settings=self.settings,
            emit=publisher,
            workdir=self.settings.work_root / job.run_id,
        )
        publisher.on_checkpoint = lambda checkpoint_id: setattr(ctx, "last_checkpoint_id", checkpoint_id)
        active = ActiveJob(msg=msg, ctx=ctx, publisher=publisher)
        ctx.holds_claim = lambda: self._holds_claim(active)
        self._active[job.run_id] = active
        self._beat_soon()
        if self._canceling_all:
            self._cancel_for_shutdown(active)
        keepalive = asyncio.create_task(self._keep_claimed(msg), name=f"keep-claimed {job.run_id}")
        try:
            try:
                outcome = await self._attempt(active)
            finally:
                keepalive.cancel()
            if active.leases is not None:  # the work is over: free its slots before reporting
                await active.leases.release()
            if outcome is not None:
                await self._finish(active, outcome)
        finally:
            del self._active[job.run_id]
            if self._pausing is not None:
                self._pausing.forget(job.run_id)
            self._beat_soon()
            if active.leases is not None:
                await asyncio.shield(active.leases.release())
            await asyncio.shield(self._release_claim(active))

    async def _device_for(self, job: Job) -> str | None:
        """The device the job runs on here; None (logged) when it does not fit this runner now."""
        why = misfit(spec_kind(job.spec), job.requirements, self._devices, self.registry.kinds())
        if why is not None:
            log.info("run %s: this runner %s; handing the job back", job.run_id, why)
            return None
        if parse_device(self.device)[0] != "auto":
            return self.device
        devices = await anyio.to_thread.run_sync(describe_devices, self.device)
        busy = {i for active in self._active.values() for i in cuda_indices(active.ctx.device)}
        device = pick_device(devices, busy, job.requirements)
        if device is None:
            log.info("run %s: no GPU of this host is free now; handing the job back", job.run_id)
        return device

    async def _take_leases(self, active: ActiveJob, patience: float = LEASE_RETRY_S) -> str | None:
        """Take the run's leases, retrying for `patience` s; None when held, else which limit is full."""
        assert self._leases_kv is not None
        leases = RunLeases(self._leases_kv, active.job, runner_id=self.runner_id, attempt=active.ctx.attempt)
        deadline = time.monotonic() + patience
        while True:
            try:
                why = await leases.acquire()
            except RETRYABLE as exc:
                await leases.release()
                why = f"the leases bucket cannot be reached ({exc!r})"
            if why is None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(LEASE_POLL_S)
        if why is None:
            active.leases = leases
        return why

    async def _wait_for_leases(self, active: ActiveJob, full: str) -> Literal["held", "canceled", "stopping"]:
        """A limit is full: report the run queued again (run.requeued) and keep the delivery (in_progress, the
        claim held), taking the leases as soon as they are free. Handing the job back instead would use up a
        delivery per try (`job_max_deliver`), and the next attempt of a run whose runner died would fail
        while the run that took its lapsed slot runs."""
        job, ctx = active.job, active.ctx
        log.info("run %s attempt %d: %s; waiting for a free slot", job.run_id, ctx.attempt, full)
        await active.publisher.requeued(reason=f"waiting: {full}")
        while True:
            stop = asyncio.create_task(self._stop_requested.wait())
            await asyncio.wait([stop], timeout=LEASE_WAIT_POLL_S)
            stop.cancel()
            if self._stop_requested.is_set():
                await self._release_claim(active)  # before the nak: the next attempt need not stand by
                await active.msg.nak()
                return "stopping"
            if ctx.cancel_requested.is_set() or await self._cancel_recorded(job.run_id):
                return "canceled"
            if await self._take_leases(active, patience=0.0) is None:
                log.info("run %s attempt %d: leases taken after waiting", job.run_id, ctx.attempt)
                return "held"

    async def _take_claim(self, active: ActiveJob) -> Literal["held", "canceled", "gone"]:
        """Hold the run's attempt claim; while another attempt may still run it, stand by (the delivery kept
        with `in_progress`, nothing started). "gone" when there is nothing to run: the run ended meanwhile
        (acknowledged), this runner stops, or the claim is detached and its owner is live again (handed back).
        "canceled": the run was canceled while this attempt stood by on a detached claim (no claim held)."""
        assert self._claims is not None
        job, ctx = active.job, active.ctx
        record = ClaimRecord(run_id=job.run_id, project_id=job.project_id, runner_id=self.runner_id,
                             instance=self.instance, attempt=ctx.attempt, reply=active.msg.reply or "")
        announced = False
        while True:
            try:
                got = await self._claims.try_take(record)
            except (*RETRYABLE, nats.errors.Error) as exc:
                log.warning("run %s: attempt claim not reachable (%r); waiting", job.run_id, exc)
                got = None
            if isinstance(got, Claim):
                active.claim = got
                active.remembering = asyncio.ensure_future(anyio.to_thread.run_sync(self._claims.remember, job.run_id))
                keeper = asyncio.create_task(self._hold_claim(active), name=f"claim {job.run_id}")
                self._claim_keepers[job.run_id] = keeper
                return "held"
            if isinstance(got, Standby) and got.holder.detached:
                active.detached_holder = got.holder.runner_id
                if not announced:
                    announced = True
                    log.warning(
                        "run %s attempt %d: attempt %d left its command running on runner %s (claim detached); "
                        "standing by until that runner id takes it back, or the run ends or is canceled",
                        job.run_id, ctx.attempt, got.holder.attempt, got.holder.runner_id)
                if await self._owner_is_back(got.holder):
                    log.info("run %s: runner %s is back; handing the delivery back for it", job.run_id,
                             got.holder.runner_id)
                    await active.msg.nak(delay=OWNER_BACK_NAK_S)
                    self._fetch_paused_until = time.monotonic() + OWNER_BACK_PAUSE_S
                    return "gone"
                if await self._cancel_recorded(job.run_id):
                    return "canceled"
            elif isinstance(got, Standby) and not announced:
                announced = True
                log.warning(
                    "run %s attempt %d: attempt %d (runner %s) may still run it (its claim was written %.0f s "
                    "ago); standing by until it ends or its claim is silent for %.0f s", job.run_id, ctx.attempt,
                    got.holder.attempt, got.holder.runner_id, got.age_s, self._claims.takeover_after_s)
            stop = asyncio.create_task(self._stop_requested.wait())
            await asyncio.wait([stop], timeout=self.settings.runner_heartbeat_s)
            stop.cancel()
            if self._stop_requested.is_set():
                await active.msg.nak()
                return "gone"
            try:
                ended = await self._already_ended(job.project_id, job.run_id)
            except (*RETRYABLE, nats.errors.Error):
                ended = False
            if ended:
                log.info("run %s: the attempt that held it finished it; acknowledging this delivery", job.run_id)
                await self._ack(active)
                return "gone"

    async def _owner_is_back(self, holder: ClaimRecord) -> bool:
        """Whether the runner id that left a detached claim is live again: its newest heartbeat is of the
        process that adopted the claim (`AttemptClaims.release_predecessor`), not stopped, and recent."""
        assert self._js is not None
        try:
            raw = await asyncio.wait_for(self._js.get_last_msg(
                self.subjects.runners_stream, self.subjects.runner_heartbeat(holder.runner_id)), CALL_TIMEOUT_S)
            beat = msgspec.json.decode(raw.data or b"", type=RunnerHeartbeat)
        except (NotFoundError, TimeoutError, nats.errors.Error, msgspec.DecodeError, msgspec.ValidationError):
            return False
        age = time.time() - raw.time.timestamp() if raw.time is not None else float("inf")
        return (beat.instance == holder.instance and beat.state != "stopped"
                and age < 3 * self.settings.runner_heartbeat_s + 2 * CALL_TIMEOUT_S)

    async def _hold_claim(self, active: ActiveJob) -> None:
        """Renew the claim every heartbeat. Stop the job at once when another attempt took the claim, or when
        the claim could not be renewed for `attempt_hold_s` (the bus, or our link to it, is down that long)."""
        claim, ctx = active.claim, active.ctx
        assert claim is not None
        while True:
            await asyncio.sleep(self.settings.runner_heartbeat_s)
            if not await claim.renew():
                if claim.lost == "released":
                    return
                active.superseded = claim.lost
            elif claim.unconfirmed_for() > self.settings.attempt_hold_s:
                active.superseded = (f"the attempt claim could not be renewed for {claim.unconfirmed_for():.0f} s "
                                     f"(attempt_hold_s {self.settings.attempt_hold_s:g})")
            if active.superseded is not None:
                log.critical("run %s attempt %d: %s; stopping the job, another attempt runs it",
                             ctx.run_id, ctx.attempt, active.superseded)
                ctx.cancel_requested.set()
                return

    def _holds_claim(self, active: ActiveJob) -> bool:
        claim = active.claim
        return (claim is not None and claim.lost is None and active.superseded is None
                and claim.unconfirmed_for() < 2 * self.settings.runner_heartbeat_s + 2 * CALL_TIMEOUT_S)

    async def _release_claim(self, active: ActiveJob) -> None:
        """Delete the claim; or, when the executor left the command running (`RunContext.detached`), mark it
        detached and keep it in the ledger: only this runner id may run the run next (`runner.claims`)."""
        if (keeper := self._claim_keepers.pop(active.job.run_id, None)) is not None:
            keeper.cancel()
        if active.claim is not None and active.ctx.detached:  # (called again after the report: a no-op then)
            if active.claim.lost is None and await active.claim.detach():
                log.warning("run %s attempt %d: its command keeps running; claim kept, marked detached (only "
                            "runner %s takes the run next; cancel the run if this host is gone for good)",
                            active.job.run_id, active.ctx.attempt, self.runner_id)
            return
        if active.claim is not None:
            await active.claim.release()
            assert self._claims is not None
            if active.remembering is not None:
                await asyncio.shield(active.remembering)  # noted before it is forgotten, never after
            await anyio.to_thread.run_sync(self._claims.forget, active.job.run_id)

    async def _attempt(self, active: ActiveJob) -> Outcome | None:
        """Run one attempt; the outcome to report, or None when there is nothing to report."""
        job, ctx, publisher = active.job, active.ctx, active.publisher
        log.info("run %s attempt %d: claimed (kind %s)", job.run_id, ctx.attempt, spec_kind(job.spec))
        # The cancel bucket is read while the terminal events are looked for and the claim is taken: a cancel
        # recorded after this read still reaches the run, by its signal (`_on_cancel` sets cancel_requested
        # of a run in `_active`, which this one is already).
        cancel_look = asyncio.create_task(self._cancel_recorded(job.run_id), name=f"cancel look {job.run_id}")
        # The look for terminal events goes out with the first try for the claim (one round trip for both). It
        # holds when that try finds the key never written (`Claim.first`: no attempt ran the run); after any
        # other take, it is made again now that the claim is held (an earlier holder cannot end the run after
        # it). A claim taken for a run that has ended is released when the delivery is done with.
        ended_look = asyncio.create_task(self._already_ended(job.project_id, job.run_id), name=f"ended {job.run_id}")
        try:
            taken = await self._take_claim(active)
            if taken == "gone":
                return None
            first = active.claim is not None and active.claim.first
            if not first:
                _drop_look(ended_look)
                ended_look = asyncio.create_task(self._already_ended(job.project_id, job.run_id))
            if await ended_look:
                log.warning("run %s already ended (an ack was lost); acknowledging the redelivery", job.run_id)
                await self._ack(active)
                return None
            if taken == "canceled":
                return Canceled(reason="requested while its command was left running by runner "
                                       f"{active.detached_holder}; that command was not stopped from here")
            if ctx.cancel_requested.is_set() or await cancel_look:
                return Canceled(reason="requested")
            if (full := await self._take_leases(active)) is not None:
                waited = await self._wait_for_leases(active, full)
                if waited == "stopping":
                    return None
                if waited == "canceled":
                    return Canceled(reason="requested")
            async with publisher.pipelined():  # run.claimed in flight while the executor and resume point are found
                await publisher.claimed(host=self.host, device=ctx.device)
                try:
                    executor = await self.registry.executor_for(job.spec)
                except ExecutorUnavailable as exc:
                    return Failed(FailureCause.INFRASTRUCTURE, "ExecutorUnavailable", str(exc))
                ctx.resume = job.resume if first else await self._resume_point(job)  # first: no checkpoint of its own
                await publisher.started(resumed_from=ctx.resume.checkpoint_id if ctx.resume else None)
            if active.remembering is not None:
                await active.remembering
            return await self._execute(active, executor)
        except PublishError as exc:
            return Failed(FailureCause.INFRASTRUCTURE, "PublishError", str(exc))
        except Exception as exc:  # noqa: BLE001 - an executor or platform bug must end the run, not the runner
            log.exception("run %s attempt %d: unexpected error", job.run_id, ctx.attempt)
            return Failed(FailureCause.INFRASTRUCTURE, type(exc).__name__, str(exc) or repr(exc))
        finally:
            _drop_look(cancel_look)  # done by now, unless the attempt ended before it was needed
            _drop_look(ended_look)

    async def _execute(self, active: ActiveJob, executor: Executor) -> Outcome:
        """Run the executor; heartbeat the job meanwhile; make sure a cancel ends it."""
        ctx = active.ctx
        task = asyncio.create_task(executor.run(ctx), name=f"executor {ctx.run_id}")
        interval = self.settings.job_ack_wait_s / 3
        canceled_at: float | None = None
        try:
            while True:
                done, _ = await asyncio.wait([task], timeout=interval)
                if done:
                    return task.result()
                if not ctx.cancel_requested.is_set() and await self._cancel_recorded(ctx.run_id):
                    log.info("run %s: cancel found in the bucket", ctx.run_id)
                    ctx.cancel_requested.set()
                if ctx.cancel_requested.is_set():
                    canceled_at = canceled_at or time.monotonic()
                    if time.monotonic() - canceled_at > self.settings.cancel_grace_s + EXECUTOR_STOP_SLACK_S:
                        log.error("run %s: the executor ignored the cancel; cancelling its task", ctx.run_id)
                        task.cancel()
                        await asyncio.wait([task], timeout=EXECUTOR_STOP_SLACK_S)
                        return Canceled()
        finally:
            if not task.done():  # we are cancelled ourselves (never ack then): the executor stops its processes
                task.cancel()
                await asyncio.wait([task], timeout=self.settings.cancel_grace_s + EXECUTOR_STOP_SLACK_S)

    async def _finish(self, active: ActiveJob, outcome: Outcome) -> None:
        """Publish the final event and acknowledge, shielded from cancellation."""
        task = asyncio.create_task(self._report(active, outcome), name=f"finish {active.job.run_id}")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        await asyncio.shield(task)

    async def _report(self, active: ActiveJob, outcome: Outcome) -> None:
        publisher, ctx = active.publisher, active.ctx
        try:
            try:
                await publisher.close()
            except PublishError as exc:
                log.error("run %s: last log lines lost: %s", ctx.run_id, exc)
            if active.superseded is not None and not isinstance(outcome, Completed):
                await self._report_superseded(active)
                return
            if isinstance(outcome, Canceled) and active.shutdown:
                if await self._report_shutdown(active):
                    return
            elif isinstance(outcome, Completed):
                await publisher.completed(exit_code=outcome.exit_code, result=outcome.result)
            elif isinstance(outcome, Failed):
                await publisher.failed(
                    cause=outcome.cause, error_type=outcome.error_type, message=outcome.message,
                    exit_code=outcome.exit_code,
                )
            else:
                await publisher.canceled(
                    reason="pause_timeout" if ctx.pause_expired else outcome.reason,
                    checkpoint_id=outcome.checkpoint_id or ctx.last_checkpoint_id,
                )
        except PublishError as exc:
            log.critical(
                "run %s attempt %d: the final event could not be published (%s); leaving the job "
                "unacknowledged so that it is delivered again", ctx.run_id, ctx.attempt, exc,
            )
            return
        if isinstance(outcome, Failed):
            log.warning("run %s attempt %d: failed (%s, %s: %s)", ctx.run_id, ctx.attempt, outcome.cause.value,
                        outcome.error_type, outcome.message)
        else:
            log.info("run %s attempt %d: %s", ctx.run_id, ctx.attempt, type(outcome).__name__.lower())
        await self._ack(active)

    async def _report_superseded(self, active: ActiveJob) -> None:
        """An attempt stopped because it may no longer hold the run: no terminal event (the run is another
        attempt's). If the claim turns out to be still ours (the bus came back and nobody took it), hand the
        job on at once: run.requeued, the claim freed, a nak."""
        claim, ctx = active.claim, active.ctx
        if claim is None or claim.lost is not None or not await claim.renew() or claim.unconfirmed_for() > 5.0:
            log.warning("run %s attempt %d: stopped without a final event (%s)", ctx.run_id, ctx.attempt,
                        active.superseded)
            return
        await active.publisher.requeued(reason=f"attempt {ctx.attempt} stopped: {active.superseded}")
        await self._release_claim(active)
        await active.msg.nak()
        log.info("run %s attempt %d: given back for the next attempt", ctx.run_id, ctx.attempt)

    async def _report_shutdown(self, active: ActiveJob) -> bool:
        """The final event of a job stopped by the runner's shutdown; True when the job was given back."""
        publisher, ctx = active.publisher, active.ctx
        if self.settings.shutdown_action == "requeue":
            if ctx.attempt < self.settings.job_max_deliver:
                await publisher.requeued(reason=SHUTDOWN_REASON)
                await self._release_claim(active)  # before the nak: the next attempt need not stand by
                await active.msg.nak()
                log.info("run %s attempt %d: given back for the next attempt", ctx.run_id, ctx.attempt)
                return True
            await publisher.failed(
                cause=FailureCause.INFRASTRUCTURE,
                error_type="RunnerShutdown",
                message=f"the runner stopped during the last allowed attempt ({ctx.attempt} of "
                f"{self.settings.job_max_deliver})",
            )
            return False
        await publisher.canceled(reason=SHUTDOWN_REASON, checkpoint_id=ctx.last_checkpoint_id)
        return False

    # -- talking to JetStream --------------------------------------------------------------------------
    async def _ack(self, active: ActiveJob) -> None:
        """Acknowledge and wait for the server to confirm (a lost ack would run the job again)."""
        deadline = time.monotonic() + ACK_DEADLINE_S
        while True:
            try:
                await active.msg.ack_sync(timeout=2.0)
                return
            except RETRYABLE as exc:
                if time.monotonic() >= deadline:
                    log.error("run %s: ack not confirmed (%r); a redelivery will find it ended", active.job.run_id, exc)
                    return
                await asyncio.sleep(0.5)

    async def _keep_claimed(self, msg: Msg) -> None:
        """Tell JetStream the job is being worked on, from the claim on (loading an executor the first time
        can take longer than the ack wait), every third of `job_ack_wait_s`, until cancelled."""
        while True:
            await asyncio.sleep(self.settings.job_ack_wait_s / 3)
            await self._in_progress(msg)

    async def _in_progress(self, msg: Msg) -> None:
        try:
            await msg.in_progress()
        except nats.errors.Error as exc:
            log.warning("runner %s: job heartbeat failed (%r)", self.runner_id, exc)

    async def _cancel_recorded(self, run_id: str) -> bool:
        assert self._control is not None
        try:
            return await self._control.is_cancel_requested(run_id)
        except RETRYABLE as exc:
            log.warning("run %s: cannot read the cancel bucket now (%r)", run_id, exc)
            return False

    async def _already_ended(self, project_id: str, run_id: str) -> bool:
        """Whether a terminal event of the run is in the stream already (this delivery's ack was lost)."""
        js = self._js
        assert js is not None

        async def stored(event_type: str) -> bool:
            try:
                await js.get_last_msg(self.subjects.events_stream, self.subjects.run_event(project_id, run_id, event_type))
            except NotFoundError:
                return False
            return True

        return any(await asyncio.gather(*(stored(t) for t in sorted(TERMINAL_EVENT_TYPES))))  # one round trip

    async def _resume_point(self, job: Job) -> ResumeFrom | None:
        """The newest resumable checkpoint an earlier attempt recorded, else the job's own resume source."""
        assert self._js is not None
        subject = self.subjects.run_event(job.project_id, job.run_id, "run.checkpoint")
        try:
            raw = await self._js.get_last_msg(self.subjects.events_stream, subject)
        except NotFoundError:
            return job.resume
        event = event_decoder.decode(raw.data or b"")
        if isinstance(event, RunCheckpoint) and event.resumable:
            return ResumeFrom(
                source_run_id=job.run_id, checkpoint_id=event.checkpoint_id, uri=event.uri,
                step=event.step, epoch=event.epoch,
            )
        return job.resume

    def _on_cancel(self, run_id: str) -> None:
        if active := self._active.get(run_id):
            log.info("run %s: cancel requested", run_id)
            active.ctx.cancel_requested.set()

    # -- fleet control: drain/resume, advice -----------------------------------------------------------
    async def _on_control(self, msg: Msg) -> None:
        try:
            request = control_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reply = RunnerControlReply(runner_id=self.runner_id, state=self.state, active_runs=self.active_runs,
                                       error=f"bad control request: {exc}")
        else:
            log.info("runner %s: %s requested", self.runner_id, request.action)
            state = await (self.drain() if request.action == "drain" else self.resume())
            reply = RunnerControlReply(runner_id=self.runner_id, state=state, active_runs=self.active_runs)
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(msgspec.json.encode(reply))

    def _advice_context(self) -> tuple[str, str, int]:
        """(runner id, host, runs active now) for an advice reply."""
        return self.runner_id, self.host, len(self._active)

    # -- runner heartbeats -----------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await self._publish_heartbeat()
            await asyncio.sleep(self.settings.runner_heartbeat_s)

    async def _heartbeat_now(self) -> None:
        """An extra heartbeat after a state change, so the fleet view sees it at once (with the devices and
        host figures of the last periodic beat: sampling them costs more than the beat itself)."""
        if self._js is not None:
            await self._publish_heartbeat(sample=False, refresh=False)

    def _beat_soon(self) -> None:
        """An extra heartbeat in the background: the runs on this runner changed. One that is due already and
        has not read the state yet carries this change too (jobs that start and end together cost one beat)."""
        if self._js is None or self._extra_beat_due:
            return
        self._extra_beat_due = True
        task = asyncio.create_task(self._beat_quietly(), name="heartbeat now")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    def _sample(self) -> tuple[list[DeviceInfo], HostStats]:
        """The runner's devices and its host, sampled together (one NVML session for both): its one device,
        or for `auto` every GPU of the host (else the CPU)."""
        host = sample_host(self.settings.state_dir)
        kind, index = parse_device(self.device)
        if kind == "auto":
            return (list(host.gpus) or describe_devices("cpu")), host
        if kind == "cpu":
            return [describe_device(self.device)], host
        device = next((gpu for gpu in host.gpus if gpu.index == index), None)
        if device is None:
            raise DeviceError(f"device {self.device} not found on this host")
        return [device], host

    async def _beat_quietly(self) -> None:
        seq = self._heartbeat_seq
        try:
            await self._heartbeat_now()
        except nats.errors.Error as exc:  # closing: the periodic beat or the next process tells the fleet
            log.debug("runner %s: extra heartbeat not published (%r)", self.runner_id, exc)
        finally:
            if self._heartbeat_seq == seq:  # no beat read the state since: the due flag is still this one's
                self._extra_beat_due = False

    async def _publish_heartbeat(self, *, sample: bool = True, refresh: bool = True) -> None:
        """`refresh`: renew the runs' leases too (the periodic beat; an extra one only tells of a change)."""
        async with self._beat_lock:  # one at a time: two lease renewals at once would lose a lease
            await self._publish_heartbeat_locked(sample=sample or self._host_stats is None, refresh=refresh)

    async def _publish_heartbeat_locked(self, *, sample: bool = True, refresh: bool = True) -> None:
        assert self._js is not None
        if refresh:
            for active in list(self._active.values()):
                if active.leases is not None:
                    await active.leases.refresh()
        if sample:
            try:
                self._devices, self._host_stats = await anyio.to_thread.run_sync(self._sample)
            except DeviceError as exc:
                log.warning("runner %s: %s", self.runner_id, exc)
            except OSError as exc:  # psutil could not read the host: beat without the numbers
                log.warning("runner %s: host not sampled (%r)", self.runner_id, exc)
        self._heartbeat_seq += 1
        self._extra_beat_due = False  # this beat reads the state now: a change from here on needs another
        beat = RunnerHeartbeat(
            runner_id=self.runner_id,
            seq=self._heartbeat_seq,
            host=self.host,
            pool=self.pool,
            devices=self._devices,
            slots=self.slots,
            active_runs=self.active_runs,
            state=self.state,  # type: ignore[arg-type]
            kinds=self.registry.kinds(),
            device=self.device,
            host_stats=self._host_stats,
            instance=self.instance,
            released_runs=self._released_runs,
            targets=self._target_names,
        )
        try:
            await self._js.publish(
                self.subjects.runner_heartbeat(self.runner_id), msgspec.json.encode(beat), timeout=PUBLISH_TIMEOUT_S
            )
        except RETRYABLE as exc:
            log.warning("runner %s: heartbeat not published (%r)", self.runner_id, exc)


def _drop_look(look: asyncio.Task[bool]) -> None:
    """Let go of a look whose answer is not needed (an error it met is not worth a warning)."""
    look.cancel()
    if look.done() and not look.cancelled():
        look.exception()
