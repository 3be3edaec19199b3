"""Reading a job's output pipes to their end once its processes are gone.

A reader forwards what it reads to the run's events, so it can be slow for as long as the bus is (a NATS
outage, a leader election): then the pipe's buffer holds the rest of the output, and the reader must be waited
for however long that takes, or the run would end with its last lines never published. Only a reader that
waits on a pipe which gives nothing more (a process outside the job still holds it open) is given up on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class WatchedPipe:
    """An output pipe that records whether its reader is waiting on it, and since when."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream
        self._waiting_since: float | None = None

    async def read(self, n: int = -1) -> bytes:
        return await self._wait(self._stream.read(n))

    async def readline(self) -> bytes:
        return await self._wait(self._stream.readline())

    async def _wait(self, operation: Awaitable[T]) -> T:
        self._waiting_since = time.monotonic()
        try:
            return await operation
        finally:
            self._waiting_since = None

    def idle_s(self) -> float:
        """How long its reader has been waiting on the pipe for more (0 while it handles what it read)."""
        since = self._waiting_since
        return 0.0 if since is None else time.monotonic() - since


async def drain(readers: list[tuple[asyncio.Task[None], WatchedPipe]], idle_s: float) -> None:
    """Wait until every reader has reached the end of its pipe; cancel one that has waited `idle_s` on a pipe
    giving nothing (it is held open by a stray process). Raises the first error a reader ended with."""
    while pending := [(task, pipe) for task, pipe in readers if not task.done()]:
        for task, pipe in pending:
            if pipe.idle_s() >= idle_s:
                task.cancel()
        await asyncio.wait([task for task, _ in pending], timeout=min(idle_s, 0.25))
    for task, _ in readers:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
