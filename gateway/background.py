"""The gateway's background services (projector, event hub, dispatcher, ...): one small protocol, and the
supervisor that starts them in order, restarts one whose task has crashed, and stops them in reverse order.

`/ready` asks every service `healthy()`: one that is not answers 503 naming it (`"projector": "crashed;
restarting"`) until the supervisor has it running again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, runtime_checkable

from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 1.0
"""How often the supervisor asks each service whether it is alive (`/ready` asks at once, not on this beat)."""
RESTART_BACKOFF_S = 0.5
"""Wait before the first restart of a crashed service; doubled for each further failed restart."""
RESTART_BACKOFF_MAX_S = 30.0


@runtime_checkable
class BackgroundService(Protocol):
    """A long-lived helper of the gateway, started by the lifespan once NATS and the database are there."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def healthy(self) -> bool:
        """False once its work has stopped by itself (its task crashed or returned); True while it runs."""
        ...


class TaskService:
    """Mixin for the services whose work is one asyncio task in `self._task`: healthy while that task runs."""

    _task: asyncio.Task[Any] | None

    def healthy(self) -> bool:
        task = self._task
        return task is not None and not task.done()

    async def _cancel_task(self) -> None:
        """Cancel the task, wait until it has ended, and forget it (what each `stop()` does first)."""
        if self._task is not None:
            await cancel_and_wait(self._task)  # again if a NATS call swallowed the first cancel (shared.tasks)
            self._task = None


class Supervisor:
    """Starts the named services in order, watches them, restarts a crashed one with backoff (stop, then
    start), and stops them in reverse order."""

    def __init__(self, services: list[tuple[str, BackgroundService]]) -> None:
        self.services = services
        self._started: list[tuple[str, BackgroundService]] = []
        self._restarting: dict[str, int] = {}
        """Name -> failed restarts so far, while a service is down."""
        self._watch: asyncio.Task[None] | None = None
        self._restarts: set[asyncio.Task[None]] = set()
        self.restarts = 0
        """Restarts done since start (Prometheus could show it; tests read it)."""

    async def start(self) -> None:
        for name, service in self.services:
            await service.start()
            self._started.append((name, service))
        self._watch = asyncio.create_task(self._watch_forever(), name="service-supervisor")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        for task in self._restarts:
            task.cancel()
        await asyncio.gather(*self._restarts, return_exceptions=True)
        for name, service in reversed(self._started):
            try:
                await service.stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("stopping %s failed", name)
        self._started.clear()

    def health(self) -> dict[str, str]:
        """Each started service's state: `ok`, or `crashed; restarting` while it is down."""
        out = {}
        for name, service in self._started:
            if service.healthy():
                out[name] = "ok"
            else:
                tries = self._restarting.get(name, 0)
                out[name] = "crashed; restarting" + (f" (failed {tries}x)" if tries else "")
        return out

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            for name, service in list(self._started):
                if not service.healthy() and name not in self._restarting:
                    self._restarting[name] = 0
                    task = asyncio.create_task(self._restart(name, service), name=f"restart-{name}")
                    self._restarts.add(task)
                    task.add_done_callback(self._restarts.discard)

    async def _restart(self, name: str, service: BackgroundService) -> None:
        log.error("gateway service %s has stopped by itself; restarting it", name)
        backoff = RESTART_BACKOFF_S
        try:
            while True:
                try:
                    await service.stop()
                except Exception:  # noqa: BLE001 - what was left of it is gone either way
                    log.exception("stopping crashed %s failed", name)
                await asyncio.sleep(backoff)
                try:
                    await service.start()
                except Exception:  # noqa: BLE001 - tried again after a longer wait
                    self._restarting[name] += 1
                    log.exception("restarting %s failed (%d); next try in %.1f s", name, self._restarting[name],
                                  min(backoff * 2, RESTART_BACKOFF_MAX_S))
                    backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
                    continue
                self.restarts += 1
                log.warning("gateway service %s restarted", name)
                return
        finally:
            self._restarting.pop(name, None)
