"""The fleet view: every runner's latest heartbeat, kept in memory from the `{P}_RUNNERS` stream.

At start an ordered consumer reads the last heartbeat of every runner subject (`DeliverPolicy.LAST_PER_SUBJECT`)
and then follows new ones. A runner is `lost` when its last heartbeat (the stream's timestamp, so only the
NATS server's clock counts) is older than `LOST_AFTER_BEATS` × `runner_heartbeat_s`, and `stopped` when it
said so. A runner process is one `instance`: a heartbeat with a new instance under a known runner id ends
the old one at once (the runner restarted, e.g. under `trainforge up`): the view follows the new process's
heartbeat (its `active_runs`, its `released_runs`: what the dead process ran and the new one handed on),
counts the restart, and ignores heartbeats of ended instances that arrive late. Each heartbeat with host
numbers is also a resource sample, fanned out to live subscribers (the resources SSE stream) through bounded
queues; a subscriber that falls behind is dropped (its stream ends).

Also here: drain/resume of one runner and advice from a runner of a pool, both core NATS request/reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api as js_api

from gateway.background import TaskService
from gateway.state import GatewayState
from shared.contracts import RunnerHeartbeat, event_decoder
from shared.contracts.events import DeviceInfo, HostStats
from shared.contracts.fleet import (
    AdviceReply,
    AdviceRequest,
    RunnerControl,
    RunnerControlReply,
    advice_reply_decoder,
    control_reply_decoder,
)

log = logging.getLogger(__name__)

LOST_AFTER_BEATS = 3
FORGET_AFTER = timedelta(days=7)
"""Runners silent this long leave the registry (the stream keeps heartbeats as long)."""
QUEUE_MAX = 256
CONTROL_TIMEOUT_S = 5.0
"""A drain answers once the runner's fetch in flight ended (at most ~2 s)."""
ENDED_KEPT = 8
"""Ended instances remembered per runner (their late heartbeats are ignored)."""
ADVICE_TIMEOUT_S = 120.0
"""The runner caps its measurement (`runner.advice.MEASURE_CAP_S` plus slack) below this."""

RunnerState = Literal["idle", "busy", "draining", "stopped", "lost"]


class RunnerView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    host: str
    pool: str
    device: str
    devices: list[DeviceInfo]
    slots: int
    kinds: list[str]
    current_run: str | None
    active_runs: list[str]
    state: RunnerState
    last_seen: datetime
    host_stats: HostStats | None = None
    instance: str = ""
    """The runner process the view is of (a new one when the runner restarted under the same id)."""
    instance_since: datetime | None = None
    """When this gateway first heard that process."""
    restarts: int = 0
    """Instances of this runner id that ended since this gateway started following it."""
    released_runs: list[str] = []
    """Runs the previous process held when it died; this process handed them on (they run as a next attempt,
    here or elsewhere)."""
    targets: list[str] = []
    """The container targets (docker backend) this runner offers, by name."""


class TargetView(msgspec.Struct, kw_only=True):
    """A container target (docker backend) as the live runners offer it."""

    name: str
    runners: list[str]
    """Live runners (neither lost nor stopped) whose targets file names it."""
    pools: list[str]
    """Their pools: a run naming the target goes to one of them."""


class HostSample(msgspec.Struct, frozen=True, kw_only=True):
    """One host's resources, as its newest runner heartbeat (or the gateway itself) measured them."""

    host: str
    runners: list[str]
    sampled_at: datetime
    cpu_percent: float | None = None
    cpu_count: int | None = None
    load1: float | None = None
    memory_total_mb: int | None = None
    memory_used_mb: int | None = None
    memory_available_mb: int | None = None
    disk_total_mb: int | None = None
    disk_free_mb: int | None = None
    gpus: list[DeviceInfo] = []


def host_sample(host: str, runners: list[str], sampled_at: datetime, stats: HostStats | None) -> HostSample:
    if stats is None:
        return HostSample(host=host, runners=runners, sampled_at=sampled_at)
    fields = {f: getattr(stats, f) for f in HostStats.__struct_fields__}
    return HostSample(host=host, runners=runners, sampled_at=sampled_at, **fields)


