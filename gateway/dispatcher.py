"""The dispatcher: decides which queued run starts next, and publishes its job only then.

JetStream hands a pool's jobs out first in, first out, so the order is made before publishing. New runs wait
in Postgres (status `queued`, `enqueued_at` NULL); a pass of the dispatcher orders them and publishes the job of
each run that may start now:
- the limits have room (settings `max_running_global`, `max_running_per_user`, `max_running_per_project`;
  active runs count: published but not yet claimed, and claimed, running or canceling while the run holds its
  leases: a run whose runner died stops counting once its leases lapse, `lease_ttl_s` after their last
  renewal, though Postgres still says `running` until its next attempt reports; that attempt must take leases
  again before it runs, and waits for them, so the limits hold);
- a live runner of the run's pool fits it (kind, device kind, GPU memory and count: `shared.scheduling.misfit`)
  and has a free slot (runners' latest heartbeats on `{P}_RUNNERS`; their busy slots from Postgres, less the
  runs a restarted runner lists in `released_runs`).
The line: fair share between users first (the user with the fewest active runs, counting those ahead in line,
goes next; ties: the user whose last run was published longest ago, then whose next run waits longest), then
priority (higher first), then age. (Fewest active runs alone is not fair: with one free slot, every user has 0
runs at the moment it frees, and the oldest waiting run would always win — one user's flood first.) A run that may not
start gets its place in its pool's line and the reason (`runs.queue_position`, `runs.wait_reason`).

One gateway dispatches at a time: it holds key `dispatcher` of KV `Subjects.leases_bucket`, renewed every pass;
when it stops renewing, the key lapses (`lease_ttl_s`) and another gateway takes over. A pass runs when a run
is created and cannot take the fast path (`admit`, in process; other gateways send `Subjects.dispatch_wake`),
when a run ends (its event fetched by this gateway's projector, while runs wait), when the projector commits
events (Postgres NOTIFY, while runs wait), when a runner appears or changes state, and every second.

The fast path (`accept`, right after the run's row is committed): when this gateway dispatches, nothing waits
in any line and no other gateway asked for a pass since the last one, the new run is checked against the
dispatcher's view (the last pass's active runs, plus the jobs published since, less the runs whose terminal
event was seen on the bus) with the same limit and capacity rules as a pass, and its job is published at
once, without reading Postgres. The fast path and the passes hold one lock, so they never publish past each
other; a run that may not start at once waits for the pass like any other (and every run created after it
goes through the pass too, behind it). The view only errs towards too little room (a run ended but not yet
seen), which sends a run to the pass, never past a limit; the runners' leases hold the limits in any case.

The view and the passes learn that a run ended from its terminal event as this gateway's projector fetches
it from the stream (`saw`), before it is stored: a slot is free again as soon as its run ends, without
waiting for the projection's commit and NOTIFY (a run is left out of the active set for `ENDED_MEMORY_S`
after its terminal event; its runner released its leases before publishing it). Events another gateway's
projector fetched reach the dispatcher by the NOTIFY of their commit, as before.

The runner enforces the same limits with leases when it claims a job (`runner.leases`): the job carries them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import api as js_api
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from gateway.background import TaskService
from gateway.bus import PublishFailed, publish_event
from gateway.db.models import ACTIVE_WHERE, Run
from gateway.db.session import listening_connection, plain_fetch
from gateway.projector import NOTIFY_CHANNEL
from gateway.services.runs import enqueue, queued_event, resume_of
from gateway.state import GatewayState
from shared.bus import DUPLICATE_WINDOW_S
from shared.contracts import EventBase, Limits, Requirements, RunClaimed, RunnerHeartbeat, event_decoder
from shared.contracts.common import RunStatus, new_id, utcnow
from shared.contracts.events import TERMINAL_EVENT_TYPES
from shared.scheduling import DISPATCHER_KEY, lease_holder, misfit, requirement_text

log = logging.getLogger(__name__)

PASS_INTERVAL_S = 1.0
ADMIT_TIMEOUT_S = 5.0
"""How long creating a run waits for the dispatcher's verdict on it (normally a few milliseconds)."""
RUNNER_LIVE_BEATS = 3
"""A runner counts as live while its last heartbeat is at most this many heartbeat intervals old."""
ACCEPTING = ("idle", "busy")
SILENT_BEATS = 1.5
"""A runner not heard from for this many heartbeat intervals may have died: the dispatcher then checks whether
its runs still hold their leases."""
LEASE_READ_TIMEOUT_S = 5.0
ENDED_MEMORY_S = 120.0
"""How long a run whose terminal event was seen live stays out of the active set (the projection has
stored it long before)."""
LIVE_TYPES = frozenset({"run.claimed", "run.requeued", *TERMINAL_EVENT_TYPES})
"""The events the dispatcher is told of as soon as this gateway's projector fetches them (`saw`)."""
ACCEPT_STOP_S = ADMIT_TIMEOUT_S + 1.0
"""How long stopping waits for the fast paths in flight (a run left waiting is published by the next pass)."""

