"""The webhook deliverer: a durable JetStream pull consumer on the events stream (`Subjects.webhooks_consumer`,
shared by every gateway, so each event is handled by one at a time) that POSTs each event to the webhooks of
its project that want its type.

At least once: a message is acked only when each of its deliveries is `delivered` (a 2xx answer) or `failed`
(`webhook_max_attempts` used up). Otherwise it is handed back (`nak(delay)`) with the backoff of its least-tried
pending delivery (`webhook_backoff_s`, doubled per attempt, at most `webhook_backoff_max_s`), so the stream
holds the retry and survives a gateway restart. Every attempt is written to `webhook_deliveries` (status,
attempts, last status code, last error); a delivery already done is not sent again when the message comes back
for another webhook. A delivery's id (header `Trainforge-Delivery`) is the same on every attempt: receivers
de-duplicate on it.

Before each attempt the URL's host is resolved and every address checked against the operator's policy
(`gateway.webhooks.urls`); the request goes to the checked address (Host header and TLS server name kept),
redirects are not followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Any

import httpx
import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js.errors import BadRequestError
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from gateway.background import TaskService
from gateway.db.models import Webhook, WebhookDelivery
from gateway.state import GatewayState
from gateway.webhooks import signing
from gateway.webhooks.cache import WebhookCache
from gateway.webhooks.consumer import NOTHING, consumer_config, current_subjects, filter_for_webhooks
from gateway.webhooks.urls import RefusedURL, Target, UrlPolicy
from shared.contracts.common import new_id, utcnow
from shared.contracts.events import EventBase, event_decoder
from shared.pull import PullConsumer
from shared.tasks import sleep_unless

log = logging.getLogger(__name__)

BATCH = 64
FETCH_TIMEOUT_S = 1.0
LINGER_S = 0.05
"""After a batch that was not full, how long events may gather before the next fetch: under a burst the
deliverer then takes them in big batches (one pull request, one look at the cache each) instead of a few at a
time, in a race with the projector for the CPU. Webhooks are not that urgent."""
CONCURRENCY = 16
"""Messages handled at once (each sends to its webhooks in parallel)."""
FILTER_TIMEOUT_S = 10.0
"""How long starting waits to set the consumer's filter (a frozen database must not hold the gateway's start)."""
ERROR_MAX = 500
"""Characters of an error kept in the delivery log."""


class Payload(msgspec.Struct, kw_only=True):
    """The JSON body of a delivery (the same bytes on every attempt)."""

    delivery_id: str
    webhook_id: str
    type: str
    project_id: str
    run_id: str
    event: msgspec.Raw
    """The event as published on the bus (docs/events.md)."""


class WebhookDeliverer(TaskService):
    """`start()` / `stop()` from the gateway's lifespan."""

    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        settings = gw.settings
        self.policy = UrlPolicy.from_entries(settings.webhook_allowed_hosts)
        self.max_attempts = max(1, settings.webhook_max_attempts)
        self.backoff_s = settings.webhook_backoff_s
        self.backoff_max_s = settings.webhook_backoff_max_s
        self.timeout_s = settings.webhook_timeout_s
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._pending: set[asyncio.Task[None]] = set()
        self._prefix = f"{gw.subjects.events_all[:-1]}"  # "tf.events.v1."
        self.cache = WebhookCache(gw)
        """Each project's webhooks, kept until a change is notified (not read again for every batch)."""

    async def start(self) -> None:
        names = self.gw.subjects
        try:  # only the events some webhook wants (gateway.webhooks.consumer)
            async with asyncio.timeout(FILTER_TIMEOUT_S), self.gw.sessionmaker() as session, session.begin():
                subjects = await filter_for_webhooks(self.gw, session)
            log.info("webhooks: the consumer takes %s", _filter_text(subjects))
        except BadRequestError as exc:  # exists with settings that cannot change (an operator's): keep it
            log.warning("webhooks: kept consumer %s as it is (%s)", names.webhooks_consumer, exc.description)
        except Exception as exc:  # noqa: BLE001 - the database is away or frozen: every event, until the next start
            log.warning("webhooks: the consumer's filter was not set (%r); it takes every event", exc)
            if await current_subjects(self.gw) is None:
                await self.gw.js.add_consumer(names.events_stream, consumer_config(self.gw, [names.events_all]))
        self._sub = await PullConsumer.bind(self.gw.nc, names.events_stream, names.webhooks_consumer)
        self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, trust_env=False)
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="webhook-deliverer")
        self._task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        self._stopping.set()
        await self._cancel_task()
        for task in list(self._pending):  # their messages come back after the ack wait, to this or another gateway
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self._sub.unsubscribe()
        await self.cache.stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        backoff = 0.1
        pending = self._pending
        while not self._stopping.is_set():
            try:
                msgs = await self._sub.fetch(BATCH, timeout=FETCH_TIMEOUT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.errors.Error as exc:
                log.warning("webhooks: fetch failed (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            try:
                hooks = await self._hooks_for(msgs)
            except Exception:  # noqa: BLE001 - database away: the messages come back after a while
                log.exception("webhooks: reading the webhooks of %d events failed", len(msgs))
                for msg in msgs:
                    await _quietly(msg.nak(delay=5))
                continue
            for msg in msgs:
                wanted = hooks.get(self._project_of(msg), [])
                event_type = self._type_of(msg)
                matching = [h for h in wanted if event_type in h.event_types]
                if not matching:
                    await _quietly(msg.ack())
                    continue
                await self._slots.acquire()
                task = asyncio.create_task(self._handle(msg, event_type, matching))
                pending.add(task)
                task.add_done_callback(pending.discard)
                task.add_done_callback(lambda _t: self._slots.release())
            if len(msgs) < BATCH:
                await sleep_unless(self._stopping, LINGER_S)

    def _tokens(self, msg: Msg) -> list[str]:
        rest = msg.subject[len(self._prefix):] if msg.subject.startswith(self._prefix) else ""
        return rest.split(".", 2)

    def _project_of(self, msg: Msg) -> str:
        tokens = self._tokens(msg)
        return tokens[0] if len(tokens) == 3 else ""

    def _type_of(self, msg: Msg) -> str:
        tokens = self._tokens(msg)
        return tokens[2] if len(tokens) == 3 else ""

    async def _hooks_for(self, msgs: list[Msg]) -> dict[str, list[Webhook]]:
        return await self.cache.hooks_for(p for p in (self._project_of(m) for m in msgs) if p)

    async def _handle(self, msg: Msg, event_type: str, hooks: list[Webhook]) -> None:
        try:
            event = event_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.error("webhooks: undecodable event on %s; dropped", msg.subject)
            await _quietly(msg.term())
            return
        try:
            outcomes = await asyncio.gather(*(self._deliver(hook, event, msg.data) for hook in hooks))
        except Exception:  # noqa: BLE001 - database away mid-way: try the whole message again later
            log.exception("webhooks: delivering %s failed", event.msg_id)
            await _quietly(msg.nak(delay=5))
            return
        waiting = [attempts for attempts in outcomes if attempts is not None]
        if waiting:
            await _quietly(msg.nak(delay=self._backoff(min(waiting))))
        else:
            await _quietly(msg.ack())

    def _backoff(self, attempts: int) -> float:
        return min(self.backoff_s * 2 ** max(0, attempts - 1), self.backoff_max_s)

    async def _deliver(self, hook: Webhook, event: EventBase, raw: bytes) -> int | None:
        """One attempt of this event to this webhook unless it is done already. The attempts made so far when
        another one is due, else None (delivered, given up, or the webhook is gone)."""
        delivery = await self._delivery(hook, event)
        if delivery is None or delivery.status != "pending":
            return None
        body = msgspec.json.encode(Payload(delivery_id=delivery.id, webhook_id=hook.id, type=event.type,
                                           project_id=event.project_id, run_id=event.run_id,
                                           event=msgspec.Raw(raw)))
        status_code, error = await self._post(hook, delivery.id, event.type, body)
        attempts = delivery.attempts + 1
        now = utcnow()
        if error is None:
            status = "delivered"
        elif attempts >= self.max_attempts:
            status = "failed"
            log.warning("webhooks: gave up %s to %s after %d attempts: %s", delivery.id, hook.url, attempts, error)
        else:
            status = "pending"
        async with self.gw.sessionmaker() as session, session.begin():
            await session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery.id).values(
                status=status, attempts=attempts, last_status_code=status_code,
                last_error=error[:ERROR_MAX] if error else None, updated_at=now,
                delivered_at=now if status == "delivered" else None))
        return attempts if status == "pending" else None

    async def _delivery(self, hook: Webhook, event: EventBase) -> WebhookDelivery | None:
        try:
            async with self.gw.sessionmaker() as session, session.begin():
                await session.execute(pg_insert(WebhookDelivery).values(
                    id=new_id(), webhook_id=hook.id, event_id=event.event_id, event_type=event.type,
                    run_id=event.run_id, status="pending", attempts=0).on_conflict_do_nothing())
                return (await session.execute(select(WebhookDelivery).where(
                    WebhookDelivery.webhook_id == hook.id,
                    WebhookDelivery.event_id == event.event_id))).scalar_one_or_none()
        except IntegrityError:  # the webhook was deleted meanwhile
            return None

    async def _post(self, hook: Webhook, delivery_id: str, event_type: str, body: bytes) -> tuple[int | None, str | None]:
        """(status code, error): error None for a 2xx answer."""
        assert self._client is not None
        try:
            target = await asyncio.wait_for(self.policy.check(hook.url), self.timeout_s)
        except RefusedURL as exc:
            return None, f"refused: {exc}"
        except TimeoutError:
            return None, f"resolving the URL's host took longer than {self.timeout_s:g}s"
        headers = signing.headers(hook.secret, int(time.time()), body, delivery_id, event_type)
        headers["Host"] = target.url.netloc
        extensions: dict[str, Any] = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
        try:
            response = await self._client.post(_pinned(target), content=body, headers=headers, extensions=extensions)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}: {response.text[:200]}"


def _pinned(target: Target) -> str:
    """The URL with its host replaced by the checked address it resolved to."""
    address = target.addresses[0]
    host = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    url = target.url
    path = url.path or "/"
    query = f"?{url.query}" if url.query else ""
    return f"{url.scheme}://{host}:{target.port}{path}{query}"


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception as exc:  # noqa: BLE001 - e.g. the connection closed while acking: JetStream redelivers
        log.debug("webhooks: ack/nak failed: %s", exc)


def _filter_text(subjects: list[str]) -> str:
    if len(subjects) == 1 and subjects[0].endswith(".>"):
        return "every event"
    if len(subjects) == 1 and subjects[0].endswith(NOTHING):
        return "no events (no webhooks)"
    return f"{len(subjects)} (project, event type) subjects"


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("webhook deliverer crashed", exc_info=task.exception())