class FleetError(Exception):
    """A runner did not answer."""


@dataclass
class _Entry:
    beat: RunnerHeartbeat
    last_seen: datetime
    instance_since: datetime
    restarts: int = 0
    ended: tuple[str, ...] = ()
    """Earlier instances of this runner id, newest last."""


class SampleSubscription:
    """Resource samples as they arrive. `await next(timeout)` → sample, None once ended; TimeoutError."""

    def __init__(self, fleet: FleetService) -> None:
        self._fleet = fleet
        self._queue: asyncio.Queue[tuple[int, HostSample] | None] = asyncio.Queue(QUEUE_MAX)
        self.ended = False

    def _offer(self, item: tuple[int, HostSample] | None) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            return False

    def _end(self) -> None:
        self.ended = True
        self._offer(None)

    async def next(self, timeout: float | None = None) -> tuple[int, HostSample] | None:
        if self.ended and self._queue.empty():
            return None
        return await asyncio.wait_for(self._queue.get(), timeout)

    def close(self) -> None:
        self._fleet._subscribers.discard(self)

    def __enter__(self) -> SampleSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FleetService(TaskService):
    """The runner registry and the resource sample fan-out (a background service of the gateway)."""

    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        self._runners: dict[str, _Entry] = {}
        self._subscribers: set[SampleSubscription] = set()
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._sample_id = 0

    @property
    def lost_after(self) -> timedelta:
        return timedelta(seconds=LOST_AFTER_BEATS * self.gw.settings.runner_heartbeat_s)

    async def start(self) -> None:
        self._sub = await self.gw.js.subscribe(
            self.gw.subjects.runner_heartbeats_all, ordered_consumer=True,
            deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT)
        self._task = asyncio.create_task(self._follow(), name="fleet")
        self._task.add_done_callback(self._followed)

    def _followed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("fleet: following runner heartbeats stopped; the registry is stale",
                         exc_info=task.exception())

    async def stop(self) -> None:
        await self._cancel_task()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        for sub in list(self._subscribers):
            sub._end()
        self._subscribers.clear()

    async def _follow(self) -> None:
        async for msg in self._sub.messages:
            self._take(msg)

    def _take(self, msg: Msg) -> None:
        try:
            beat = event_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("fleet: undecodable heartbeat on %s: %s", msg.subject, exc)
            return
        if not isinstance(beat, RunnerHeartbeat):
            return
        seen = msg.metadata.timestamp
        known = self._runners.get(beat.runner_id)
        if known is None:
            self._runners[beat.runner_id] = _Entry(beat=beat, last_seen=seen, instance_since=seen)
        elif beat.instance in known.ended or (
                known.last_seen > seen and beat.instance == known.beat.instance):
            return  # a late heartbeat of an ended process, or an older one of this process
        elif beat.instance != known.beat.instance:  # the runner restarted: the old process is over
            if known.beat.instance:
                log.info("fleet: runner %s restarted (instance %s ended, %s began; released %s)", beat.runner_id,
                         known.beat.instance, beat.instance or "?", ", ".join(beat.released_runs) or "no runs")
            ended = (*known.ended, known.beat.instance)[-ENDED_KEPT:] if known.beat.instance else known.ended
            self._runners[beat.runner_id] = _Entry(beat=beat, last_seen=max(seen, known.last_seen),
                                                   instance_since=seen, restarts=known.restarts + 1, ended=ended)
        else:
            known.beat, known.last_seen = beat, seen
        if beat.host_stats is not None:
            self._publish(host_sample(beat.host, [beat.runner_id], seen, beat.host_stats))

    def _publish(self, sample: HostSample) -> None:
        self._sample_id += 1
        for sub in list(self._subscribers):
            if not sub._offer((self._sample_id, sample)):
                log.info("fleet: dropping a resources subscriber that fell %d samples behind", QUEUE_MAX)
                self._subscribers.discard(sub)
                sub._end()

    def subscribe(self) -> SampleSubscription:
        sub = SampleSubscription(self)
        if self._task is None:
            sub._end()
        else:
            self._subscribers.add(sub)
        return sub

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    # -- reading ---------------------------------------------------------------------------------------
    def _state(self, entry: _Entry, now: datetime) -> RunnerState:
        if entry.beat.state == "stopped":
            return "stopped"
        if now - entry.last_seen > self.lost_after:
            return "lost"
        return entry.beat.state

    def runners(self, *, pool: str | None = None, state: str | None = None) -> list[RunnerView]:
        """Runners by id, optionally of one pool and in one state."""
        now = datetime.now(UTC)
        for runner_id in [r for r, e in self._runners.items() if now - e.last_seen > FORGET_AFTER]:
            del self._runners[runner_id]
        views = [self._view(entry, now) for _, entry in sorted(self._runners.items())]
        return [v for v in views if (pool is None or v.pool == pool) and (state is None or v.state == state)]

    def runner(self, runner_id: str) -> RunnerView | None:
        entry = self._runners.get(runner_id)
        return self._view(entry, datetime.now(UTC)) if entry is not None else None

    def _view(self, entry: _Entry, now: datetime) -> RunnerView:
        beat = entry.beat
        return RunnerView(
            id=beat.runner_id, host=beat.host, pool=beat.pool, device=beat.device, devices=beat.devices,
            slots=beat.slots, kinds=beat.kinds, current_run=beat.active_runs[0] if beat.active_runs else None,
            active_runs=beat.active_runs, state=self._state(entry, now), last_seen=entry.last_seen,
            host_stats=beat.host_stats, instance=beat.instance, instance_since=entry.instance_since,
            restarts=entry.restarts, released_runs=beat.released_runs, targets=beat.targets,
        )

    def live(self) -> list[RunnerView]:
        """Runners neither lost nor stopped."""
        return [v for v in self.runners() if v.state not in ("lost", "stopped")]

    def targets(self) -> list[TargetView]:
        """The container targets of live runners, by name, each with the runners and pools that offer it."""
        found: dict[str, TargetView] = {}
        for view in self.live():
            for name in view.targets:
                target = found.setdefault(name, TargetView(name=name, runners=[], pools=[]))
                target.runners.append(view.id)
                if view.pool not in target.pools:
                    target.pools.append(view.pool)
        return [found[name] for name in sorted(found)]

    def hosts(self) -> list[HostSample]:
        """One sample per host of a live runner: the newest heartbeat's."""
        newest: dict[str, RunnerView] = {}
        runners: dict[str, list[str]] = {}
        for view in self.live():
            runners.setdefault(view.host, []).append(view.id)
            if view.host not in newest or view.last_seen > newest[view.host].last_seen:
                newest[view.host] = view
        return [host_sample(host, runners[host], view.last_seen, view.host_stats)
                for host, view in sorted(newest.items())]

    # -- asking runners --------------------------------------------------------------------------------
    async def control(self, runner_id: str, action: Literal["drain", "resume"]) -> RunnerControlReply:
        """Ask the runner to drain or resume. Raises `FleetError` when it does not answer."""
        subject = self.gw.subjects.runner_control(runner_id)
        try:
            msg = await self.gw.nc.request(subject, msgspec.json.encode(RunnerControl(action=action)),
                                           timeout=CONTROL_TIMEOUT_S)
        except (NatsTimeoutError, NoRespondersError) as exc:
            raise FleetError(f"runner {runner_id!r} did not answer the {action} request") from exc
        return control_reply_decoder.decode(msg.data)

    async def advice(self, pool: str, request: AdviceRequest) -> AdviceReply:
        """Advice measured by one runner of `pool`. Raises `FleetError` when none answers."""
        subject = self.gw.subjects.advice(pool)
        try:
            msg = await self.gw.nc.request(subject, msgspec.json.encode(request), timeout=ADVICE_TIMEOUT_S)
        except NoRespondersError as exc:
            raise FleetError(f"no runner of pool {pool!r} is listening") from exc
        except NatsTimeoutError as exc:
            raise FleetError(f"no runner of pool {pool!r} answered within {ADVICE_TIMEOUT_S:g} s") from exc
        return advice_reply_decoder.decode(msg.data)
