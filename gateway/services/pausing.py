"""Pause and unpause a running run in place: asked of the runner running it (core NATS request/reply on
`Subjects.run_pause(run_id)`, answered by `runner.pausing`), which stops its processes (or its training at the
next batch boundary) and publishes run.paused / run.unpaused. The run keeps its runner, leases and job."""

from __future__ import annotations

from typing import Literal

import msgspec
import nats.errors
from sqlalchemy import update

from gateway.auth.caller import Caller
from gateway.db.models import Run
from gateway.errors import Conflict, Unavailable
from gateway.services import audit
from gateway.services.runs import find_run
from gateway.state import GatewayState
from shared.contracts.common import RunStatus, utcnow
from shared.contracts.fleet import RunPauseRequest, pause_reply_decoder

ANSWER_TIMEOUT_S = 5.0
"""How long the runner has to answer; pausing a process group or flagging a training takes milliseconds."""

Action = Literal["pause", "unpause"]
ALLOWED_FROM: dict[Action, tuple[RunStatus, ...]] = {
    "pause": (RunStatus.RUNNING,),
    # `running` too: the runner's answer to the pause may still be on its way into the projection
    "unpause": (RunStatus.PAUSED, RunStatus.RUNNING),
}
AFTER: dict[Action, tuple[RunStatus, RunStatus]] = {
    "pause": (RunStatus.RUNNING, RunStatus.PAUSED),
    "unpause": (RunStatus.PAUSED, RunStatus.RUNNING),
}


async def pause_run(gw: GatewayState, run_id: str, caller: Caller, action: Action) -> Run:
    """Ask the run's runner to pause (only a `running` run) or unpause (only a `paused` one) it. Conflict (409)
    for any other state, or when the runner refuses (the run cannot pause, is paused already, is stopping);
    Unavailable (503) when no runner answers."""
    run = await find_run(gw, run_id, caller, "member")
    if RunStatus(run.status) not in ALLOWED_FROM[action]:
        verb = "paused" if action == "pause" else "unpaused"
        only = "a running run" if action == "pause" else "a paused run"
        raise Conflict(f"run {run.id} is {run.status}; only {only} can be {verb}")
    request = RunPauseRequest(action=action, requested_by=caller.username)
    try:
        answer = await gw.nc.request(gw.subjects.run_pause(run.id), msgspec.json.encode(request),
                                     timeout=ANSWER_TIMEOUT_S)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        raise Unavailable(f"no runner answered for run {run.id} ({type(exc).__name__}); try again") from exc
    reply = pause_reply_decoder.decode(answer.data)
    if reply.error is not None:
        raise (Conflict if reply.conflict else Unavailable)(f"run {run.id}: {reply.error}")
    before, after = AFTER[action]
    async with gw.sessionmaker() as session, session.begin():
        # the runner's event says the same; written here too so that a read right after this answer sees it
        await session.execute(update(Run).where(Run.id == run.id, Run.status == before.value)
                              .values(status=after.value, updated_at=utcnow()))
        audit.record(session, caller, f"run.{action}", "run", run.id, project_id=run.project_id,
                     runner_id=reply.runner_id)
    return await find_run(gw, run_id, caller, "member")
