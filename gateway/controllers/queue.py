"""`/api/v1/queue`: the runs waiting for the dispatcher, in line, each with why it waits."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.params import Parameter

from gateway.auth.caller import Me
from gateway.controllers.common import Limit, Offset, page_limit
from gateway.schemas import QueuePage
from gateway.services.queue import list_queue
from gateway.state import Gateway
from shared.contracts.common import TOKEN_RE

PoolFilter = Annotated[str | None, Parameter(pattern=TOKEN_RE.pattern, description="Only this pool's line")]


class QueueController(Controller):
    path = "/queue"
    tags = ["runs"]

    @get("/", summary="Queued runs in line (by pool), with their place and why they wait")
    async def index(self, gw: Gateway, me: Me, pool: PoolFilter = None, limit: Limit = 50, offset: Offset = 0) -> QueuePage:
        return await list_queue(gw, me, pool=pool, limit=page_limit(gw, limit), offset=offset)
