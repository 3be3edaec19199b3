"""The event hub: new rows of `events` fanned out to live subscribers (the SSE streams).

One asyncpg connection LISTENs on the projector's channel. On a notification, and at least every
`POLL_S` (a missed notification, a reconnect), the hub reads the rows past the last position it has seen,
in ONE query for all subscribers, and puts each on the queues of the subscribers of its run and of its
project. The projector commits positions in order, so `position > last` never skips a row.

A subscriber's queue is bounded: one that falls `QUEUE_MAX` events behind is dropped, its stream ends, and
its client reconnects with `Last-Event-ID` (replayed from Postgres).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.background import TaskService
from gateway.db.session import listening_connection
from gateway.projector import NOTIFY_CHANNEL
from gateway.state import GatewayState

log = logging.getLogger(__name__)

POLL_S = 1.0
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
    """Live events of one run or one project, in position order. `await next()` → event, or None: ended."""

    def __init__(self, hub: EventHub, run_id: str | None, project_id: str | None) -> None:
        self.run_id = run_id
        self.project_id = project_id
        self._hub = hub
        self._queue: asyncio.Queue[HubEvent | None] = asyncio.Queue(QUEUE_MAX)
        self.ended = False
        """Dropped (too slow) or the hub stopped: what is queued is still delivered, then `next()` is None."""

    def _offer(self, event: HubEvent) -> bool:
        try:
            self._queue.put_nowait(event)
            return True
        except asyncio.QueueFull:
            return False

    def _end(self) -> None:
        self.ended = True
        self._offer(None)  # type: ignore[arg-type] # wakes a waiting reader; a full queue wakes it anyway

    async def next(self, timeout: float | None = None) -> HubEvent | None:
        """The next event; None once the subscription has ended. TimeoutError after `timeout` seconds."""
        if self._queue.empty():
            if self.ended:
                return None
            async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for (a thousand streams)
                return await self._queue.get()
        return self._queue.get_nowait()

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
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except TimeoutError:
                pass
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
                self._fan_out(HubEvent(**row))
            if rows:
                self._last = rows[-1]["position"]
            if len(rows) < PAGE:
                return

    def _fan_out(self, event: HubEvent) -> None:
        for subs in (self._by_run.get(event.run_id), self._by_project.get(event.project_id)):
            if not subs:
                continue
            for sub in list(subs):
                if not sub._offer(event):
                    log.info("event hub: dropping a subscriber %d events behind", QUEUE_MAX)
                    sub.ended = True
                    self._remove(sub)
