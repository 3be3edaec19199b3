"""`shared.tasks.cancel_and_wait`: a task that lost a cancel (Python 3.11's wait_for race) still ends."""

from __future__ import annotations

import asyncio

from shared.tasks import cancel_and_wait


async def test_a_task_that_swallows_a_cancel_is_cancelled_again_until_it_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:  # what a heartbeat loop does when a NATS call swallowed its cancel
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await cancel_and_wait(task, None, again_after_s=0.05)
    assert task.cancelled() and swallowed == 1


async def test_finished_and_failing_tasks_are_waited_for_without_raising() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    done = asyncio.create_task(asyncio.sleep(0))
    failing = asyncio.create_task(fails())
    await asyncio.sleep(0.01)
    await cancel_and_wait(done, failing)
    assert done.done() and isinstance(failing.exception(), ValueError)
