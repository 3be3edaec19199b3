"""One live attempt per run: the attempt claim, a fencing key per run in KV `Subjects.attempts_bucket`.

A job redelivered by JetStream (its runner missed `in_progress` for `job_ack_wait_s`: dead, cut off from the
bus, or the bus itself was down) must not start while the attempt before it may still run. So each attempt
holds key `<run_id>` of the attempts bucket, `ClaimRecord` as value, the key's revision as fencing token:

- the holder rewrites it (`update(last=revision)`) every `runner_heartbeat_s`; a rewrite that finds another
  revision means someone took the claim over: the holder stops its job at once and publishes no terminal
  event (the run belongs to the newer attempt);
- a holder that has not rewritten it for `attempt_hold_s` (counted from the *send* time of its last rewrite
  that succeeded: it cannot know whether the bus or only its own link is down) stops its job itself;
- a new attempt takes the key with `create`; if the key exists it *stands by* (keeps its delivery with
  `in_progress`, takes no lease, starts nothing) and takes the key over with `update(last=revision)` only
  when the key has not been written for `attempt_hold_s + takeover_margin` by the server's clock (the entry's
  timestamp against a write of its own), i.e. once the holder has provably stopped. A bus outage cannot make
  the key look older to the standby than it looks to the holder, so after an outage the holder's rewrite
  (within a heartbeat of reconnecting) wins whenever its own deadline has not passed;
- the holder of a record written by an earlier process of the *same runner id* (a restarted runner) is known
  dead: its claim is taken over at once, and the restarted runner naks that delivery, so the next attempt
  starts now instead of after the ack wait;
- an attempt that ends with its command left running (docker backend, `runner_reattach = reattach`: the runner
  stopped with `shutdown_action = requeue`, or its job task was cancelled) does not delete the key: its last
  rewrite marks it `detached`. Only the same runner id takes a detached claim over (its next process adopts it
  at start and reattaches on the next delivery); another runner id stands by on it however long it is silent,
  and hands its delivery back when the owner is live again (`takeover` is the rule). An operator who knows the
  detached host is gone for good cancels the run (or restarts that runner id);
- the key is deleted after the attempt's terminal event and ack (a delete marker stays); the bucket forgets keys
  after 7 days. A key never written at all (`Claim.first`) tells the new attempt that no attempt ran the run
  before it: it needs no look for an earlier attempt's checkpoint, and its look for terminal events may go out
  with the claim; after any other take that look is made once the claim is held (an earlier holder cannot end
  the run after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from runner.claims_ledger import ClaimsLedger
from shared.subjects import Subjects

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 2.0
"""One KV call; longer counts as the bus being unreachable for this try."""
CLOCK_KEY = "clock"


class ClaimRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The value of a run's attempt key."""

    run_id: str
    project_id: str = ""
    runner_id: str
    instance: str
    """Unique per runner process: a restarted runner with the same id knows the record is its dead self's."""
    attempt: int
    reply: str = ""
    """The ack subject of the holding delivery (a restarted runner naks it: the next attempt starts at once)."""
    detached: bool = False
    """The attempt ended with its command still running (left for a next attempt of the same runner id to
    reattach to): never taken over by silence, only by `runner_id` itself."""


Takeover = Literal["own", "restarted", "silent", "standby"]


def takeover(holder: ClaimRecord, record: ClaimRecord, *, instance: str, age_s: float | None,
             after_s: float) -> Takeover:
    """What a new attempt (`record`, of process `instance`) does about the claim `holder` wrote `age_s` ago:
    it is its own already, take it over (its runner restarted; a detached claim only this way), take it over
    (silent for `after_s`), or stand by."""
    if holder.instance == instance and holder.attempt == record.attempt and not holder.detached:
        return "own"
    if holder.runner_id == record.runner_id and (holder.instance != instance or holder.detached):
        return "restarted"
    if holder.detached or age_s is None or age_s < after_s:
        return "standby"
    return "silent"


def new_instance() -> str:
    return uuid.uuid4().hex


def _bucket_stream(bucket: str) -> str:
    return f"KV_{bucket}"


