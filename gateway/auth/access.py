"""What a caller may reach.

Projects: their members (roles `owner` > `member` > `viewer`) and admins. Runs, their events, checkpoints,
artifacts and configs belong to their project. Datasets, models, architectures and uploads belong to the user
who made them; a dataset or model linked to a project (`/projects/{ref}/datasets`, `.../models`) may also be
read, never changed, by the project's members. Admins reach everything.

Whatever a caller may not see answers 404 exactly like something that does not exist, so its existence does
not leak; a caller who may see a project but not change it (a viewer) gets 403.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, literal, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.caller import Caller
from gateway.db.models import Artifact, Project, ProjectMember
from gateway.errors import Forbidden, NotFound
from shared.settings import Settings

ROLES = ("viewer", "member", "owner")
RANK = {role: rank for rank, role in enumerate(ROLES, start=1)}

Row = TypeVar("Row")


def member_of(caller: Caller, project_id_column: Any) -> ColumnElement[bool]:
    """Rows whose project the caller is a member of (everything for an admin)."""
    if caller.is_admin:
        return true()
    return project_id_column.in_(select(ProjectMember.project_id).where(ProjectMember.user_id == caller.user_id))


def owned_by(caller: Caller, owner_column: Any) -> ColumnElement[bool]:
    """Rows the caller owns (everything for an admin)."""
    return true() if caller.is_admin else owner_column == caller.user_id


def owned_or_linked(caller: Caller, owner_column: Any, id_column: Any, link_id_column: Any,
                    link_project_column: Any) -> ColumnElement[bool]:
    """Rows the caller owns, or that are linked (`project_datasets`, `project_models`) to a project the caller
    is a member of: what the caller may read (everything for an admin). Changing them stays the owner's."""
    if caller.is_admin:
        return true()
    linked = select(link_id_column).where(member_of(caller, link_project_column))
    return (owner_column == caller.user_id) | id_column.in_(linked)


def pick(rows: Sequence[Row], ref: str, caller: Caller, owner_of: Any = lambda r: r.owner_id) -> Row | None:
    """Of the rows matching a reference by id or name: the one with that id, else the caller's own, else the
    first (only admins can get rows of several owners)."""
    return (next((r for r in rows if r.id == ref), None)  # type: ignore[attr-defined]
            or next((r for r in rows if owner_of(r) == caller.user_id), None)
            or (rows[0] if rows else None))


def with_role(query: Select[tuple[Any]], caller: Caller) -> Select[tuple[Any, str]]:
    """`query` on projects, limited to those the caller is a member of, with the caller's role as a second
    column (`owner` for admins, who reach every project): one query for both."""
    if caller.is_admin:
        return query.add_columns(literal("owner"))
    return query.join(ProjectMember, (ProjectMember.project_id == Project.id)
                      & (ProjectMember.user_id == caller.user_id)).add_columns(ProjectMember.role)


async def project_role(session: AsyncSession, caller: Caller, project_id: str) -> str | None:
    """The caller's role in a project: `owner` for admins, None for a non-member."""
    if caller.is_admin:
        return "owner"
    return (await session.execute(select(ProjectMember.role).where(
        ProjectMember.project_id == project_id, ProjectMember.user_id == caller.user_id))).scalar_one_or_none()


def require_role(role: str | None, needed: str, what: str) -> None:
    """NotFound for a non-member, Forbidden for a member whose role is below `needed`."""
    if role is None:
        raise NotFound(f"{what} not found")
    if RANK[role] < RANK[needed]:
        raise Forbidden(f"your role in this project ({role}) does not allow this; it needs {needed}")


async def check_project(session: AsyncSession, caller: Caller, project_id: str | None, needed: str,
                        what: str) -> None:
    if project_id is None:
        if not caller.is_admin:
            raise NotFound(f"{what} not found")
        return
    require_role(await project_role(session, caller, project_id), needed, what)


async def check_artifact(session: AsyncSession, caller: Caller, artifact: Artifact, what: str) -> None:
    """An artifact of a run is its project's; an upload is its uploader's."""
    if artifact.project_id is not None:
        await check_project(session, caller, artifact.project_id, "viewer", what)
    elif not (caller.is_admin or artifact.owner_id == caller.user_id):
        raise NotFound(f"{what} not found")


def admin_only(connection: Any, _: Any) -> None:
    """Route guard: only admins."""
    user = connection.scope.get("user")
    if not (isinstance(user, Caller) and user.is_admin):
        raise Forbidden("only admins may do this")


def data_roots_of(caller: Caller, settings: Settings) -> list[Path]:
    """Server folders the caller may name: every data root for an admin, `<data root>/<username>` for others."""
    if caller.is_admin:
        return list(settings.data_roots)
    return [root / caller.username for root in settings.data_roots]
