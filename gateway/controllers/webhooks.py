"""`/api/v1/projects/{ref}/webhooks`: a project's webhooks and their delivery logs (project owners)."""

from __future__ import annotations

from litestar import Controller, delete, get, post

from gateway.auth.caller import Me
from gateway.controllers.common import Limit, Offset, page_limit
from gateway.schemas import (
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryPage,
    WebhookDeliveryView,
    WebhookPage,
    WebhookView,
    from_row,
)
from gateway.services import webhooks
from gateway.state import Gateway


class WebhooksController(Controller):
    path = "/projects/{ref:str}/webhooks"
    tags = ["webhooks"]

    @post("/", summary="Add a webhook: the project's run events POSTed, signed, to a URL", status_code=201,
          description="Project owners. The URL must be allowed by `TRAINFORGE_WEBHOOK_ALLOWED_HOSTS` (422 "
                      "otherwise: loopback, link-local and private addresses need an entry). The secret is in "
                      "this answer only. Signature and headers: docs/operations.md, \"Webhooks\".")
    async def create(self, gw: Gateway, me: Me, ref: str, data: WebhookCreate) -> WebhookCreated:
        return from_row(WebhookCreated, await webhooks.create_webhook(gw, ref, data, me))

    @get("/", summary="A project's webhooks (without their secrets)")
    async def index(self, gw: Gateway, me: Me, ref: str, limit: Limit = 50, offset: Offset = 0) -> WebhookPage:
        rows, total = await webhooks.list_webhooks(gw, ref, me, limit=page_limit(gw, limit), offset=offset)
        return WebhookPage(items=[from_row(WebhookView, w) for w in rows], total=total, limit=limit, offset=offset)

    @delete("/{webhook_id:str}", summary="Remove a webhook (its delivery log with it)", status_code=204)
    async def remove(self, gw: Gateway, me: Me, ref: str, webhook_id: str) -> None:
        await webhooks.delete_webhook(gw, ref, webhook_id, me)

    @get("/{webhook_id:str}/deliveries", summary="A webhook's deliveries, newest first: status, attempts, last error")
    async def deliveries(self, gw: Gateway, me: Me, ref: str, webhook_id: str, limit: Limit = 50,
                         offset: Offset = 0) -> WebhookDeliveryPage:
        rows, total = await webhooks.list_deliveries(gw, ref, webhook_id, me, limit=page_limit(gw, limit),
                                                     offset=offset)
        return WebhookDeliveryPage(items=[from_row(WebhookDeliveryView, d) for d in rows], total=total, limit=limit,
                                   offset=offset)
