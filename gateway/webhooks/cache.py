"""The webhooks of each project, as the deliverer needs them for every batch of events, without a query per batch.

A trigger on the `webhooks` table (migration 0013) sends `NOTIFY trainforge_webhooks` with every change that
commits, whoever makes it (this gateway, another one, a project's deletion cascading). The cache LISTENs on
its own connection and forgets everything it knows at each notification. Order makes it safe:
- it LISTENs *before* it reads, so a change committed after a read's snapshot is always notified after it;
- a read during which a notification arrived is used for its batch but not kept (it may predate the change);
- while it is not listening (no connection yet, the database restarting), nothing is kept: each batch reads
  the table, as if there were no cache, and the next batch tries to LISTEN again.
A webhook created is therefore seen by the first batch fetched after its notification arrives (milliseconds
after the commit; before, a batch read the table at the moment it was fetched: the same race, a little
shorter). A webhook deleted but still cached costs nothing: its delivery row cannot be inserted any more
(foreign key), and nothing is sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import asyncpg
from sqlalchemy import select

from gateway.db.models import Webhook
from gateway.db.session import listening_connection
from gateway.state import GatewayState

log = logging.getLogger(__name__)

CHANNEL = "trainforge_webhooks"
LISTEN_RETRY_S = 1.0


class WebhookCache:
    """`hooks_for(projects)`: each project's webhooks (a project without any is left out)."""

    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        self._known: dict[str, list[Webhook]] = {}
        """Project id -> its webhooks (an empty list: none), as of the last change notified."""
        self._generation = 0
        """Counts notifications (and losses of the listening connection): a read that spans one is not kept."""
        self._pg: asyncpg.Connection | None = None
        self._retry_at = 0.0
        """When to try to LISTEN again after a failed try (meanwhile each batch reads the table)."""
        self.reads = 0
        """Queries of the webhooks table made so far (what the cache saves shows here)."""

    @property
    def generation(self) -> int:
        """Grows with every change notified and every loss of the listening connection."""
        return self._generation

    def cached(self, project: str) -> list[Webhook] | None:
        """What the cache holds for `project` (None: nothing, the next batch of its events reads the table)."""
        return self._known.get(project)

    @property
    def listening(self) -> bool:
        return self._pg is not None and not self._pg.is_closed()

    async def stop(self) -> None:
        pg, self._pg = self._pg, None
        self._forget()
        if pg is not None and not pg.is_closed():
            try:
                await pg.close(timeout=2)
            except Exception:  # noqa: BLE001 - the database is away: nothing to close cleanly
                pg.terminate()

    async def hooks_for(self, projects: Iterable[str]) -> dict[str, list[Webhook]]:
        wanted = set(projects)
        if not self.listening and time.monotonic() >= self._retry_at:
            await self._listen()
        known = {p: self._known[p] for p in wanted if p in self._known}
        missing = wanted - known.keys()
        if missing:
            generation = self._generation
            read = await self._read(missing)
            if self.listening and generation == self._generation:
                self._known.update(read)
            known.update(read)
        return {p: hooks for p, hooks in known.items() if hooks}

    async def _read(self, projects: set[str]) -> dict[str, list[Webhook]]:
        found: dict[str, list[Webhook]] = {project: [] for project in projects}
        self.reads += 1
        async with self.gw.sessionmaker() as session:
            for hook in (await session.execute(select(Webhook).where(Webhook.project_id.in_(projects)))).scalars():
                found[hook.project_id].append(hook)
        return found

    async def _listen(self) -> None:
        self._forget()
        try:
            pg = await listening_connection(self.gw.settings.database_url, CHANNEL, self._on_notify, timeout_s=5)
        except Exception as exc:  # noqa: BLE001 - the database is away: read the table per batch meanwhile
            log.debug("webhooks: cannot listen for changes (%s); reading the table per batch", exc)
            self._retry_at = time.monotonic() + LISTEN_RETRY_S
            return
        pg.add_termination_listener(self._on_lost)
        self._pg = pg

    def _on_notify(self, *_args: object) -> None:
        self._forget()

    def _on_lost(self, *_args: object) -> None:
        self._pg = None
        self._forget()

    def _forget(self) -> None:
        self._known.clear()
        self._generation += 1
