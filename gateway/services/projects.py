"""Projects: create, find by id or name, list, change, delete."""

from __future__ import annotations

import re

import msgspec
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import Artifact, EventRecord, Project, Run
from gateway.errors import BadRequest, Conflict, NotFound, Unprocessable
from gateway.schemas import PROJECT_NAME_RE, ProjectCreate, ProjectUpdate
from gateway.state import GatewayState
from shared.contracts.common import TERMINAL_STATUSES, new_id

_REF_RE = re.compile(PROJECT_NAME_RE)
PROJECT_STATUSES = ("active", "archived")


def check_text(value: object) -> None:
    """Postgres cannot store NUL characters: refuse them up front (422) instead of failing on insert."""
    if b"\\u0000" in msgspec.json.encode(value):
        raise Unprocessable("text must not contain NUL characters (\\u0000)",
                            errors=[{"field": "$", "message": "NUL character (\\u0000) in a string"}])


def check_name(name: str) -> None:
    if not _REF_RE.fullmatch(name):
        raise Unprocessable(f"invalid project name {name!r}",
                            errors=[{"field": "name", "message": f"Expected `str` matching regex {PROJECT_NAME_RE!r}"}])


async def get_project(session: AsyncSession, ref: str, *, for_update: bool = False) -> Project:
    """The project whose id or (unique) name is `ref`; NotFound if none."""
    if not _REF_RE.fullmatch(ref):
        raise NotFound(f"project {ref!r} not found")
    query = (
        select(Project)
        .where(or_(Project.id == ref, Project.name == ref))
        .order_by((Project.id == ref).desc())
        .limit(1)
    )
    if for_update:
        query = query.with_for_update()
    project = (await session.execute(query)).scalar_one_or_none()
    if project is None:
        raise NotFound(f"project {ref!r} not found")
    return project


async def find_project(gw: GatewayState, ref: str) -> Project:
    async with gw.sessionmaker() as session:
        return await get_project(session, ref)


async def create_project(gw: GatewayState, data: ProjectCreate) -> Project:
    check_name(data.name)
    check_text(data)
    project = Project(id=new_id(), runs_started=0, status="active", **msgspec.structs.asdict(data))
    async with gw.sessionmaker() as session:
        session.add(project)
        try:
            await session.commit()
        except IntegrityError as exc:
            raise Conflict(f"a project named {data.name!r} already exists") from exc
        await session.refresh(project)
    return project


async def list_projects(gw: GatewayState, *, status: str | None, limit: int, offset: int) -> tuple[list[Project], int]:
    """Newest first, and how many there are in all."""
    if status is not None and status not in PROJECT_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(PROJECT_STATUSES)}")
    where = [Project.status == status] if status else []
    async with gw.sessionmaker() as session:
        total = (await session.execute(select(func.count()).select_from(Project).where(*where))).scalar_one()
        rows = await session.execute(
            select(Project).where(*where).order_by(Project.created_at.desc(), Project.id.desc())
            .limit(limit).offset(offset)
        )
        return list(rows.scalars()), total


async def update_project(gw: GatewayState, ref: str, data: ProjectUpdate) -> Project:
    changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
    if "name" in changes:
        check_name(changes["name"])
    check_text(changes)
    async with gw.sessionmaker() as session:
        project = await get_project(session, ref, for_update=True)
        if changes:
            try:
                await session.execute(
                    update(Project).where(Project.id == project.id).values(**changes, updated_at=func.now())
                )
                await session.commit()
            except IntegrityError as exc:
                raise Conflict(f"a project named {changes.get('name')!r} already exists") from exc
            await session.refresh(project)
        return project


async def delete_project(gw: GatewayState, ref: str) -> None:
    """Delete a project with its runs, their checkpoints, artifacts and events. Conflict while a run is active."""
    async with gw.sessionmaker() as session, session.begin():
        project = await get_project(session, ref, for_update=True)
        active = (
            await session.execute(
                select(func.count()).select_from(Run)
                .where(Run.project_id == project.id, Run.status.not_in([s.value for s in TERMINAL_STATUSES]))
            )
        ).scalar_one()
        if active:
            raise Conflict(f"project {project.name!r} has {active} active run(s); cancel them first")
        await session.execute(delete(EventRecord).where(EventRecord.project_id == project.id))
        await session.execute(delete(Artifact).where(Artifact.project_id == project.id))
        await session.execute(delete(Project).where(Project.id == project.id))
