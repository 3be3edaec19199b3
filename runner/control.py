"""Cancel requests: a core NATS subscription for speed, the KV bucket for runs claimed after the request.

The gateway writes the run id into the KV bucket `Subjects.cancel_bucket` and publishes a core message on
`Subjects.cancel(run_id)`. A runner listens on `Subjects.cancel_all` for runs it is running now, and asks the
bucket when it claims a job (and now and then while it runs one, in case the core message was missed during a
reconnect).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from shared.subjects import Subjects

log = logging.getLogger(__name__)


class CancelListener:
    """Calls `on_cancel(run_id)` for every cancel request published while it listens."""

    def __init__(self, nc: NATS, js: JetStreamContext, subjects: Subjects, on_cancel: Callable[[str], None]) -> None:
        self._nc = nc
        self._js = js
        self._subjects = subjects
        self._on_cancel = on_cancel
        self._sub: Subscription | None = None
        self._kv: KeyValue | None = None

    async def start(self) -> None:
        """Subscribe and open the bucket (it exists once `ensure_topology` ran)."""
        self._kv = await self._js.key_value(self._subjects.cancel_bucket)
        self._sub = await self._nc.subscribe(self._subjects.cancel_all)

    async def listen(self) -> None:
        """Deliver cancel requests until the subscription ends (`close()`)."""
        if self._sub is None:
            raise RuntimeError("CancelListener.listen() before start()")
        async for msg in self._sub.messages:
            run_id = msg.subject.rsplit(".", 1)[-1]
            log.info("cancel requested for run %s", run_id)
            self._on_cancel(run_id)

    async def is_cancel_requested(self, run_id: str) -> bool:
        """Whether the gateway recorded a cancel request for the run (raises on NATS errors)."""
        if self._kv is None:
            raise RuntimeError("CancelListener.is_cancel_requested() before start()")
        try:
            await self._kv.get(run_id)
        except KeyNotFoundError:  # also KeyDeletedError: a withdrawn record
            return False
        return True

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