@dataclass
class Claim:
    """The attempt claim of one run held by this runner."""

    kv: KeyValue
    key: str
    record: ClaimRecord
    revision: int
    confirmed_at: float
    """`time.monotonic()` at which the last rewrite that succeeded was *sent*."""
    lost: str | None = None
    """Why the claim is gone (another attempt took it, or the bus was unreachable too long)."""
    first: bool = False
    """The key had never been written: no attempt of the run held it before this one, so none ran it (what
    the gateway alone can publish, a cancel of the queued run, is still looked for)."""

    @property
    def value(self) -> bytes:
        return msgspec.json.encode(self.record)

    async def renew(self) -> bool:
        """Rewrite the key; False when it is lost (`lost` says why). Bus errors leave it held (not confirmed)."""
        if self.lost is not None:
            return False
        sent = time.monotonic()
        try:
            self.revision = await asyncio.wait_for(self.kv.update(self.key, self.value, last=self.revision),
                                                   CALL_TIMEOUT_S)
        except KeyWrongLastSequenceError:
            current = await _read(self.kv, self.key)
            if current is not None and current[0] == self.record:  # our write landed, its answer was lost
                self.revision, self.confirmed_at = current[1], sent
                return True
            holder = current[0] if current is not None else None
            self.lost = (f"attempt {holder.attempt} (runner {holder.runner_id}) took over the claim" if holder
                         else "the claim was released by someone else")
            return False
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("run %s: attempt claim not renewed (%r)", self.record.run_id, exc)
            return True
        self.confirmed_at = sent
        return True

    def unconfirmed_for(self) -> float:
        return time.monotonic() - self.confirmed_at

    async def detach(self) -> bool:
        """The attempt ends with its command left running: the last rewrite marks the claim `detached` instead of
        deleting it. False when it is lost, or the bus did not confirm (then it lapses like a dead holder's)."""
        if self.lost is not None:
            return False
        self.record = msgspec.structs.replace(self.record, detached=True)
        try:
            self.revision = await asyncio.wait_for(self.kv.update(self.key, self.value, last=self.revision),
                                                   CALL_TIMEOUT_S)
        except KeyWrongLastSequenceError:
            current = await _read(self.kv, self.key)
            ok = current is not None and current[0] == self.record
        except (nats.errors.Error, TimeoutError) as exc:
            log.error("run %s: attempt claim not marked detached (%r): another runner may take it over once it "
                      "is silent, while the command still runs", self.record.run_id, exc)
            ok = False
        else:
            ok = True
        self.lost = "detached"
        return ok

    async def release(self) -> None:
        """Delete the key if it is still ours."""
        if self.lost is not None:
            return
        try:
            await asyncio.wait_for(self.kv.delete(self.key, last=self.revision), CALL_TIMEOUT_S)
        except KeyWrongLastSequenceError:
            pass
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("run %s: attempt claim not released (%r); the next attempt waits for it to lapse",
                        self.record.run_id, exc)
        self.lost = "released"


async def _read(kv: KeyValue, key: str) -> tuple[ClaimRecord, int] | None:
    try:
        entry = await asyncio.wait_for(kv.get(key), CALL_TIMEOUT_S)
    except KeyNotFoundError:
        return None
    try:
        return msgspec.json.decode(entry.value or b"", type=ClaimRecord), entry.revision or 0
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ClaimRecord(run_id="", runner_id="?", instance="?", attempt=0), entry.revision or 0


@dataclass(frozen=True)
class Standby:
    """The claim is held by another attempt that may still run; `age_s`: since its last write (server clock)."""

    holder: ClaimRecord
    age_s: float


