"""Deletes what nobody will use again: uploaded images `upload_ttl_h` old that no queued or running run reads,
and datasets a gateway left `preparing` when it stopped mid-way (with their files and uploaded archives).

Every gateway sweeps (each delete is one statement, so two gateways never delete the same thing twice); a
sweep runs at start and then every `SWEEP_INTERVAL_S`, or sooner for a short upload TTL.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from gateway.services.artifacts import sweep_uploads
from gateway.services.datasets import sweep_abandoned_preparations
from gateway.state import GatewayState
from shared.contracts.common import utcnow

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 600.0
PREPARATION_ABANDONED_AFTER = timedelta(hours=24)
"""A dataset still `preparing` this long after it was registered was left by a gateway that stopped."""


class Sweeper:
    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        self._task: asyncio.Task[None] | None = None

    @property
    def upload_ttl(self) -> timedelta | None:
        hours = self.gw.settings.upload_ttl_h
        return timedelta(hours=hours) if hours > 0 else None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._sweep_forever(), name="sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def sweep(self) -> dict[str, int]:
        """One sweep now; how many uploads and abandoned datasets it deleted."""
        now = utcnow()
        swept = {"uploads": 0, "datasets": 0}
        if (ttl := self.upload_ttl) is not None:
            swept["uploads"] = await sweep_uploads(self.gw, now - ttl)
        swept["datasets"] = await sweep_abandoned_preparations(
            self.gw.sessionmaker, self.gw.settings, now - PREPARATION_ABANDONED_AFTER)
        if any(swept.values()):
            log.info("swept %d upload(s) older than %g h that no active run reads and %d abandoned dataset "
                     "preparation(s)", swept["uploads"], self.gw.settings.upload_ttl_h, swept["datasets"])
        return swept

    async def _sweep_forever(self) -> None:
        ttl = self.upload_ttl
        interval = SWEEP_INTERVAL_S if ttl is None else min(SWEEP_INTERVAL_S, max(ttl.total_seconds() / 4, 1.0))
        while True:
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - the database may be restarting: try again next time
                log.warning("sweep failed; retrying in %.0f s", interval, exc_info=True)
            await asyncio.sleep(interval)
