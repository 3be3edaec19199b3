"""Stopping asyncio tasks for sure.

Python 3.11's `asyncio.wait_for` (which nats-py uses for every request and publish) can lose a cancel that
lands just as the call it waits on completes (CPython gh-86296, fixed in 3.12): the cancelled task then goes on
as if nothing happened, and a loop like a heartbeat never ends. `cancel_and_wait` cancels again until the
tasks have ended. `sleep_unless` is the pause of a service's loop that its stop cuts short.
"""

from __future__ import annotations

import asyncio
from typing import Any

AGAIN_AFTER_S = 1.0


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None, again_after_s: float = AGAIN_AFTER_S) -> None:
    """Cancel `tasks` (None ones skipped) and wait until every one has ended; a task still running after
    `again_after_s` is cancelled again. Their exceptions are retrieved (not raised)."""
    all_tasks = [task for task in tasks if task is not None]
    pending = {task for task in all_tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_after_s)
    await asyncio.gather(*all_tasks, return_exceptions=True)


async def sleep_unless(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less when `stopping` is set meanwhile."""
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        pass
