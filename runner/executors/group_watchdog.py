"""One watchdog process per runner that SIGKILLs the process groups of its jobs when the runner dies.

A runner killed with SIGKILL cannot stop its jobs itself. Each job's bash gets `PR_SET_PDEATHSIG` = SIGKILL,
but what bash started lives on; so the runner keeps one small `bash` beside it that knows the process group
of every job running now (the runner writes `+ <pgid>` / `- <pgid>` lines to its stdin as jobs start and end).
When the runner dies, the watchdog's stdin reaches its end (and its own parent-death signal, SIGTERM, arrives):
it SIGKILLs every group it knows and exits. A normal stop closes its stdin the same way, once no job runs.

One process for the runner's life instead of one per job: starting a bash per run cost the runner a fork and
exec on its event loop and a child to reap (about 5 % of its CPU at 40 short runs/s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

log = logging.getLogger(__name__)

SCRIPT = r"""declare -A groups
finish() { for g in "${!groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done; exit 0; }
trap finish TERM HUP
while read -r op g; do
  case "$op" in
    +) groups[$g]=1 ;;
    -) unset "groups[$g]" ;;
  esac
done
finish
"""
"""Groups by `+ pgid` / `- pgid` lines on stdin; at end of input or SIGTERM, SIGKILL each group still listed."""


class GroupWatchdog:
    """`guard(pgid)` when a job's process group starts, `release(pgid)` once it is gone, `aclose()` at the end.

    Started on first use; started again if it died (its death is logged: jobs of a runner killed meanwhile
    would outlive it)."""

    def __init__(self, spawn_options: Any) -> None:
        """`spawn_options(argv, sig)`: argv and keyword arguments for a child that gets `sig` when we die."""
        self._spawn_options = spawn_options
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def guard(self, pgid: int) -> bool:
        """Have group `pgid` killed if this runner dies; False when the watchdog cannot start."""
        process = await self._running()
        if process is None:
            return False
        return self._send(process, f"+ {pgid}\n")

    def release(self, pgid: int) -> None:
        """Group `pgid` has ended: forget it (its number may be reused)."""
        if self._process is not None and self._process.returncode is None:
            self._send(self._process, f"- {pgid}\n")

    async def aclose(self) -> None:
        """End the watchdog (it kills the groups still listed: none, once every job has ended)."""
        process, self._process = self._process, None
        if process is None or process.stdin is None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def _running(self) -> asyncio.subprocess.Process | None:
        async with self._lock:
            if self._process is not None and self._process.returncode is None:
                return self._process
            if self._process is not None:
                log.error("the job watchdog exited (code %s); starting a new one", self._process.returncode)
            argv, options = self._spawn_options(["bash", "-c", SCRIPT, "trainforge-watchdog"], signal.SIGTERM)
            try:
                self._process = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL, start_new_session=True, **options,
                )
            except OSError as exc:
                log.error("the job watchdog cannot start (%r)", exc)
                self._process = None
            return self._process

    @staticmethod
    def _send(process: asyncio.subprocess.Process, line: str) -> bool:
        assert process.stdin is not None
        try:
            process.stdin.write(line.encode())  # a few bytes into the pipe's buffer: does not block
        except (ConnectionError, RuntimeError):
            return False
        return True
