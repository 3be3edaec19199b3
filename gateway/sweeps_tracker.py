"""The sweep tracker: advances every running sweep (`gateway.services.sweeps.advance`) when the projector
commits run events (Postgres `NOTIFY trainforge_events`), so a trial's end starts the next one; no polling.
Once at start, and after its notification connection is re-made, it looks at every running sweep.
Notifications that arrive while a pass runs, or within `MIN_PASS_GAP_S` after one, make one more pass, not
one each (the projector commits many times a second under load; a trial's next one starts at most that much
later). While no sweep runs, commits of run events are not looked at: the tracker waits for a sweep's start
(`NOTIFY trainforge_sweeps`, sent in the transaction that creates it, by whichever gateway)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from sqlalchemy import select

from gateway.background import TaskService
from gateway.db.models import Sweep
from gateway.db.session import listening_connection
from gateway.projector import NOTIFY_CHANNEL
from gateway.services import sweeps
from gateway.services.sweeps import SWEEPS_CHANNEL
from gateway.state import GatewayState

log = logging.getLogger(__name__)

RETRY_S = 2.0
MIN_PASS_GAP_S = 0.2


class SweepTracker(TaskService):
    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        self._wake = asyncio.Event()
        self.running = True
        """Whether the last pass found a running sweep (until the first pass: assumed)."""
        self._pg: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._listen()
        self._wake.set()  # a first pass: whatever ended while no gateway was up
        self._task = asyncio.create_task(self._run(), name="sweep-tracker")

    async def stop(self) -> None:
        await self._cancel_task()
        if self._pg is not None:
            try:
                await asyncio.wait_for(self._pg.close(), 2.0)
            except Exception:  # noqa: BLE001 - going away anyway
                self._pg.terminate()
            self._pg = None

    async def _listen(self) -> None:
        self._pg = await listening_connection(self.gw.settings.database_url, NOTIFY_CHANNEL, self._on_events,
                                              more={SWEEPS_CHANNEL: lambda *_: self._wake.set()})

    def _on_events(self, *_: object) -> None:
        if self.running:  # with no sweep running, a run's end concerns none
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self._pg is None or self._pg.is_closed():
                    await self._listen()
                    self._wake.set()
                await self.pass_once()
                await asyncio.sleep(MIN_PASS_GAP_S)  # what is notified meanwhile waits for one pass
            except Exception:  # noqa: BLE001 - the database is away: try again, and look at everything then
                log.exception("sweep tracker: pass failed")
                await asyncio.sleep(RETRY_S)
                self._wake.set()

    async def pass_once(self) -> None:
        async with self.gw.sessionmaker() as session:
            running = list((await session.execute(select(Sweep.id).where(Sweep.status == "running"))).scalars())
        self.running = bool(running)
        for sweep_id in running:
            await sweeps.advance(self.gw, sweep_id)
