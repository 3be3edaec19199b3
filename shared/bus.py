"""Connecting to NATS and declaring the JetStream topology (streams, consumers, buckets).

Both the gateway and the runners call `ensure_topology` at start; it is idempotent, so whichever starts
first creates what is missing and a later start with changed settings updates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from shared.logredact import redact
from shared.settings import Settings, SettingsError
from shared.subjects import Subjects

log = logging.getLogger(__name__)

TRANSIENT_BUS_ERRORS = (
    asyncio.TimeoutError,  # includes nats.errors.TimeoutError
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)
"""Errors after which the same call may succeed: the server is unreachable for a moment, or a stream's leader is
moving (a node of a cluster was lost)."""

DUPLICATE_WINDOW_S = 120.0
JOBS_DUPLICATE_WINDOW_S = 24 * 3600.0
"""Jobs are few and must never run twice: a re-published job is dropped for a day."""


RATE_LIMIT_TTL_S = 120.0
"""How long a rate-limit count outlives its last write (the limits count per minute)."""
ATTEMPTS_TTL_S = 7 * 86400.0
"""Attempt claims (`Subjects.attempts_bucket`) are forgotten this long after their last write."""
DRAIN_TIMEOUT_S = 5.0
"""How long closing a connection may wait for its subscriptions to drain before it closes anyway (nats-py's
default, 30 s, would outlast the grace `trainforge up` gives a part to stop)."""


def connect_options(settings: Settings) -> dict[str, Any]:
    """The nats-py `connect()` options that `settings` ask for: servers and credentials (the only place that
    turns `TRAINFORGE_NATS_*` into them)."""
    chosen = [name for name, value in (
        ("TRAINFORGE_NATS_USER", settings.nats_user),
        ("TRAINFORGE_NATS_TOKEN", settings.nats_token),
        ("TRAINFORGE_NATS_NKEY_SEED_FILE", settings.nats_nkey_seed_file),
        ("TRAINFORGE_NATS_CREDS_FILE", settings.nats_creds_file),
    ) if value]
    if len(chosen) > 1:
        raise SettingsError(f"set one kind of NATS credentials, not {' and '.join(chosen)}")
    if (settings.nats_password or settings.nats_password_file) and not settings.nats_user:
        raise SettingsError("TRAINFORGE_NATS_PASSWORD needs TRAINFORGE_NATS_USER")
    if settings.nats_password and settings.nats_password_file:
        raise SettingsError("set TRAINFORGE_NATS_PASSWORD or TRAINFORGE_NATS_PASSWORD_FILE, not both")
    options: dict[str, Any] = {"servers": [u.strip() for u in settings.effective_nats_url.split(",")],
                               "inbox_prefix": settings.nats_inbox_prefix}
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password or _read_password(settings.nats_password_file)
    elif settings.nats_token:
        options["token"] = settings.nats_token
    files = ((settings.nats_nkey_seed_file, "nkeys_seed"), (settings.nats_creds_file, "user_credentials"))
    for path, option in files:
        if path is None:
            continue
        if importlib.util.find_spec("nkeys") is None:
            raise SettingsError(f"{path}: nkey and .creds credentials need the `nkeys` package (pip install "
                                "nkeys)")
        if not path.is_file():
            raise SettingsError(f"NATS credentials file {path} not found")
        options[option] = str(path)
    return options


def _read_password(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise SettingsError(f"TRAINFORGE_NATS_PASSWORD_FILE: cannot read {path}: {exc.strerror}") from None


async def connect(
    target: Settings | str,
    *,
    name: str,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    connect_timeout: float = 5.0,
) -> NATS:
    """Connect with endless reconnects (a restart of the NATS server is survived, not fatal). `target`: the
    settings (server and credentials, see `connect_options`), or just a server URL."""
    options = connect_options(target) if isinstance(target, Settings) else {"servers": [target]}
    shown = redact(",".join(options["servers"]))
    nc = NATS()
    refused: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

    async def _disconnected() -> None:
        log.warning("nats: disconnected from %s", shown)
        if on_disconnect is not None:
            await on_disconnect()

    async def _reconnected() -> None:
        log.info("nats: reconnected to %s", shown)

    async def _error(exc: Exception) -> None:
        if not nc.is_connected and _is_auth_error(exc) and not refused.done():
            refused.set_result(exc)  # wrong credentials do not get better by retrying
        log.warning("nats: %s", exc)

    connecting = asyncio.ensure_future(nc.connect(
        **options,
        name=name,
        connect_timeout=connect_timeout,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        drain_timeout=DRAIN_TIMEOUT_S,
        disconnected_cb=_disconnected,
        reconnected_cb=_reconnected,
        error_cb=_error,
    ))
    try:
        await asyncio.wait([connecting, refused], return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        connecting.cancel()
        raise
    if not connecting.done():
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        with contextlib.suppress(Exception):
            await nc.close()
        raise BusAuthError(f"NATS at {shown} refused this client's credentials ({refused.result()}): check "
                           "TRAINFORGE_NATS_USER/_PASSWORD/_TOKEN/_NKEY_SEED_FILE/_CREDS_FILE or the URL")
    connecting.result()
    return nc


class BusAuthError(nats.errors.Error):
    """The NATS server refused the credentials."""


def _is_auth_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return isinstance(exc, nats.errors.Error) and ("authorization violation" in text
                                                   or "authentication" in text)


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
            num_replicas=settings.nats_replicas,
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
            num_replicas=settings.nats_replicas,
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
            num_replicas=settings.nats_replicas,
            max_msgs_per_subject=1,
            max_age=7 * 86400,
            description="Latest heartbeat of each Trainforge runner",
        ),
    )
    try:
        await js.key_value(names.cancel_bucket)
    except Exception:  # noqa: BLE001 - nats-py raises BucketNotFoundError or NotFoundError by version
        await js.create_key_value(bucket=names.cancel_bucket, history=1, ttl=30 * 86400,
                                  replicas=settings.nats_replicas)
    try:
        await js.key_value(names.leases_bucket)
    except Exception:  # noqa: BLE001 - as above
        await js.create_key_value(bucket=names.leases_bucket, history=1, ttl=settings.lease_ttl_s,
                                  replicas=settings.nats_replicas)
    try:
        await js.key_value(names.attempts_bucket)
    except Exception:  # noqa: BLE001 - as above
        await js.create_key_value(bucket=names.attempts_bucket, history=1, ttl=ATTEMPTS_TTL_S,
                                  replicas=settings.nats_replicas)
    await ensure_rate_limits_bucket(js, settings)


async def ensure_rate_limits_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    """The rate-limit counts' bucket (in memory: a NATS restart empties it, and it is made again)."""
    names = Subjects(settings.bus_prefix)
    try:
        return await js.key_value(names.rate_limits_bucket)
    except Exception:  # noqa: BLE001 - as above
        return await js.create_key_value(bucket=names.rate_limits_bucket, history=1, ttl=RATE_LIMIT_TTL_S,
                                         storage=js_api.StorageType.MEMORY, replicas=settings.nats_replicas)


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