Outcome = Literal["published", "publish_failed", "waiting"]


@dataclass(slots=True)
class _Row:
    id: str
    project_id: str
    owner_id: str | None
    pool: str
    kind: str
    priority: int
    status: str
    runner_id: str | None
    requirements: Requirements | None
    created_at: datetime
    waiting: bool
    """Held by the dispatcher (no job published yet)."""
    queue_position: int | None
    wait_reason: str | None
    full: Run | None = None
    """A waiting run's whole row as the pass read it (a read-only copy: `enqueue` writes what changes)."""


@dataclass(slots=True)
class _Pool:
    """The live runners of a pool, and the runs published to it that no runner has claimed yet."""

    runners: list[RunnerHeartbeat] = field(default_factory=list)
    free: dict[str, int] = field(default_factory=dict)
    unclaimed: list[_Row] = field(default_factory=list)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class Dispatcher(TaskService):
    """`start()` / `stop()` from the gateway's lifespan; `admit(run_id)` after creating a run."""

    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        self.instance = new_id()
        self.runners: dict[str, RunnerHeartbeat] = {}
        self._heard: dict[str, float] = {}
        """When (monotonic) each runner's latest heartbeat arrived here."""
        self.leader = False
        self._revision = 0
        self._renew_at = 0.0
        self._wake = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []
        self._outcomes: dict[str, Outcome] = {}
        self._announced: set[str] = set()
        self._waiting_seen = False
        self._task: asyncio.Task[None] | None = None
        self._kv: KeyValue | None = None
        self._subs: list[Any] = []
        self._pg: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        """Held by a pass and by a fast path: one publishes at a time, in line order."""
        self._view: dict[str, _Row] | None = None
        """Active runs that do not wait (published, claimed, running, ...), as of the last pass and updated
        since; None before the first pass."""
        self._lapsed_runs: set[str] = set()
        """Runs of the view that no longer hold leases (they do not count against the limits)."""
        self._ended: dict[str, float] = {}
        """Run id → when (monotonic) its terminal event was seen live."""
        self._foreign_wake = False
        """Another gateway asked for a pass (a run created there waits for it)."""
        self._accepting: set[asyncio.Task[Outcome | None]] = set()
        self.live_types = LIVE_TYPES
        """What the projector tells `saw` of."""
        self.fast_published = 0
        """Jobs published by the fast path (the rest by passes)."""

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        names = self.gw.subjects
        self._kv = await self.gw.js.key_value(names.leases_bucket)
        self._subs.append(await self.gw.js.subscribe(
            names.runner_heartbeats_all, cb=self._on_heartbeat, ordered_consumer=True,
            deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
        ))
        self._subs.append(await self.gw.nc.subscribe(names.dispatch_wake, cb=self._on_wake))
        await self._listen()
        self._task = asyncio.create_task(self._run(), name="dispatcher")
        self._task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        if self._accepting:
            _, late = await asyncio.wait(list(self._accepting), timeout=ACCEPT_STOP_S)
            for task in late:
                task.cancel()
        await self._cancel_task()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass
        self._subs.clear()
        if self.leader and self._kv is not None:
            try:  # hand over at once instead of after the lock's TTL
                await self._kv.delete(DISPATCHER_KEY, last=self._revision)
            except (nats.errors.Error, KeyWrongLastSequenceError, TimeoutError):
                pass
            self.leader = False
        if self._pg is not None:
            try:
                await asyncio.wait_for(self._pg.close(), 2.0)
            except Exception:  # noqa: BLE001 - going away anyway
                self._pg.terminate()
            self._pg = None

    # -- wake-ups ----------------------------------------------------------------------------------------------
    def announced(self, run_id: str) -> None:
        """This gateway published the run's run.queued: the dispatcher need not publish it again."""
        self._announced.add(run_id)

    def accept(self, run: Run) -> asyncio.Task[Outcome | None]:
        """A run was just created (its row committed): announce it (run.queued) and publish its job, at once
        when it may start now (the fast path), else through a pass. In the background: the answer to the
        request that created the run does not wait for it. The task's result: what became of the run
        (None: another gateway dispatches, or no verdict in time)."""
        task = asyncio.create_task(self._accept(run), name=f"accept {run.id}")
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)
        task.add_done_callback(_log_crash)
        return task

    async def _accept(self, run: Run) -> Outcome | None:
        outcome = await self._fast(run)
        if outcome is not None:
            return outcome
        if run.id not in self._announced:
            try:
                await publish_event(self.gw, queued_event(run))
                self._announced.add(run.id)
            except PublishFailed as exc:  # the pass publishes it with the job
                log.warning("dispatcher: run.queued of run %s not published now (%s)", run.id, exc)
        return await self.admit(run.id)

    async def _fast(self, run: Run) -> Outcome | None:
        """Publish the job of a new run now if it may start now and nothing waits ahead of it; None when it
        must go through a pass (it then waits in line, and so does every run created after it)."""
        if self._view is None or not self.leader:
            return None
        async with self._lock:
            if (not self.leader or time.monotonic() >= self._renew_at or self._waiting_seen or self._foreign_wake
                    or self._view is None):
                return None
            row = _row_of(run)
            limits = self._limits()
            reason = self._limit_reason(row, limits, *self._counts())
            if reason is None:
                reason = self._capacity_reason(row, self._pools(list(self._view.values())).get(row.pool) or _Pool())
            if reason is not None:
                self._waiting_seen = True  # it waits: later runs queue behind it
                return None
            try:
                resume = None
                if run.resume_of:
                    async with self.gw.sessionmaker() as session:
                        resume = await resume_of(session, run)
                has_limits = limits.total or limits.per_user or limits.per_project
                await enqueue(self.gw, run, resume=resume, limits=limits if has_limits else None,
                              announce=run.id not in self._announced, announce_first=True)
            except (LookupError, msgspec.ValidationError, PublishFailed) as exc:
                log.info("dispatcher: run %s takes the pass (%s)", run.id, exc)
                self._waiting_seen = True
                return None
            self._announced.discard(run.id)
            row.waiting = False
            if run.id not in self._ended:
                self._view[run.id] = row
            self.gw.metrics.observe_dispatch(run.pool, run.created_at)
            self.fast_published += 1
            return "published"

    def _limits(self) -> Limits:
        settings = self.gw.settings
        return Limits(total=settings.max_running_global, per_user=settings.max_running_per_user,
                      per_project=settings.max_running_per_project)

    def _counts(self) -> tuple[int, Counter[str | None], Counter[str]]:
        """Active runs in the view that count against the limits: in all, per owner, per project."""
        assert self._view is not None
        counted = [r for r in self._view.values() if r.id not in self._lapsed_runs]
        return len(counted), Counter(r.owner_id for r in counted), Counter(r.project_id for r in counted)

    def saw(self, event: EventBase) -> None:
        """A run was claimed, handed back or ended: this gateway's projector fetched the event (called for
        `LIVE_TYPES`, before the projection stores it)."""
        run_id, event_type = event.run_id, event.type
        row = self._view.get(run_id) if self._view is not None else None
        if event_type in TERMINAL_EVENT_TYPES:
            now = time.monotonic()
            self._ended[run_id] = now
            if self._view is not None:
                self._view.pop(run_id, None)
            if self._waiting_seen:
                self._wake.set()
        elif row is not None and isinstance(event, RunClaimed):
            row.status, row.runner_id = RunStatus.CLAIMED.value, event.runner_id
        elif row is not None and event_type == "run.requeued":
            row.status, row.runner_id = RunStatus.QUEUED.value, None

    async def admit(self, run_id: str) -> Outcome | None:
        """Look at the line now; what the pass did with `run_id` (None: another gateway dispatches, or no
        answer within `ADMIT_TIMEOUT_S`)."""
        if not self.leader:
            try:
                await self.gw.nc.publish(self.gw.subjects.dispatch_wake, b"")
            except nats.errors.Error as exc:
                log.warning("dispatcher: cannot wake the dispatching gateway (%r)", exc)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), ADMIT_TIMEOUT_S)
        except TimeoutError:
            return None
        return self._outcomes.get(run_id) if self.leader else None

    async def _on_wake(self, _msg: Msg) -> None:
        self._foreign_wake = True
        self._wake.set()

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = event_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if not isinstance(beat, RunnerHeartbeat):
            return
        before = self.runners.get(beat.runner_id)
        self.runners[beat.runner_id] = beat
        self._heard[beat.runner_id] = time.monotonic()
        if before is None or (before.state, before.slots, before.devices, before.kinds, before.instance) != (
            beat.state, beat.slots, beat.devices, beat.kinds, beat.instance
        ):
            self._wake.set()

    def _on_notify(self, *_args: object) -> None:
        if self._waiting_seen:  # a run ended or was claimed: a waiting run may start
            self._wake.set()

    async def _listen(self) -> None:
        self._pg = await listening_connection(self.gw.settings.database_url, NOTIFY_CHANNEL, self._on_notify)

    # -- the loop ----------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), PASS_INTERVAL_S)
            except TimeoutError:
                pass
            self._wake.clear()
            waiters, self._waiters = self._waiters, []
            try:
                if self._pg is None or self._pg.is_closed():
                    await self._listen()
                if await self._lead():
                    await self.dispatch_once()
            except Exception:  # noqa: BLE001 - the database or NATS is away: the next pass tries again
                log.exception("dispatcher: pass failed")
                await asyncio.sleep(PASS_INTERVAL_S)
            finally:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _lead(self) -> bool:
        """Take or renew the dispatcher lock; whether this gateway dispatches."""
        assert self._kv is not None
        now = time.monotonic()
        if self.leader and now < self._renew_at:
            return True
        try:
            if self.leader:
                self._revision = await self._kv.update(DISPATCHER_KEY, self.instance.encode(), last=self._revision)
            else:
                self._revision = await self._kv.create(DISPATCHER_KEY, self.instance.encode())
                log.info("dispatcher: this gateway dispatches queued runs")
            self.leader = True
            self._renew_at = now + self.gw.settings.lease_ttl_s / 3
        except KeyWrongLastSequenceError:
            if self.leader:
                log.warning("dispatcher: the lock lapsed and another gateway took it")
            self.leader = False
        return self.leader

    # -- one pass ----------------------------------------------------------------------------------------------
    async def dispatch_once(self) -> dict[str, Outcome]:
        """Order the waiting runs, publish the jobs of those that may start, note why the others wait."""
        async with self._lock:
            self._foreign_wake = False
            try:
                return await self._dispatch_once()
            except BaseException:
                self._view = None  # not known now: no fast path until a pass succeeds
                raise

    async def _dispatch_once(self) -> dict[str, Outcome]:
        now = time.monotonic()
        for run_id in [r for r, seen in self._ended.items() if now - seen > ENDED_MEMORY_S]:
            del self._ended[run_id]
        rows = [r for r in await self._active_rows() if r.id not in self._ended]  # ended, not yet projected
        waiting = [r for r in rows if r.waiting]
        self._waiting_seen = bool(waiting)
        limits = self._limits()
        active = [r for r in rows if not r.waiting]
        lapsed: set[str] = set()
        if limits.total or limits.per_user or limits.per_project:
            lapsed = await self._lapsed(active)  # after reading the rows: see `_lapsed`
        self._lapsed_runs = lapsed
        self._view = {r.id: r for r in active}
        if not waiting:
            self._outcomes = {}
            return {}
        pools = self._pools(active)
        active = [r for r in active if r.id not in lapsed]
        total = len(active)
        per_user = Counter(r.owner_id for r in active)
        per_project = Counter(r.project_id for r in active)

        outcomes: dict[str, Outcome] = {}
        verdicts: dict[str, tuple[int, str]] = {}
        positions: Counter[str] = Counter()
        nats_down = False
        published: list[str] = []
        owners = {r.owner_id for r in waiting}
        last_served = await self._last_served(owners) if len(owners) > 1 else {}  # one user: no turns to order
        for run in self._line(waiting, per_user, last_served):
            reason = self._limit_reason(run, limits, total, per_user, per_project)
            pool = pools.get(run.pool) or _Pool()
            if reason is None:
                reason = self._capacity_reason(run, pool)
            if reason is None and nats_down:
                reason = "NATS does not take jobs now; retrying"
            if reason is None:
                if await self._publish(run, limits, published):
                    outcomes[run.id] = "published"
                    run.waiting, run.full = False, None
                    if run.id not in self._ended:
                        self._view[run.id] = run
                    total += 1
                    per_user[run.owner_id] += 1
                    per_project[run.project_id] += 1
                    pool.unclaimed.append(run)
                    continue
                nats_down = True
                outcomes[run.id] = "publish_failed"
                reason = "NATS did not take its job; retrying"
            else:
                outcomes.setdefault(run.id, "waiting")
            positions[run.pool] += 1
            verdicts[run.id] = (positions[run.pool], reason)
        await self._note(waiting, verdicts, published)
        self._outcomes = outcomes
        self._announced.difference_update(r for r, o in outcomes.items() if o == "published")
        return outcomes

    async def _active_rows(self) -> list[_Row]:
        async with self.gw.autocommit() as session:
            result = await plain_fetch(session, _ACTIVE_ROWS)
        rows = []
        for r in result:
            try:
                req = msgspec.convert(r["requirements"], Requirements) if r["requirements"] else None
            except msgspec.ValidationError:
                req = None
            waiting = r["status"] == RunStatus.QUEUED and r["enqueued_at"] is None
            rows.append(_Row(
                id=r["id"], project_id=r["project_id"], owner_id=r["owner_id"], pool=r["pool"], kind=r["kind"],
                priority=r["priority"], status=r["status"], runner_id=r["runner_id"], requirements=req,
                created_at=r["created_at"], waiting=waiting, queue_position=r["queue_position"],
                wait_reason=r["wait_reason"], full=Run(**r) if waiting else None,
            ))
        return rows

    async def _lapsed(self, active: list[_Row]) -> set[str]:
        """Claimed, running or canceling runs that no longer hold a lease: their runner died (or restarted and
        released them) and the leases lapsed. They no longer count against the limits.

        Only runs whose runner fell silent or released them are looked at (a live runner renews its runs'
        leases with every heartbeat). The bucket is read after the rows: a run the rows show claimed took its
        leases before its run.claimed, so a lease missing now was released (its work is over) or lapsed."""
        interval = self.gw.settings.runner_heartbeat_s
        now = time.monotonic()
        suspects = []
        for run in active:
            if run.status == RunStatus.QUEUED:
                continue  # published, not claimed: it counts until it is claimed (then it holds leases)
            beat = self.runners.get(run.runner_id or "")
            heard = self._heard.get(run.runner_id or "")
            if (beat is None or heard is None or now - heard > SILENT_BEATS * interval or beat.state == "stopped"
                    or (run.id in beat.released_runs and run.id not in beat.active_runs)):
                suspects.append(run.id)
        if not suspects:
            return set()
        try:
            holders = await asyncio.wait_for(self._lease_holders(), LEASE_READ_TIMEOUT_S)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("dispatcher: leases not read (%r); counting every active run", exc)
            return set()
        return {run_id for run_id in suspects if run_id not in holders}

    async def _lease_holders(self) -> set[str]:
        """The runs named by the live keys of the leases bucket."""
        assert self._kv is not None
        watcher = await self._kv.watchall(ignore_deletes=True)
        holders: set[str] = set()
        try:
            async for entry in watcher:
                if entry is None:  # the end of what is stored now
                    break
                if entry.key != DISPATCHER_KEY and (run_id := lease_holder(entry.value)) is not None:
                    holders.add(run_id)
        finally:
            await watcher.stop()
        return holders

    def _pools(self, active: list[_Row]) -> dict[str, _Pool]:
        """Live runners by pool with their free slots, and each pool's published but unclaimed runs."""
        busy: Counter[str | None] = Counter()
        for r in active:
            beat = self.runners.get(r.runner_id or "")
            released = beat is not None and r.id in beat.released_runs and r.id not in beat.active_runs
            if r.status != RunStatus.QUEUED and r.runner_id and not released:
                busy[r.runner_id] += 1
        horizon = utcnow() - timedelta(seconds=RUNNER_LIVE_BEATS * self.gw.settings.runner_heartbeat_s)
        pools: dict[str, _Pool] = defaultdict(_Pool)
        for beat in self.runners.values():
            if beat.state in ACCEPTING and beat.ts >= horizon:
                pool = pools[beat.pool]
                pool.runners.append(beat)
                pool.free[beat.runner_id] = max(0, beat.slots - busy[beat.runner_id])
        for run in active:
            if run.status == RunStatus.QUEUED:
                pools[run.pool].unclaimed.append(run)
        return pools

    async def _last_served(self, owners: set[str | None]) -> dict[str | None, datetime]:
        """When each of `owners` last had a job published."""
        async with self.gw.autocommit() as session:
            result = await plain_fetch(session, _LAST_SERVED, [o for o in owners if o is not None], None in owners)
        return {r["owner_id"]: r["last"] for r in result if r["last"] is not None}

    @staticmethod
    def _line(waiting: list[_Row], active_per_user: Counter[str | None],
              last_served: dict[str | None, datetime]) -> Iterable[_Row]:
        """Waiting runs in the order they may start: fair share, then priority, then age."""
        queues: dict[str | None, list[_Row]] = defaultdict(list)
        for run in waiting:
            queues[run.owner_id].append(run)
        for runs in queues.values():
            runs.sort(key=lambda r: (-r.priority, r.created_at, r.id), reverse=True)  # pop() takes the best
        never = datetime.min.replace(tzinfo=UTC)
        heap = [
            (active_per_user[owner], (0, last_served.get(owner, never)), runs[-1].created_at, n, owner)
            for n, (owner, runs) in enumerate(queues.items())
        ]
        heapq.heapify(heap)
        for turn in itertools.count():
            if not heap:
                return
            count, _, _, n, owner = heapq.heappop(heap)
            runs = queues[owner]
            yield runs.pop()
            if runs:  # served now: behind every user with as many runs who was served earlier
                heapq.heappush(heap, (count + 1, (1, turn), runs[-1].created_at, n, owner))

    @staticmethod
    def _limit_reason(run: _Row, limits: Limits, total: int, per_user: Counter[str | None],
                      per_project: Counter[str]) -> str | None:
        if limits.total and total >= limits.total:
            return f"global limit of {_plural(limits.total, 'running run')} reached"
        if limits.per_user and per_user[run.owner_id] >= limits.per_user:
            return f"your limit of {_plural(limits.per_user, 'running run')} reached"
        if limits.per_project and per_project[run.project_id] >= limits.per_project:
            return f"project limit of {_plural(limits.per_project, 'running run')} reached"
        return None

    @staticmethod
    def _capacity_reason(run: _Row, pool: _Pool) -> str | None:
        """None when a live runner of the pool fits the run and has a slot no published job will take."""
        if not pool.runners:
            return f"no runner of pool {run.pool} is online"
        fitting = {b.runner_id for b in pool.runners if misfit(run.kind, run.requirements, b.devices, b.kinds) is None}
        if not fitting:
            if not any(run.kind in b.kinds for b in pool.runners):
                return f"no runner of pool {run.pool} takes {run.kind} runs"
            return f"no runner in pool {run.pool} has {requirement_text(run.requirements)}"
        by_id = {b.runner_id: b for b in pool.runners}
        competing = sum(
            1 for other in pool.unclaimed
            if any(misfit(other.kind, other.requirements, by_id[r].devices, by_id[r].kinds) is None for r in fitting)
        )
        if sum(pool.free[r] for r in fitting) - competing <= 0:
            return f"all runners of pool {run.pool} that fit are busy"
        return None

    async def _publish(self, run: _Row, limits: Limits, published: list[str]) -> bool:
        """Publish the run's job (its id joins `published`: the pass notes them all enqueued in one statement);
        False when NATS did not take it. The row is the pass's read, not read again: a run canceled since is
        still published, and its runner finds it ended (the gateway's run.canceled) and runs nothing."""
        row = run.full
        assert row is not None
        resume = None
        if row.resume_of:
            async with self.gw.autocommit() as session:
                try:
                    resume = await resume_of(session, row)
                except LookupError as exc:
                    log.error("run %s cannot be published: %s", run.id, exc)
                    return True
        has_limits = limits.total or limits.per_user or limits.per_project
        try:
            announce = run.id not in self._announced and not await self._queued_event_stored(row)
            await enqueue(self.gw, row, resume=resume, limits=limits if has_limits else None, announce=announce,
                          note=False)
            published.append(run.id)
        except msgspec.ValidationError as exc:
            log.error("run %s cannot be published: its spec is not valid (%s)", run.id, exc)
            return True
        except PublishFailed as exc:
            log.warning("dispatcher: %s", exc)
            return False
        self.gw.metrics.observe_dispatch(row.pool, row.created_at)
        return True

    async def _queued_event_stored(self, run: Run) -> bool:
        """Whether run.queued is in the events stream (a copy younger than the duplicate window is dropped
        by the stream anyway, so it is just published again)."""
        if utcnow() - run.created_at < timedelta(seconds=DUPLICATE_WINDOW_S * 0.9):
            return False
        subject = self.gw.subjects.run_event(run.project_id, run.id, "run.queued")
        try:
            await self.gw.js.get_last_msg(self.gw.subjects.events_stream, subject)
        except NotFoundError:
            return False
        return True

    async def _note(self, waiting: list[_Row], verdicts: dict[str, tuple[int, str]], published: list[str]) -> None:
        """Store that the `published` runs are enqueued, and each waiting run's place and reason where they
        changed (one statement)."""
        changed = [r.id for r in waiting if r.id in verdicts and (r.queue_position, r.wait_reason) != verdicts[r.id]]
        if not changed and not published:
            return
        async with self.gw.autocommit() as session:
            await plain_fetch(session, _NOTE, published, changed, [verdicts[i][0] for i in changed],
                              [verdicts[i][1] for i in changed])


