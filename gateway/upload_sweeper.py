"""Deletes uploaded images once they are `upload_ttl_h` old and no queued or running run reads them.

Every gateway sweeps (the delete is one statement, so two gateways never delete the same upload twice); a
sweep runs at start and then every `SWEEP_INTERVAL_S`, or sooner for a short TTL.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from gateway.services.artifacts import sweep_uploads
from gateway.state import GatewayState
from shared.contracts.common import utcnow

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 600.0


class UploadSweeper:
    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        self._task: asyncio.Task[None] | None = None

    @property
    def ttl_s(self) -> float:
        return self.gw.settings.upload_ttl_h * 3600.0

    async def start(self) -> None:
        if self.ttl_s > 0:
            self._task = asyncio.create_task(self._sweep_forever(), name="upload sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def sweep(self) -> int:
        """One sweep now; how many uploads it deleted."""
        deleted = await sweep_uploads(self.gw, utcnow() - timedelta(seconds=self.ttl_s))
        if deleted:
            log.info("deleted %d upload(s) older than %g h that no active run reads", deleted,
                     self.gw.settings.upload_ttl_h)
        return deleted

    async def _sweep_forever(self) -> None:
        interval = min(SWEEP_INTERVAL_S, max(self.ttl_s / 4, 1.0))
        while True:
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - the database may be restarting: try again next time
                log.warning("upload sweep failed; retrying in %.0f s", interval, exc_info=True)
            await asyncio.sleep(interval)
