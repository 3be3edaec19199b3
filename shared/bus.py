"""Connecting to NATS and declaring the JetStream topology (streams, consumers, buckets).

Both the gateway and the runners call `ensure_topology` at start; it is idempotent, so whichever starts
first creates what is missing and a later start with changed settings updates it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from shared.settings import Settings
from shared.subjects import Subjects

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_S = 120.0
JOBS_DUPLICATE_WINDOW_S = 24 * 3600.0
"""Jobs are few and must never run twice: a re-published job is dropped for a day."""


RATE_LIMIT_TTL_S = 120.0
"""How long a rate-limit count outlives its last write (the limits count per minute)."""
DRAIN_TIMEOUT_S = 5.0
"""How long closing a connection may wait for its subscriptions to drain before it closes anyway (nats-py's
default, 30 s, would outlast the grace `trainforge up` gives a part to stop)."""


async def connect(
    url: str,
    *,
    name: str,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    connect_timeout: float = 5.0,
) -> NATS:
    """Connect with endless reconnects (a restart of the NATS server is survived, not fatal)."""

    async def _disconnected() -> None:
        log.warning("nats: disconnected from %s", url)
        if on_disconnect is not None:
            await on_disconnect()

    async def _reconnected() -> None:
        log.info("nats: reconnected to %s", url)

    async def _error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    return await nats.connect(
        url,
        name=name,
        connect_timeout=connect_timeout,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        drain_timeout=DRAIN_TIMEOUT_S,
        disconnected_cb=_disconnected,
        reconnected_cb=_reconnected,
        error_cb=_error,
    )


async def _add_or_update_stream(js: JetStreamContext, config: js_api.StreamConfig) -> None:
    try:
        await js.stream_info(config.name)  # type: ignore[arg-type]
    except NotFoundError:
        await js.add_stream(config)
        log.info("jetstream: created stream %s", config.name)
        return
    try:
        await js.update_stream(config)
    except BadRequestError as exc:  # e.g. a change JetStream does not allow in place
        log.warning("jetstream: kept stream %s as it is (%s)", config.name, exc)


async def ensure_topology(js: JetStreamContext, settings: Settings) -> None:
    names = Subjects(settings.bus_prefix)
    await _add_or_update_stream(
        js,
        js_api.StreamConfig(
            name=names.jobs_stream,
            subjects=[names.jobs_all],
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            storage=js_api.StorageType.FILE,
            duplicate_window=JOBS_DUPLICATE_WINDOW_S,
            description="Trainforge jobs, one subject per runner pool",
        ),
    )
    max_age = settings.events_max_age_days * 86400 if settings.events_max_age_days > 0 else 0
    await _add_or_update_stream(
        js,
        js_api.StreamConfig(
            name=names.events_stream,
            subjects=[names.events_all],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            max_age=max_age,
            max_bytes=settings.events_max_bytes,
            duplicate_window=DUPLICATE_WINDOW_S,
            description="Trainforge run events",
        ),
    )
    await _add_or_update_stream(
        js,
        js_api.StreamConfig(
            name=names.runners_stream,
            subjects=[names.runner_heartbeats_all],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            max_msgs_per_subject=1,
            max_age=7 * 86400,
            description="Latest heartbeat of each Trainforge runner",
        ),
    )
    try:
        await js.key_value(names.cancel_bucket)
    except Exception:  # noqa: BLE001 - nats-py raises BucketNotFoundError or NotFoundError by version
        await js.create_key_value(bucket=names.cancel_bucket, history=1, ttl=30 * 86400)
    try:
        await js.key_value(names.leases_bucket)
    except Exception:  # noqa: BLE001 - as above
        await js.create_key_value(bucket=names.leases_bucket, history=1, ttl=settings.lease_ttl_s)
    try:
        await js.key_value(names.rate_limits_bucket)
    except Exception:  # noqa: BLE001 - as above
        await js.create_key_value(bucket=names.rate_limits_bucket, history=1, ttl=RATE_LIMIT_TTL_S,
                                  storage=js_api.StorageType.MEMORY)


async def ensure_pool_consumer(js: JetStreamContext, settings: Settings, pool: str) -> str:
    """The durable pull consumer that every runner of `pool` shares; returns its name."""
    names = Subjects(settings.bus_prefix)
    durable = names.pool_consumer(pool)
    config = js_api.ConsumerConfig(
        durable_name=durable,
        filter_subject=names.job(pool),
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=settings.job_ack_wait_s,
        max_deliver=settings.job_max_deliver,
        max_ack_pending=-1,
        deliver_policy=js_api.DeliverPolicy.ALL,
    )
    try:
        await js.add_consumer(names.jobs_stream, config)
    except BadRequestError as exc:  # exists with other settings: keep it, say so
        log.warning("jetstream: kept consumer %s as it is (%s)", durable, exc.description)
    return durable
