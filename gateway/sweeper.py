"""Deletes what nobody will use again: uploaded images `upload_ttl_h` old that no queued or running run reads,
datasets a gateway left `preparing` when it stopped mid-way (with their files), and request bodies (archives,
images, weights) a gateway that stopped mid-request left in its incoming folders.

Every gateway sweeps (each delete is one statement, so two gateways never delete the same thing twice); a
sweep runs at start and then every `SWEEP_INTERVAL_S`, or sooner for a short upload TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from pathlib import Path

import anyio.to_thread

from gateway.background import TaskService
from gateway.services.artifacts import sweep_uploads
from gateway.services.datasets import sweep_abandoned_preparations, uploads_dir
from gateway.state import GatewayState
from gateway.uploads import incoming_dir
from shared.contracts.common import utcnow

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 600.0
ABANDONED_AFTER = timedelta(hours=24)
"""A dataset still `preparing`, or a request body still in an incoming folder, this long after it began was
left by a gateway that stopped."""


class Sweeper(TaskService):
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
        await self._cancel_task()

    async def sweep(self) -> dict[str, int]:
        """One sweep now; how many uploads, abandoned datasets and abandoned request bodies it deleted."""
        now = utcnow()
        settings = self.gw.settings
        swept = {"uploads": 0, "datasets": 0, "incoming_files": 0}
        if (ttl := self.upload_ttl) is not None:
            swept["uploads"] = await sweep_uploads(self.gw, now - ttl)
        swept["datasets"] = await sweep_abandoned_preparations(self.gw.sessionmaker, settings, now - ABANDONED_AFTER)
        swept["incoming_files"] = await anyio.to_thread.run_sync(
            _remove_files_older_than, [uploads_dir(settings), incoming_dir(settings)],
            (now - ABANDONED_AFTER).timestamp())
        if any(swept.values()):
            log.info("swept %d upload(s) older than %g h that no active run reads, %d abandoned dataset "
                     "preparation(s), %d abandoned request bod(ies)", swept["uploads"], settings.upload_ttl_h,
                     swept["datasets"], swept["incoming_files"])
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


def _remove_files_older_than(folders: list[Path], before: float) -> int:
    removed = 0
    for folder in folders:
        for path in folder.glob("*") if folder.is_dir() else ():
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_mtime < before:
                    path.unlink()
                    removed += 1
    return removed
