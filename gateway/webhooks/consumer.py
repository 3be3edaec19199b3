"""Which events the webhook deliverer's consumer hands out: only those some webhook wants.

Most events (metrics, logs, progress) go to no webhook. Reading every event off the stream and acking it only
to find that out cost the gateway nearly as much as projecting it (`bench.runpath`, medians of 5 alternated
runs: 67.5 → 46 µs of gateway CPU per projected event once the deliverer stopped reading them). So the durable consumer `Subjects.webhooks_consumer` filters on one subject per
(project, wanted event type) of the webhooks that exist, `<prefix>.events.v1.<project>.*.<type>`, and a
project without webhooks costs nothing. With no webhook at all it filters on a subject no event has; with more
than `MAX_SUBJECTS` it takes every event, as before, and the deliverer sorts them out.

The filter is only ever too wide, never too narrow, where it matters:
- creating a webhook widens it inside the transaction that inserts the row, before the answer: an event
  published after the answer matches it (NATS down: 503, nothing created);
- deleting a webhook or a project narrows it in its transaction; the deliverer narrows it again at start;
- every change takes `FILTER_LOCK` (a transaction-level advisory lock) and reads the webhooks table after
  taking it, so of two gateways changing webhooks at once the second reads what the first committed: an older
  view never overwrites a newer one. A narrowing that fails leaves the filter wider than needed: only slower.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import nats.errors
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import Webhook
from gateway.state import GatewayState

log = logging.getLogger(__name__)

FILTER_LOCK = 0x7472_6677_686B  # "trfwhk"
MAX_SUBJECTS = 512
"""Beyond this many (project, type) pairs the consumer takes every event (a long filter costs the server)."""
NOTHING = "_none"
"""The last token of the filter when no webhook exists: events have three tokens after the prefix."""


def wanted_subjects(gw: GatewayState, hooks: Iterable[tuple[str, Iterable[str]]]) -> list[str]:
    """The filter for webhooks given as (project id, event types)."""
    base = gw.subjects.events_all[:-1]  # "<prefix>.events.v1."
    subjects = sorted({f"{base}{project}.*.{event_type}" for project, types in hooks for event_type in types})
    if len(subjects) > MAX_SUBJECTS:
        return [gw.subjects.events_all]
    return subjects or [base + NOTHING]


def consumer_config(gw: GatewayState, subjects: list[str]) -> js_api.ConsumerConfig:
    names = gw.subjects
    timeout_s = gw.settings.webhook_timeout_s
    return js_api.ConsumerConfig(
        durable_name=names.webhooks_consumer,
        filter_subjects=subjects,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        deliver_policy=js_api.DeliverPolicy.NEW,  # webhooks are for what happens from now on
        ack_wait=timeout_s * 2 + 10,
        max_deliver=-1,  # bounded per delivery (webhook_max_attempts), not per message
    )


async def current_subjects(gw: GatewayState) -> list[str] | None:
    """The consumer's filter now (None: no consumer yet)."""
    try:
        info = await gw.js.consumer_info(gw.subjects.events_stream, gw.subjects.webhooks_consumer)
    except NotFoundError:
        return None
    config = info.config
    return sorted(config.filter_subjects or ([config.filter_subject] if config.filter_subject else []))


async def filter_for_webhooks(gw: GatewayState, session: AsyncSession) -> list[str]:
    """Inside `session`'s transaction: take `FILTER_LOCK` (held to its end), read the webhooks, and set the
    consumer's filter to what they want (created if missing). The filter set. Raises what NATS raises (the
    caller's transaction should then roll back)."""
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": FILTER_LOCK})
    rows = await session.execute(select(Webhook.project_id, Webhook.event_types))
    subjects = wanted_subjects(gw, ((project, types) for project, types in rows))
    if await current_subjects(gw) != subjects:
        await gw.js.add_consumer(gw.subjects.events_stream, consumer_config(gw, subjects))
    return subjects


async def narrow_for_webhooks(gw: GatewayState, session: AsyncSession) -> None:
    """`filter_for_webhooks` after webhooks were deleted in `session`'s transaction; NATS away: the filter stays
    wider than needed (logged), and the deletion goes on."""
    try:
        await filter_for_webhooks(gw, session)
    except (nats.errors.Error, TimeoutError) as exc:
        log.warning("webhooks: the consumer's filter was not narrowed (%r); the deliverer's next start does it", exc)
