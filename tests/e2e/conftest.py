from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.e2e.browser_support import ensure_chromium
from tests.e2e.stackctl import Stack


def stack_env(settings: Settings) -> dict[str, str]:
    """Point `trainforge up` at the test's own NATS, database and bus prefix, with short timeouts."""
    return {
        "TRAINFORGE_NATS_URL": settings.nats_url or "",
        "TRAINFORGE_DATABASE_URL": settings.database_url or "",
        "TRAINFORGE_BUS_PREFIX": settings.bus_prefix,
        "TRAINFORGE_JOB_ACK_WAIT_S": "3",
        "TRAINFORGE_RUNNER_HEARTBEAT_S": "1",
        "TRAINFORGE_SHUTDOWN_GRACE_S": "2",
        "TRAINFORGE_CANCEL_GRACE_S": "2",
        "TRAINFORGE_SSE_KEEPALIVE_S": "1",
        "TRAINFORGE_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def stack(settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    runners = getattr(request, "param", 1)
    s = Stack(state_dir=tmp_path / "state", env=stack_env(settings), runners=runners).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium (`tests.e2e.browser_support`), installed once per session when missing."""
    return ensure_chromium()
