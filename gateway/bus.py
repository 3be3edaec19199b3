"""What the gateway puts on NATS: jobs (signed: `shared.jobsign`), its own run events (attempt 0) and cancel
signals.

Every JetStream publish carries a `Nats-Msg-Id`, so publishing the same message again (a retry here, a
re-publish after a restart) is dropped by the stream instead of running a job twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import msgspec
import nats.errors

from gateway.errors import Unavailable
from gateway.state import GatewayState
from shared.contracts.commands import Job
from shared.contracts.common import utcnow
from shared.contracts.events import EventBase
from shared.jobsign import JobSigner
from shared.settings import Settings

log = logging.getLogger(__name__)

GATEWAY_RUNNER_ID = "gateway"
"""`runner_id` of the events the gateway publishes itself (attempt 0)."""
PUBLISH_ATTEMPTS = 3
PUBLISH_TIMEOUT_S = 2.0
_NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)


class PublishFailed(Unavailable):
    """NATS did not take a message."""


def job_msg_id(run_id: str, idempotency: tuple[str, str] | None) -> str:
    """`Nats-Msg-Id` of a run's job: the Idempotency-Key behind a short hash of its scope, else the run id."""
    if idempotency is None:
        return run_id
    scope, key = idempotency
    return f"{hashlib.sha256(scope.encode()).hexdigest()[:12]}:{key}"


def load_job_signer(settings: Settings) -> JobSigner | None:
    """The signer of `settings.job_signing_key_file` (raises `KeyFileError` when it cannot be read); None,
    with a warning, when no key is set: runners that check signatures will refuse every job."""
    if settings.job_signing_key_file is None:
        log.warning("no job signing key (TRAINFORGE_JOB_SIGNING_KEY_FILE): jobs are published unsigned, and "
                    "runners refuse them unless they run with TRAINFORGE_RUNNER_ALLOW_UNSIGNED_JOBS")
        return None
    return JobSigner.from_file(settings.job_signing_key_file)


async def _publish(
    gw: GatewayState, subject: str, payload: bytes, msg_id: str, headers: dict[str, str] | None = None
) -> None:
    delay = 0.2
    headers = {**(headers or {}), "Nats-Msg-Id": msg_id}
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            await gw.js.publish(subject, payload, timeout=PUBLISH_TIMEOUT_S, headers=headers)
            return
        except _NATS_ERRORS as exc:
            log.warning("publish to %s failed (attempt %d/%d): %r", subject, attempt, PUBLISH_ATTEMPTS, exc)
            if attempt == PUBLISH_ATTEMPTS:
                raise PublishFailed(f"NATS did not take the message on {subject} ({type(exc).__name__})") from exc
            await asyncio.sleep(delay)
            delay *= 3


async def publish_job(gw: GatewayState, job: Job, msg_id: str) -> None:
    """Publish the job, signed (header `Trainforge-Signature` over the subject and these exact bytes)."""
    subject, payload = gw.subjects.job(job.pool), msgspec.json.encode(job)
    signature = gw.job_signer.headers(subject, payload) if gw.job_signer is not None else None
    await _publish(gw, subject, payload, msg_id, signature)


async def publish_event(gw: GatewayState, event: EventBase) -> None:
    subject = gw.subjects.run_event(event.project_id, event.run_id, event.type)
    await _publish(gw, subject, msgspec.json.encode(event), event.msg_id)


async def signal_cancel(gw: GatewayState, run_id: str) -> None:
    """Record the cancel in the KV bucket (a runner claiming later sees it) and tell running runners now."""
    payload = msgspec.json.encode({"run_id": run_id, "requested_at": utcnow()})
    try:
        kv = await gw.js.key_value(gw.subjects.cancel_bucket)
        await kv.put(run_id, payload)
        await gw.nc.publish(gw.subjects.cancel(run_id), payload)
        await gw.nc.flush(timeout=PUBLISH_TIMEOUT_S)
    except _NATS_ERRORS as exc:
        raise PublishFailed(f"NATS did not take the cancel of run {run_id} ({type(exc).__name__})") from exc
