"""The audit log: who created, canceled, resumed, deleted, exported what, and when. Admins query it with
`GET /api/v1/audit`.

`record(session, caller, ...)` adds an entry to the caller's transaction, so the entry is committed exactly
when the change is; `record_now` writes one on its own (for changes made elsewhere, e.g. published to NATS).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.caller import Caller
from gateway.db.models import AuditEntry
from gateway.state import GatewayState


class AuditView(msgspec.Struct, kw_only=True):
    id: int
    at: datetime
    actor_id: str | None
    actor: str
    action: str
    resource_type: str
    resource_id: str | None
    project_id: str | None
    client_address: str | None
    detail: dict[str, Any]


class AuditPage(msgspec.Struct, kw_only=True):
    items: list[AuditView]
    total: int
    limit: int
    offset: int


ACTION_PATTERN = r"^[a-z_]+(\.[a-z_]+)?$"
"""An action filter: `run.cancel`, or `run` for every run action."""


def record(session: AsyncSession, caller: Caller | None, action: str, resource_type: str,
           resource_id: str | None, *, project_id: str | None = None, **detail: Any) -> None:
    session.add(AuditEntry(**entry(caller, action, resource_type, resource_id, project_id=project_id, **detail)))


def entry(caller: Caller | None, action: str, resource_type: str, resource_id: str | None, *,
          project_id: str | None = None, **detail: Any) -> dict[str, Any]:
    """An audit entry's columns (for a statement that writes it without the ORM: `ENTRY_COLUMNS`)."""
    return {
        "actor_id": caller.user_id if caller else None, "actor": caller.username if caller else "system",
        "action": action, "resource_type": resource_type, "resource_id": resource_id, "project_id": project_id,
        "client_address": caller.address if caller else None,
        "detail": {k: v for k, v in detail.items() if v is not None},
    }


ENTRY_COLUMNS = ("actor_id", "actor", "action", "resource_type", "resource_id", "project_id", "client_address",
                 "detail")


async def record_now(gw: GatewayState, caller: Caller | None, action: str, resource_type: str,
                     resource_id: str | None, *, project_id: str | None = None, **detail: Any) -> None:
    async with gw.sessionmaker() as session, session.begin():
        record(session, caller, action, resource_type, resource_id, project_id=project_id, **detail)


async def query(gw: GatewayState, *, actor: str | None, action: str | None, resource_type: str | None,
                resource_id: str | None, project_id: str | None, since: datetime | None, until: datetime | None,
                limit: int, offset: int) -> AuditPage:
    """Newest first. `action` is exact (`run.cancel`) or a prefix (`run`: every run action)."""
    where = []
    if actor:
        where.append((AuditEntry.actor == actor) | (AuditEntry.actor_id == actor))
    if action:
        where.append(AuditEntry.action == action if "." in action else AuditEntry.action.startswith(action + "."))
    if resource_type:
        where.append(AuditEntry.resource_type == resource_type)
    if resource_id:
        where.append(AuditEntry.resource_id == resource_id)
    if project_id:
        where.append(AuditEntry.project_id == project_id)
    if since:
        where.append(AuditEntry.at >= since)
    if until:
        where.append(AuditEntry.at < until)
    async with gw.sessionmaker() as session:
        total = (await session.execute(select(func.count()).select_from(AuditEntry).where(*where))).scalar_one()
        rows = (await session.execute(select(AuditEntry).where(*where)
                                      .order_by(AuditEntry.id.desc()).limit(limit).offset(offset))).scalars()
        items = [AuditView(id=r.id, at=r.at, actor_id=r.actor_id, actor=r.actor, action=r.action,
                           resource_type=r.resource_type, resource_id=r.resource_id, project_id=r.project_id,
                           client_address=r.client_address, detail=r.detail) for r in rows]
    return AuditPage(items=items, total=total, limit=limit, offset=offset)
