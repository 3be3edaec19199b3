"""The datasets and models a project uses: `/api/v1/projects/{ref}/datasets` and `.../models`.

Linking needs a role of `member` or above in the project and the thing itself (only its owner, or an admin,
may link a dataset or model: nobody shares what is not theirs). Every member of the project (viewers too)
may then read what is linked, never change or delete it (`access.owned_or_linked`); unlinking needs
`member` too and leaves the dataset or model itself alone. Deleting a project, dataset or model removes its
links (foreign keys with ON DELETE CASCADE).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from sqlalchemy import delete, func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.caller import Caller
from gateway.db.models import Dataset, Model, ModelVersion, ProjectDataset, ProjectModel
from gateway.errors import NotFound
from gateway.services import audit
from gateway.services.datasets import resolve_dataset
from gateway.services.models import resolve_model
from gateway.services.projects import get_project
from gateway.state import GatewayState

Kind = Literal["dataset", "model"]
Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=256, description="Id or name")]


class LinkDataset(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    dataset: Ref
    """A dataset of yours (id or name)."""


class LinkModel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: Ref
    """A model of your weights library (id or name)."""


class LinkedDataset(msgspec.Struct, kw_only=True):
    id: str
    name: str
    owner_id: str | None
    task: str | None
    format: str | None
    status: str
    classes: list[str]
    images: int
    linked_by: str | None
    linked_at: datetime


class LinkedModel(msgspec.Struct, kw_only=True):
    id: str
    name: str
    owner_id: str | None
    task: str
    versions_count: int
    linked_by: str | None
    linked_at: datetime


class LinkedDatasetPage(msgspec.Struct, kw_only=True):
    items: list[LinkedDataset]
    total: int


class LinkedModelPage(msgspec.Struct, kw_only=True):
    items: list[LinkedModel]
    total: int


def _dataset_view(row: Dataset, link: ProjectDataset) -> LinkedDataset:
    return LinkedDataset(id=row.id, name=row.name, owner_id=row.owner_id, task=row.task, format=row.format,
                         status=row.status, classes=list(row.classes or []),
                         images=int((row.stats or {}).get("images", 0)), linked_by=link.linked_by,
                         linked_at=link.created_at)


async def _model_view(session: AsyncSession, row: Model, link: ProjectModel) -> LinkedModel:
    count = (await session.execute(select(func.count()).select_from(ModelVersion).where(
        ModelVersion.model_id == row.id))).scalar_one()
    return LinkedModel(id=row.id, name=row.name, owner_id=row.owner_id, task=row.task, versions_count=count,
                       linked_by=link.linked_by, linked_at=link.created_at)


async def list_datasets(gw: GatewayState, ref: str, caller: Caller) -> LinkedDatasetPage:
    async with gw.sessionmaker() as session:
        project = await get_project(session, ref, caller, "viewer")
        rows = (await session.execute(select(Dataset, ProjectDataset).join(
            ProjectDataset, ProjectDataset.dataset_id == Dataset.id).where(ProjectDataset.project_id == project.id)
            .order_by(Dataset.name, Dataset.id))).all()
    items = [_dataset_view(d, link) for d, link in rows]
    return LinkedDatasetPage(items=items, total=len(items))


async def list_models(gw: GatewayState, ref: str, caller: Caller) -> LinkedModelPage:
    async with gw.sessionmaker() as session:
        project = await get_project(session, ref, caller, "viewer")
        rows = (await session.execute(select(Model, ProjectModel).join(
            ProjectModel, ProjectModel.model_id == Model.id).where(ProjectModel.project_id == project.id)
            .order_by(Model.name, Model.id))).all()
        items = [await _model_view(session, m, link) for m, link in rows]
    return LinkedModelPage(items=items, total=len(items))


async def link_dataset(gw: GatewayState, ref: str, body: LinkDataset, caller: Caller) -> LinkedDataset:
    """Link one of the caller's datasets (linking twice is the same link)."""
    async with gw.sessionmaker() as session, session.begin():
        project = await get_project(session, ref, caller, "member")
        dataset = await resolve_dataset(session, body.dataset, caller, ready=False)
        await _insert(session, ProjectDataset, project.id, "dataset_id", dataset.id, caller)
        link = await session.get(ProjectDataset, (project.id, dataset.id))
        assert link is not None
        audit.record(session, caller, "project.dataset.link", "dataset", dataset.id, project_id=project.id)
        return _dataset_view(dataset, link)


async def link_model(gw: GatewayState, ref: str, body: LinkModel, caller: Caller) -> LinkedModel:
    """Link one of the caller's models (linking twice is the same link)."""
    async with gw.sessionmaker() as session, session.begin():
        project = await get_project(session, ref, caller, "member")
        model = await resolve_model(session, body.model, caller)
        await _insert(session, ProjectModel, project.id, "model_id", model.id, caller)
        link = await session.get(ProjectModel, (project.id, model.id))
        assert link is not None
        audit.record(session, caller, "project.model.link", "model", model.id, project_id=project.id)
        return await _model_view(session, model, link)


async def _insert(session: AsyncSession, table: Any, project_id: str, column: str, value: str,
                  caller: Caller) -> None:
    await session.execute(insert(table).values(
        {"project_id": project_id, column: value, "linked_by": caller.user_id}).on_conflict_do_nothing())


async def unlink(gw: GatewayState, ref: str, kind: Kind, target: str, caller: Caller) -> None:
    """Remove a link (the dataset or model itself stays); NotFound if `target` (id or name) is not linked."""
    table, column, row_type = ((ProjectDataset, ProjectDataset.dataset_id, Dataset) if kind == "dataset"
                               else (ProjectModel, ProjectModel.model_id, Model))
    async with gw.sessionmaker() as session, session.begin():
        project = await get_project(session, ref, caller, "member")
        ids = list((await session.execute(select(row_type.id).join(table, column == row_type.id).where(
            table.project_id == project.id, or_(row_type.id == target, row_type.name == target)))).scalars())
        if not ids:
            raise NotFound(f"no {kind} {target!r} is linked to project {project.name!r}")
        chosen = target if target in ids else ids[0]
        await session.execute(delete(table).where(table.project_id == project.id, column == chosen))
        audit.record(session, caller, f"project.{kind}.unlink", kind, chosen, project_id=project.id)
