"""Gateway side of preflight: ask a runner of a pool whether a project's files are in place.

`None` means no runner answered in time (or none listens): the run is queued anyway and the runner checks
again when it claims it. A reply with `ok=False` is a 400 with `reply.message(target)`.
"""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError, TimeoutError

from shared.contracts.preflight import PreflightReply, PreflightRequest, preflight_reply_decoder
from shared.settings import Settings
from shared.subjects import Subjects


async def preflight(
    nc: NATS, settings: Settings, pool: str, request: PreflightRequest, timeout: float
) -> PreflightReply | None:
    subject = Subjects(settings.bus_prefix).preflight(pool)
    try:
        msg = await nc.request(subject, msgspec.json.encode(request), timeout=timeout)
    except (TimeoutError, NoRespondersError):
        return None
    try:
        return preflight_reply_decoder.decode(msg.data)
    except msgspec.DecodeError:
        return None
