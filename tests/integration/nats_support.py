"""Waiting for a NATS server or cluster to serve JetStream (the cluster and fleet tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import nats


async def jetstream_ready(url: str, timeout: float = 60.0, *, describe: Callable[[], str] | None = None) -> None:
    """Until the server or cluster at `url` (comma-separated URLs) has elected its JetStream meta leader (a
    stream can be made); on a timeout the failure shows `describe()` (e.g. each node's exit code and last
    log lines)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(Exception):
                    nc = await nats.connect(url.split(","), connect_timeout=1, max_reconnect_attempts=0)
                    try:
                        await nc.jetstream().account_info()
                        return
                    finally:
                        await nc.close()
                await asyncio.sleep(0.2)
    except TimeoutError:
        details = describe() if describe is not None else ""
        raise AssertionError(f"no JetStream meta leader at {url} within {timeout} s\n{details}") from None
