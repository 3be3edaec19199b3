"""Saved run configurations of a project: named params of a run request, for any run kind.

Params are stored as the client sends them in a run request (references, not paths) and checked against the
request type of their kind when saved. A `yolo.*` run request names one with `config` and its own fields win;
a `container` configuration is a whole container run request (its `start_command` included), which a client
(the dashboard's form) loads and sends as its own request: container requests take no `config`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from gateway.auth.caller import Caller
from gateway.db.models import RunConfig
from gateway.errors import Conflict, NotFound, Unprocessable
from gateway.schemas import REQUEST_TYPES, Name, Request
from gateway.services.projects import check_text, get_project
from gateway.services.yolo_specs import check_params, field_errors, get_config_row, invalid
from gateway.state import GatewayState
from shared.contracts.common import new_id


class ConfigCreate(Request):
    name: Name
    kind: Annotated[str, msgspec.Meta(max_length=32,
                                      description="yolo.train, yolo.val, yolo.export, yolo.predict or container")]
    params: dict[str, Any] = {}
    """Fields of a run request of `kind` (e.g. dataset, model, epochs, imgsz, extra)."""
    description: Annotated[str, msgspec.Meta(max_length=4096)] = ""


class ConfigView(msgspec.Struct, kw_only=True):
    id: str
    project_id: str
    name: str
    kind: str
    params: dict[str, Any]
    description: str
    created_at: datetime
    updated_at: datetime


class ConfigPage(msgspec.Struct, kw_only=True):
    items: list[ConfigView]
    total: int


def config_view(row: RunConfig) -> ConfigView:
    return ConfigView(id=row.id, project_id=row.project_id, name=row.name, kind=row.kind, params=row.params,
                      description=row.description, created_at=row.created_at, updated_at=row.updated_at)


CONTAINER = "container"


def check_container_params(params: dict[str, Any]) -> dict[str, Any]:
    """`params` checked as a whole container run request (422 naming the field as `params.<field>`); returns
    the fields given, as JSON values (the request's defaults are not stored)."""
    try:
        request = msgspec.convert({**params, "kind": CONTAINER}, REQUEST_TYPES[CONTAINER])
    except msgspec.ValidationError as exc:
        raise Unprocessable("the parameters are invalid", errors=field_errors(exc, "params.")) from None
    values = msgspec.to_builtins(request)
    return {name: values[name] for name in params}


async def create_config(gw: GatewayState, project_ref: str, data: ConfigCreate, caller: Caller) -> RunConfig:
    check_text(data)
    if "config" in data.params:
        raise invalid("params.config", "a configuration cannot name another configuration")
    if data.kind == CONTAINER:
        params = check_container_params(data.params)
    else:
        params = check_params(data.kind, data.params, prefix="params.")
    async with gw.sessionmaker() as session:
        project = await get_project(session, project_ref, caller, "member")
        project_name = project.name
        row = RunConfig(id=new_id(), project_id=project.id, name=data.name, kind=data.kind, params=params,
                        description=data.description)
        session.add(row)
        try:
            await session.commit()
        except IntegrityError:
            raise Conflict(f"project {project_name!r} already has a configuration {data.name!r}") from None
        await session.refresh(row)
        return row


async def list_configs(gw: GatewayState, project_ref: str, kind: str | None, caller: Caller) -> list[RunConfig]:
    async with gw.sessionmaker() as session:
        project = await get_project(session, project_ref, caller)
        where = [RunConfig.project_id == project.id]
        if kind:
            where.append(RunConfig.kind == kind)
        return list((await session.execute(select(RunConfig).where(*where).order_by(RunConfig.name))).scalars())


async def get_config(gw: GatewayState, project_ref: str, name: str, caller: Caller) -> RunConfig:
    async with gw.sessionmaker() as session:
        project = await get_project(session, project_ref, caller)
        row = await get_config_row(session, project.id, name)
        if row is None:
            raise NotFound(f"project {project.name!r} has no configuration {name!r}")
        return row


async def delete_config(gw: GatewayState, project_ref: str, name: str, caller: Caller) -> None:
    async with gw.sessionmaker() as session, session.begin():
        project = await get_project(session, project_ref, caller, "member")
        done = await session.execute(delete(RunConfig).where(RunConfig.project_id == project.id,
                                                             RunConfig.name == name).returning(RunConfig.id))
        if done.first() is None:
            raise NotFound(f"project {project.name!r} has no configuration {name!r}")