_WAITING = "status = 'queued' AND enqueued_at IS NULL"
_BULKY = frozenset({"spec", "progress_detail", "latest_metrics", "result", "options", "registration"})
"""Columns only a waiting run's publication needs: left NULL for the other active runs."""
_ACTIVE_ROWS = f"""
    SELECT {", ".join(f"CASE WHEN {_WAITING} THEN {c.name} END AS {c.name}" if c.name in _BULKY else c.name
                      for c in Run.__table__.columns)}
    FROM runs WHERE {ACTIVE_WHERE}
"""
"""Every active run, and whole rows of the waiting ones (the pass publishes from them: no read per run)."""
_LAST_SERVED = """
    SELECT o.owner_id, (SELECT max(r.enqueued_at) FROM runs r WHERE r.owner_id = o.owner_id) AS last
    FROM unnest($1::text[]) AS o(owner_id)
    UNION ALL
    SELECT NULL, (SELECT max(r.enqueued_at) FROM runs r WHERE r.owner_id IS NULL) WHERE $2
"""
"""One probe of `ix_runs_owner_enqueued` per owner (however many runs they have had)."""
_NOTE = """
    WITH enqueued AS (
        UPDATE runs SET enqueued_at = now(), queue_position = NULL, wait_reason = NULL
        WHERE id = ANY($1::text[]) AND status = 'queued' AND enqueued_at IS NULL
    )
    UPDATE runs SET queue_position = v.position, wait_reason = v.reason
    FROM unnest($2::text[], $3::int[], $4::text[]) AS v(id, position, reason)
    WHERE runs.id = v.id AND runs.enqueued_at IS NULL AND runs.id <> ALL($1::text[])
"""
"""The pass's one write: its published runs enqueued (what `enqueue` notes for one run), the places and
reasons of those that wait."""


def _row_of(run: Run) -> _Row:
    try:
        req = msgspec.convert(run.requirements, Requirements) if run.requirements else None
    except msgspec.ValidationError:
        req = None
    return _Row(id=run.id, project_id=run.project_id, owner_id=run.owner_id, pool=run.pool, kind=run.kind,
                priority=run.priority, status=run.status, runner_id=run.runner_id, requirements=req,
                created_at=run.created_at, waiting=True, queue_position=None, wait_reason=None)


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("dispatcher stopped unexpectedly", exc_info=task.exception())
