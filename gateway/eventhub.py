"""The event hub: new rows of `events` fanned out to live subscribers (the SSE streams).

One asyncpg connection LISTENs on the projector's channel. On a notification, and at least every
`POLL_S` (a missed notification, a reconnect), the hub reads the rows past the last position it has seen,
in ONE query for all subscribers, and puts each on the queues of the subscribers of its run and of its
project. The projector commits positions in order, so `position > last` never skips a row.

Events this gateway's own projector commits are handed to the hub right after the commit (`committed`), so
its streams do not wait for the NOTIFY and the read; those of other gateways come by the read.

A subscriber's queue is bounded: one that falls `QUEUE_MAX` events behind is dropped, its stream ends, and
its client reconnects with `Last-Event-ID` (replayed from Postgres).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.background import TaskService
from gateway.db.session import listening_connection
from gateway.projector import NOTIFY_CHANNEL
from gateway.state import GatewayState

log = logging.getLogger(__name__)

POLL_S = 1.0
TICK_S = 0.25
"""How often the subscriptions' waits are looked at for a passed timeout."""
PAGE = 1000
QUEUE_MAX = 2000
RECONNECT_MAX_S = 5.0


@dataclass(slots=True, eq=False)
class HubEvent:
    position: int
    run_id: str
    project_id: str
    type: str
    data: str
    """The event's JSON."""
    message: Any = None
    """Its SSE message, encoded once for all the streams that send it (`gateway.controllers.events`)."""


