"""A run's leases: how the limits on runs running at once hold across hosts.

For every limit of a job (`Job.limits`: global, per user, per project) the runner that claims it takes one key
`<group>.<n>` (n < the limit) of KV `Subjects.leases_bucket` with `kv.create`, which fails when the key
exists. All taken, it claims the run; one missing, it gives back what it took and hands the job back. While
the run runs the runner rewrites its keys on every runner heartbeat; the bucket drops a key `lease_ttl_s`
after its last write, so a runner killed with -9 frees its leases when that time has passed.

A key records the run id: a new attempt of the same run (its previous runner died) takes over the keys the
dead attempt still holds instead of waiting for them to lapse.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.contracts import Job
from shared.scheduling import LeaseRecord, lease_groups

log = logging.getLogger(__name__)

__all__ = ["LeaseRecord", "RunLeases"]


@dataclass(slots=True)
class _Held:
    key: str
    revision: int


class RunLeases:
    """The leases of one run on this runner: `acquire()`, `refresh()` while it runs, `release()` at the end."""

    def __init__(self, kv: KeyValue, job: Job, *, runner_id: str, attempt: int) -> None:
        self._kv = kv
        self._job = job
        self._value = msgspec.json.encode(LeaseRecord(run_id=job.run_id, runner_id=runner_id, attempt=attempt))
        self._groups = lease_groups(job.limits, job.owner_id, job.project_id)
        self._held: list[_Held] = []

    @property
    def keys(self) -> list[str]:
        return [h.key for h in self._held]

    async def acquire(self) -> str | None:
        """Take one key of every group; None when all are held, else which limit is full (nothing held)."""
        for prefix, slots in self._groups:
            held = await self._take_one(prefix, slots)
            if held is None:
                await self.release()
                return f"{prefix} limit of {slots} running run(s) reached"
            self._held.append(held)
        return None

    async def _take_one(self, prefix: str, slots: int) -> _Held | None:
        free: list[str] = []
        for n in range(slots):
            key = f"{prefix}.{n}"
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:  # never taken, lapsed, or deleted
                free.append(key)
                continue
            try:
                holder = msgspec.json.decode(entry.value or b"", type=LeaseRecord)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if holder.run_id == self._job.run_id:  # an earlier attempt of this run held it: take it over
                try:
                    return _Held(key, await self._kv.update(key, self._value, last=entry.revision))
                except KeyWrongLastSequenceError:
                    continue
        for key in free:
            try:
                return _Held(key, await self._kv.create(key, self._value))
            except KeyWrongLastSequenceError:  # taken in between
                continue
        return None

    async def refresh(self) -> None:
        """Rewrite the held keys so that they do not lapse; a key someone else took meanwhile is lost."""
        for held in list(self._held):
            try:
                held.revision = await self._kv.update(held.key, self._value, last=held.revision)
            except KeyWrongLastSequenceError:
                log.warning("run %s: lease %s lapsed and was taken by another run", self._job.run_id, held.key)
                self._held.remove(held)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("run %s: lease %s not renewed (%r)", self._job.run_id, held.key, exc)

    async def release(self) -> None:
        """Delete the held keys (only if they are still ours)."""
        held, self._held = self._held, []
        for lease in held:
            try:
                await self._kv.delete(lease.key, last=lease.revision)
            except KeyWrongLastSequenceError:
                pass
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("run %s: lease %s not released (%r); it lapses by itself", self._job.run_id,
                            lease.key, exc)
