"""Scheduling rules both sides apply: whether a runner fits a run, and the names of a run's leases.

The gateway's dispatcher checks fit against runner heartbeats before it publishes a job; the runner checks it
again against its own devices when it fetches one (a pool may mix runners), and takes the run's leases in KV
`Subjects.leases_bucket` before it claims it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import msgspec

from shared import names as _names
from shared.contracts.commands import Limits, Requirements
from shared.contracts.events import DeviceInfo

ANONYMOUS = "_anonymous"
"""Lease key token of runs without an owner (all of them count as one user)."""
_KEY_TOKEN = re.compile(_names.whole(r"[A-Za-z0-9_-]{1,64}"))


def misfit(kind: str, requirements: Requirements | None, devices: Sequence[DeviceInfo], kinds: Sequence[str]) -> str | None:
    """Why a runner with `devices` that takes `kinds` cannot run a run of `kind` needing `requirements`;
    None when it can."""
    if kind not in kinds:
        return f"takes no {kind} runs"
    req = requirements or Requirements()
    gpus = [d for d in devices if d.kind == "cuda"]
    if req.needs_gpu:
        if not gpus:
            return "has no GPU"
        if req.min_gpu_memory_mb is not None:
            gpus = [g for g in gpus if (g.memory_total_mb or 0) >= req.min_gpu_memory_mb]
            if not gpus:
                return f"has no GPU with ≥ {req.min_gpu_memory_mb} MB memory"
        if len(gpus) < req.gpus:
            return f"has fewer than {req.gpus} GPUs"
    elif req.device == "cpu" and not any(d.kind == "cpu" for d in devices):
        return "runs on GPUs, not the CPU"
    return None


def requirement_text(requirements: Requirements | None) -> str:
    """`"2 GPUs with ≥ 16000 MB memory"`, `"a CPU"`, ... for wait reasons."""
    req = requirements or Requirements()
    if req.needs_gpu:
        what = "a GPU" if req.gpus == 1 else f"{req.gpus} GPUs"
        if req.min_gpu_memory_mb is not None:
            what += f" with ≥ {req.min_gpu_memory_mb} MB memory"
        return what
    return "a CPU" if req.device == "cpu" else "any device"


def owner_token(owner_id: str | None) -> str:
    """The owner's token in lease keys: the id itself when it is key-safe, else a short hash of it."""
    if owner_id is None:
        return ANONYMOUS
    if _KEY_TOKEN.match(owner_id) and owner_id != ANONYMOUS:
        return owner_id
    return "h" + hashlib.sha256(owner_id.encode()).hexdigest()[:20]


def lease_groups(limits: Limits | None, owner_id: str | None, project_id: str) -> list[tuple[str, int]]:
    """(key prefix, slots) of every limit a run counts against: `global`, `user.<owner>`, `project.<id>`.
    A run holds one key `<prefix>.<n>` (n < slots) of each group while it runs."""
    if limits is None:
        return []
    groups = [
        ("global", limits.total),
        (f"user.{owner_token(owner_id)}", limits.per_user),
        (f"project.{project_id}", limits.per_project),
    ]
    return [(prefix, slots) for prefix, slots in groups if slots > 0]


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The value of a lease key: which attempt of which run holds it."""

    run_id: str
    runner_id: str
    attempt: int


def lease_holder(value: bytes | None) -> str | None:
    """The run that holds a lease key with this value; None when it is not a lease record."""
    try:
        return msgspec.json.decode(value or b"", type=LeaseRecord).run_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


DISPATCHER_KEY = "dispatcher"
"""The leader lock of the gateways' dispatchers, in the leases bucket."""
