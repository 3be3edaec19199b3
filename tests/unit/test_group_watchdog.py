"""The runner's one job watchdog: it kills the process groups it guards when the runner goes, and no other."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import textwrap

from runner.executors.group_watchdog import GroupWatchdog
from runner.executors.local import _spawn_options, group_members


async def _group(command: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec("bash", "-c", command, start_new_session=True)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


async def _gone(pgid: int) -> None:
    while group_members(pgid):  # noqa: ASYNC110 - polling the process table
        await asyncio.sleep(0.02)


async def test_closing_kills_the_groups_still_guarded_and_spares_released_ones() -> None:
    watchdog = GroupWatchdog(_spawn_options)
    guarded, released = await _group("sleep 600 & wait"), await _group("sleep 600 & wait")
    try:
        assert await watchdog.guard(guarded.pid) and await watchdog.guard(released.pid)
        watchdog.release(released.pid)
        await watchdog.aclose()
        await asyncio.wait_for(_gone(guarded.pid), 10)
        assert group_members(released.pid)  # forgotten: not the watchdog's to kill (its number may be reused)
    finally:
        _kill_group(released.pid)
        await released.wait()
        await guarded.wait()


async def test_a_runner_killed_with_9_takes_every_guarded_group_with_it() -> None:
    program = textwrap.dedent("""
        import asyncio, sys
        from runner.executors.group_watchdog import GroupWatchdog
        from runner.executors.local import _spawn_options
        async def main():
            watchdog = GroupWatchdog(_spawn_options)
            for _ in range(3):
                job = await asyncio.create_subprocess_exec("bash", "-c", "sleep 600 & wait", start_new_session=True)
                await watchdog.guard(job.pid)
                print(job.pid, flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
    """)
    runner = await asyncio.create_subprocess_exec(sys.executable, "-c", program, stdout=asyncio.subprocess.PIPE)
    assert runner.stdout is not None
    groups = [int(await runner.stdout.readline()) for _ in range(3)]
    try:
        assert all(group_members(g) for g in groups)
        runner.kill()
        await runner.wait()
        await asyncio.wait_for(asyncio.gather(*(_gone(g) for g in groups)), 10)
    finally:
        for g in groups:
            _kill_group(g)
