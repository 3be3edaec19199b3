"""A project's webhooks: created, listed and deleted by its owners (and admins); their delivery logs."""

from __future__ import annotations

import nats.errors
from sqlalchemy import delete, func, select

from gateway.auth.caller import Caller
from gateway.db.models import Webhook, WebhookDelivery
from gateway.errors import RETRY_AFTER_S, NotFound, Unavailable, Unprocessable
from gateway.schemas import WebhookCreate
from gateway.services import audit
from gateway.services.projects import get_project
from gateway.state import GatewayState
from gateway.webhooks.consumer import filter_for_webhooks, narrow_for_webhooks
from gateway.webhooks.signing import new_secret
from gateway.webhooks.urls import RefusedURL, UrlPolicy
from shared.contracts.common import new_id
from shared.contracts.events import RunEvent

MANAGE_ROLE = "owner"
"""Webhooks carry a secret and point outside: a project's owners (and admins) manage and read them."""
EVENT_TYPES = frozenset(t.__struct_config__.tag for t in RunEvent.__args__)  # type: ignore[attr-defined]


def url_policy(gw: GatewayState) -> UrlPolicy:
    return UrlPolicy.from_entries(gw.settings.webhook_allowed_hosts)


async def create_webhook(gw: GatewayState, ref: str, data: WebhookCreate, caller: Caller) -> Webhook:
    unknown = sorted(set(data.event_types) - EVENT_TYPES)
    if unknown:
        raise Unprocessable(f"unknown event types: {', '.join(unknown)}",
                            errors=[{"field": "$.event_types", "message": f"one of {', '.join(sorted(EVENT_TYPES))}"}])
    async with gw.sessionmaker() as session:
        project = await get_project(session, ref, caller, MANAGE_ROLE)
    try:
        await url_policy(gw).check(data.url)
    except RefusedURL as exc:
        raise Unprocessable(str(exc), errors=[{"field": "$.url", "message": str(exc)}]) from exc
    hook = Webhook(id=new_id(), project_id=project.id, url=data.url, event_types=sorted(set(data.event_types)),
                   secret=data.secret or new_secret(), created_by=caller.user_id)
    async with gw.sessionmaker() as session, session.begin():
        session.add(hook)
        audit.record(session, caller, "webhook.create", "webhook", hook.id, project_id=project.id, url=data.url)
        await session.flush()
        try:  # before the answer: an event published after it is handed to the deliverer
            await filter_for_webhooks(gw, session)
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable("NATS did not take the webhook's event filter; nothing was created, try again",
                              headers={"Retry-After": str(RETRY_AFTER_S)}) from exc
    async with gw.sessionmaker() as session:
        return (await session.execute(select(Webhook).where(Webhook.id == hook.id))).scalar_one()


async def list_webhooks(gw: GatewayState, ref: str, caller: Caller, *, limit: int,
                        offset: int) -> tuple[list[Webhook], int]:
    async with gw.sessionmaker() as session:
        project = await get_project(session, ref, caller, MANAGE_ROLE)
        where = Webhook.project_id == project.id
        total = (await session.execute(select(func.count()).select_from(Webhook).where(where))).scalar_one()
        rows = await session.execute(select(Webhook).where(where).order_by(Webhook.created_at.desc(), Webhook.id)
                                     .limit(limit).offset(offset))
        return list(rows.scalars()), total


async def _webhook(gw: GatewayState, ref: str, webhook_id: str, caller: Caller) -> Webhook:
    async with gw.sessionmaker() as session:
        project = await get_project(session, ref, caller, MANAGE_ROLE)
        hook = (await session.execute(select(Webhook).where(Webhook.id == webhook_id,
                                                            Webhook.project_id == project.id))).scalar_one_or_none()
    if hook is None:
        raise NotFound(f"webhook {webhook_id!r} not found")
    return hook


async def delete_webhook(gw: GatewayState, ref: str, webhook_id: str, caller: Caller) -> None:
    hook = await _webhook(gw, ref, webhook_id, caller)
    async with gw.sessionmaker() as session, session.begin():
        await session.execute(delete(Webhook).where(Webhook.id == hook.id))
        audit.record(session, caller, "webhook.delete", "webhook", hook.id, project_id=hook.project_id)
        await narrow_for_webhooks(gw, session)


async def list_deliveries(gw: GatewayState, ref: str, webhook_id: str, caller: Caller, *, limit: int,
                          offset: int) -> tuple[list[WebhookDelivery], int]:
    hook = await _webhook(gw, ref, webhook_id, caller)
    where = WebhookDelivery.webhook_id == hook.id
    async with gw.sessionmaker() as session:
        total = (await session.execute(select(func.count()).select_from(WebhookDelivery).where(where))).scalar_one()
        rows = await session.execute(select(WebhookDelivery).where(where)
                                     .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id)
                                     .limit(limit).offset(offset))
        return list(rows.scalars()), total
