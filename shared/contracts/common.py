"""Small shared vocabulary: run states and failure causes."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime

from shared import names as _names


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    RUNNING = "running"
    PAUSED = "paused"
    """Stopped in place (`POST /runs/{id}/pause`), only from `running`: keeps its runner, leases and job."""
    CANCELING = "canceling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def active(self) -> bool:
        return not self.terminal


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED})
ACTIVE_STATUSES = tuple(s.value for s in RunStatus if s not in TERMINAL_STATUSES)
"""The statuses of a run that has not ended (queued, claimed, running, paused, canceling)."""


class FailureCause(enum.StrEnum):
    """Who is to blame for a failed run: the job itself (user) or the platform (infrastructure)."""

    USER = "user"
    INFRASTRUCTURE = "infrastructure"


TOKEN_RE = _names.TOKEN_RE
"""What may appear as one token of a NATS subject (ids, pool names, runner ids)."""


def new_id() -> str:
    """A random id that is also a valid NATS subject token."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)
