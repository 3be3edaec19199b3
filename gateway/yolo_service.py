"""Asking a runner for what needs Ultralytics (validating an architecture, the export formats), so that
torch and Ultralytics never load into the gateway: request/reply on `Subjects.yolo_service(operation)`,
answered by one runner with Ultralytics (`runner.yolo.service`). Bounded: no runner listening is a 503 at
once (NATS answers "no responders"), no reply within the bound a 503 after it; never a hang.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError, TimeoutError

from gateway.errors import RETRY_AFTER_S, Unavailable
from shared.contracts.yolo_service import service_reply_decoder
from shared.settings import Settings
from shared.subjects import Subjects

log = logging.getLogger(__name__)

YOLO_SERVICE_MARGIN_S = 10.0
"""Added to the work's own bound (a validation's timeout) for the trip and a wait for the runner's slot."""


async def ask_runner(nc: NATS, settings: Settings, operation: str, request: msgspec.Struct, *, what: str,
                     timeout_s: float) -> Any:
    """The `result` a runner answered for `request`; Unavailable (503) when no runner with Ultralytics is
    online, none answered within `timeout_s + YOLO_SERVICE_MARGIN_S`, or the runner could not do it."""
    subject = Subjects(settings.bus_prefix).yolo_service(operation)
    bound = timeout_s + YOLO_SERVICE_MARGIN_S
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    try:
        msg = await nc.request(subject, msgspec.json.encode(request), timeout=bound)
    except NoRespondersError:
        raise Unavailable(f"{what} is unavailable: no runner with Ultralytics is online to do it; start one "
                          "(trainforge runner) and try again", headers=retry) from None
    except TimeoutError:
        raise Unavailable(f"{what} is unavailable: no runner answered within {bound:g} s; try again later",
                          headers=retry) from None
    try:
        reply = service_reply_decoder.decode(msg.data)
    except msgspec.DecodeError as exc:
        log.warning("%s: a runner answered something unreadable: %s", what, exc)
        raise Unavailable(f"{what} is unavailable: the runner's answer was unreadable", headers=retry) from None
    if reply.status != "ok":
        headers = {"Retry-After": str(reply.retry_after_s)} if reply.retry_after_s else retry
        raise Unavailable(reply.error or f"{what} is unavailable on runner {reply.runner_id}", headers=headers)
    return reply.result
