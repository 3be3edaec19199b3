"""The gateway's line of queued runs, as the dispatcher last judged it (`runs.queue_position`, `wait_reason`)."""

from __future__ import annotations

from sqlalchemy import func, select

from gateway.auth.access import member_of
from gateway.auth.caller import Caller
from gateway.db.models import Run
from gateway.schemas import QueueEntry, QueuePage, from_row
from gateway.state import GatewayState
from shared.contracts.common import RunStatus


async def list_queue(gw: GatewayState, caller: Caller, *, pool: str | None, limit: int, offset: int) -> QueuePage:
    """Runs the dispatcher holds back, by pool and place in line (runs it has not looked at yet last); a
    non-admin sees their projects' runs, with their places in the whole line."""
    where = [Run.status == RunStatus.QUEUED.value, Run.enqueued_at.is_(None), member_of(caller, Run.project_id)]
    if pool is not None:
        where.append(Run.pool == pool)
    async with gw.sessionmaker() as session:
        total = (await session.execute(select(func.count()).select_from(Run).where(*where))).scalar_one()
        rows = await session.execute(
            select(Run).where(*where)
            .order_by(Run.pool, Run.queue_position.asc().nulls_last(), Run.created_at, Run.id)
            .limit(limit).offset(offset)
        )
        items = [
            from_row(QueueEntry, run, run_id=run.id, position=run.queue_position, reason=run.wait_reason)
            for run in rows.scalars()
        ]
    return QueuePage(items=items, total=total)