class AttemptClaims:
    """Takes, and watches, the attempt claims of one runner process."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, subjects: Subjects, *, runner_id: str, instance: str,
                 hold_s: float, takeover_margin_s: float, ledger: Path) -> None:
        """`ledger`: a file naming the runs this runner id holds claims of, read by its next process."""
        self._ledger = ClaimsLedger(ledger)
        self._js = js
        self._kv = kv
        self._subjects = subjects
        self.runner_id = runner_id
        self.instance = instance
        self.hold_s = hold_s
        self.takeover_after_s = hold_s + takeover_margin_s

    async def try_take(self, record: ClaimRecord) -> Claim | Standby:
        """Take the run's claim now, or say who holds it. Raises nats errors when the bus cannot be reached."""
        key = record.run_id
        sent = time.monotonic()
        try:  # a run's first attempt, the common case: one round trip (`last=0`: the key was never written)
            revision = await asyncio.wait_for(self._kv.update(key, msgspec.json.encode(record), last=0),
                                              CALL_TIMEOUT_S)
        except KeyWrongLastSequenceError:
            pass  # held, or released (its delete marker stays with the bucket's TTL): look who had it
        else:
            return Claim(self._kv, key, record, revision, sent, first=True)
        while True:
            sent = time.monotonic()
            current = await _read(self._kv, key)
            if current is None:
                try:
                    revision = await asyncio.wait_for(self._kv.create(key, msgspec.json.encode(record)),
                                                      CALL_TIMEOUT_S)
                except KeyWrongLastSequenceError:
                    continue  # taken in between: look again
                return Claim(self._kv, key, record, revision, sent)
            holder, revision = current
            age = None if holder.runner_id == self.runner_id or holder.detached else await self._age(key)
            rule = takeover(holder, record, instance=self.instance, age_s=age, after_s=self.takeover_after_s)
            if rule == "own":
                return Claim(self._kv, key, record, revision, sent)
            if rule == "standby":
                return Standby(holder, age or 0.0)
            try:
                revision = await asyncio.wait_for(
                    self._kv.update(key, msgspec.json.encode(record), last=revision), CALL_TIMEOUT_S)
            except KeyWrongLastSequenceError:
                continue  # renewed or taken in between: look again
            why = ("its runner restarted" + (" (detached)" if holder.detached else "") if rule == "restarted"
                   else f"silent for {age:.0f} s")
            log.warning("run %s: attempt %d takes the claim over from attempt %d of runner %s (%s)",
                        record.run_id, record.attempt, holder.attempt, holder.runner_id, why)
            return Claim(self._kv, key, record, revision, sent)

    async def _age(self, key: str) -> float | None:
        """Seconds since the key was last written, by the server's clock; None if unknown."""
        stream = _bucket_stream(self._kv._name)  # noqa: SLF001 - nats-py keeps the bucket name there
        prefix = f"$KV.{self._kv._name}."  # noqa: SLF001
        try:
            entry = await asyncio.wait_for(self._js.get_last_msg(stream, prefix + key), CALL_TIMEOUT_S)
            await asyncio.wait_for(self._kv.put(f"{CLOCK_KEY}.{self.runner_id}", b""), CALL_TIMEOUT_S)
            now = await asyncio.wait_for(
                self._js.get_last_msg(stream, f"{prefix}{CLOCK_KEY}.{self.runner_id}"), CALL_TIMEOUT_S)
        except NotFoundError:
            return None
        if entry.time is None or now.time is None:
            return None
        return (now.time - entry.time).total_seconds()

    # -- what an earlier process of this runner id held (a file in the state folder: `runner.claims_ledger`) ----
    def remember(self, run_id: str) -> None:
        self._ledger.add(run_id)

    def forget(self, run_id: str) -> None:
        self._ledger.discard(run_id)

    async def predecessors(self) -> list[tuple[ClaimRecord, int]]:
        """Claims an earlier process of this runner id still holds (it is dead: this process has the id now)."""
        found = []
        for run_id in sorted(self._ledger.read()):
            current = await _read(self._kv, run_id)
            if current is not None and current[0].runner_id == self.runner_id and current[0].instance != self.instance:
                found.append(current)
        self._ledger.reset()
        return found

    async def drop(self, record: ClaimRecord, revision: int) -> None:
        """Delete a claim whose run has ended (if unchanged)."""
        with contextlib.suppress(KeyWrongLastSequenceError):
            await asyncio.wait_for(self._kv.delete(record.run_id, last=revision), CALL_TIMEOUT_S)
        self.forget(record.run_id)

    async def release_predecessor(self, record: ClaimRecord, revision: int) -> None:
        """Delete a dead predecessor's claim (if unchanged) and nak its delivery, so the next attempt starts now.
        A detached claim (its command still runs on this host) is adopted instead: rewritten with this process's
        instance and kept, so that only this runner id takes it, and a standby elsewhere sees its owner is back."""
        try:
            if record.detached:
                adopted = msgspec.structs.replace(record, instance=self.instance)
                await asyncio.wait_for(self._kv.update(record.run_id, msgspec.json.encode(adopted), last=revision),
                                       CALL_TIMEOUT_S)
                self.remember(record.run_id)
            else:
                await asyncio.wait_for(self._kv.delete(record.run_id, last=revision), CALL_TIMEOUT_S)
        except KeyWrongLastSequenceError:
            return  # someone took it meanwhile
        if record.reply:
            await self._js._nc.publish(record.reply, b"-NAK")  # noqa: SLF001 - a nak of that delivery
