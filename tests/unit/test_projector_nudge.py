"""The projector's wait for its next batch ends early when the registrar nudges it: a training's run.completed,
held until its weights are registered, is stored at once instead of when the fetch under way ends."""

from __future__ import annotations

import asyncio

from gateway.projector import nudge_came_first


async def test_a_nudge_ends_the_wait_and_leaves_the_fetch_running() -> None:
    fetch: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
    nudged = asyncio.Event()
    waiting = asyncio.create_task(nudge_came_first(fetch, nudged))
    await asyncio.sleep(0)
    assert not waiting.done()  # neither has come yet
    nudged.set()
    assert await waiting is True
    assert not fetch.done() and not fetch.cancelled()  # the next loop pass takes it up
    assert not nudged.is_set()  # consumed


async def test_a_fetch_that_ends_first_is_taken_and_a_later_nudge_is_kept_for_the_next_wait() -> None:
    fetch: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
    nudged = asyncio.Event()
    waiting = asyncio.create_task(nudge_came_first(fetch, nudged))
    await asyncio.sleep(0)
    fetch.set_result(["a batch"])
    assert await waiting is False
    nudged.set()  # e.g. while that batch is stored
    another: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
    assert await nudge_came_first(another, nudged) is True  # returns at once
    assert not nudged.is_set()


async def test_a_nudge_with_the_fetch_already_done_gives_the_batch() -> None:
    fetch: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
    fetch.set_result([])
    nudged = asyncio.Event()
    nudged.set()
    assert await nudge_came_first(fetch, nudged) is False
    assert not nudged.is_set()