class Subscription:
    """Live events of one run or one project, in position order. `await next()` → event, or None: ended.

    Made to be cheap per event with a thousand of them (one SSE stream each): the events wait in a deque, a
    reader waits on one future, and a wait's timeout is no timer of its own: the hub's ticker wakes the waits
    whose deadline has passed, every `TICK_S` (so a timeout fires up to `TICK_S` late)."""

    __slots__ = ("_deadline", "_hub", "_items", "_waiter", "ended", "project_id", "run_id")

    def __init__(self, hub: EventHub, run_id: str | None, project_id: str | None) -> None:
        self.run_id = run_id
        self.project_id = project_id
        self._hub = hub
        self._items: deque[HubEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = math.inf
        self.ended = False
        """Dropped (too slow) or the hub stopped: what is queued is still delivered, then `next()` is None."""

    def _offer(self, event: HubEvent) -> bool:
        if len(self._items) >= QUEUE_MAX:
            return False
        self._items.append(event)
        self._wake()
        return True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _end(self) -> None:
        self.ended = True
        self._wake()

    def _expire(self, now: float) -> None:
        if now >= self._deadline:
            self._wake()

    async def next(self, timeout: float | None = None) -> HubEvent | None:
        """The next event; None once the subscription has ended. TimeoutError after `timeout` seconds."""
        if not self._items:
            if self.ended:
                return None
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            self._deadline = math.inf if timeout is None else loop.time() + timeout
            try:
                await waiter
            finally:
                self._waiter = None
                self._deadline = math.inf
            if not self._items:
                if self.ended:
                    return None
                raise TimeoutError
        return self._items.popleft()

    def close(self) -> None:
        self._hub._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub(TaskService):
    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        self._by_run: dict[str, set[Subscription]] = defaultdict(set)
        self._by_project: dict[str, set[Subscription]] = defaultdict(set)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last = 0

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._by_run.values()) + sum(len(s) for s in self._by_project.values())

    def subscribe(self, *, run_id: str | None = None, project_id: str | None = None) -> Subscription:
        if (run_id is None) == (project_id is None):
            raise ValueError("subscribe to one run or one project")
        sub = Subscription(self, run_id, project_id)
        if self._stopping.is_set():
            sub._end()
        elif run_id is not None:
            self._by_run[run_id].add(sub)
        else:
            self._by_project[project_id].add(sub)  # type: ignore[index]
        return sub

    def _remove(self, sub: Subscription) -> None:
        if sub.run_id is not None:
            index, key = self._by_run, sub.run_id
        else:
            index, key = self._by_project, sub.project_id or ""
        subs = index.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del index[key]

    async def start(self) -> None:
        self._stopping.clear()
        self._conn = await self._connect()
        self._last = await self._conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
        self._task = asyncio.create_task(self._run(), name="eventhub")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        await self._cancel_task()
        for subs in [*self._by_run.values(), *self._by_project.values()]:
            for sub in subs:
                sub._end()
        self._by_run.clear()
        self._by_project.clear()
        await self._close()

    async def _connect(self) -> asyncpg.Connection:
        return await listening_connection(self.gw.settings.database_url, NOTIFY_CHANNEL, self._on_notify)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except Exception:  # noqa: BLE001 - going away anyway
                conn.terminate()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            position = int(payload)  # the highest position the projector's commit stored
        except ValueError:
            self._wake.set()
            return
        if position <= self._last:
            return
        if not self._by_run and not self._by_project:
            self._last = position  # nobody listens: skip ahead without a read (a later subscriber replays first)
            return
        self._wake.set()

    async def _run(self) -> None:
        backoff = 0.2
        next_poll = 0.0
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            except TimeoutError:
                pass
            now = asyncio.get_running_loop().time()  # the clock `Subscription.next` sets deadlines by
            self._expire(now)
            if not self._wake.is_set() and now < next_poll:
                continue
            next_poll = now + POLL_S
            self._wake.clear()
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await self._connect()
                await self._read_new()
                backoff = 0.2
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("event hub: database unavailable (%s); retrying in %.1fs", exc, backoff)
                await self._close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)

    async def _read_new(self) -> None:
        assert self._conn is not None
        while True:
            if not self._by_run and not self._by_project:
                # Nobody listens: skip ahead. A later subscriber replays from Postgres first anyway.
                self._last = max(self._last, await self._conn.fetchval(
                    "SELECT coalesce(max(position), 0) FROM events"))
                return
            rows = await self._conn.fetch(
                "SELECT position, run_id, project_id, type, body::text AS data FROM events"
                " WHERE position > $1 ORDER BY position LIMIT $2", self._last, PAGE)
            for row in rows:
                if row["position"] > self._last:  # else `committed` handed it over while this read ran
                    self._fan_out(HubEvent(**row))
                    self._last = row["position"]
            if len(rows) < PAGE:
                return

    @property
    def listening(self) -> bool:
        """Whether any stream follows events now."""
        return bool(self._by_run or self._by_project)

    def committed(self, events: list[tuple[int, str, str, str, str | None]]) -> None:
        """Events this gateway's projector has just committed: (position, run id, project id, type, JSON as
        Postgres stores it, or None when nobody listened as they were stored), in position order. They are
        fanned out now, without waiting for their NOTIFY and reading them back, when nothing can lie between
        the last position the hub has seen and the first of them (every position in between would be another
        gateway's commit, read as before); a gap inside them is positions nobody took (a duplicate's, under
        the projector's lock, which orders every insert). Without their JSON, the hub only moves on past them
        while nobody listens; a stream that joined meanwhile gets them by the read, as before."""
        if not events or events[0][0] != self._last + 1:
            return
        if self.listening:
            if any(data is None for *_, data in events):
                return
            for position, run_id, project_id, type_, data in events:
                self._fan_out(HubEvent(position, run_id, project_id, type_, data))  # type: ignore[arg-type]
        self._last = events[-1][0]

    def _expire(self, now: float) -> None:
        """Wake the waits whose timeout has passed (`Subscription.next`)."""
        for subs in (*self._by_run.values(), *self._by_project.values()):
            for sub in subs:
                sub._expire(now)

    def _fan_out(self, event: HubEvent) -> None:
        for subs in (self._by_run.get(event.run_id), self._by_project.get(event.project_id)):
            if not subs:
                continue
            for sub in list(subs):
                if not sub._offer(event):
                    log.info("event hub: dropping a subscriber %d events behind", QUEUE_MAX)
                    sub.ended = True
                    self._remove(sub)
