"""`/api/v1/projects`: a project is found by its id or its unique name (`ref`)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, patch, post
from litestar.params import Parameter
from litestar.response import Response

from gateway.controllers.common import IdempotencyKey, Limit, Offset, Reply, page_limit, respond_once
from gateway.schemas import ProjectCreate, ProjectPage, ProjectUpdate, ProjectView, from_row
from gateway.services import projects
from gateway.state import Gateway, GatewayState


class ProjectsController(Controller):
    path = "/projects"
    tags = ["projects"]

    @post("/", summary="Create a project", status_code=201)
    async def create(
        self, gw: Gateway, request: Request[Any, Any, Any], data: ProjectCreate,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[ProjectView]:
        async def work() -> Reply:
            return Reply(201, from_row(ProjectView, await projects.create_project(gw, data)))

        return await respond_once(gw, request, idempotency_key, data, work)

    @get("/", summary="List projects, newest first")
    async def index(
        self, gw: Gateway, status: str | None = None, limit: Limit = 50, offset: Offset = 0
    ) -> ProjectPage:
        rows, total = await projects.list_projects(gw, status=status, limit=page_limit(gw, limit), offset=offset)
        return ProjectPage(items=[from_row(ProjectView, p) for p in rows], total=total, limit=limit, offset=offset)

    @get("/{ref:str}", summary="A project, by id or name")
    async def read(self, gw: Gateway, ref: str = Parameter(description="Project id or name")) -> ProjectView:
        return from_row(ProjectView, await projects.find_project(gw, ref))

    @patch("/{ref:str}", summary="Change a project (only the fields sent); archive it with status=archived")
    async def update(self, gw: Gateway, ref: str, data: ProjectUpdate) -> ProjectView:
        return from_row(ProjectView, await projects.update_project(gw, ref, data))

    @delete("/{ref:str}", summary="Delete a project with its runs (409 while a run is active)", status_code=204)
    async def remove(self, gw: Gateway, ref: str) -> None:
        await projects.delete_project(gw, ref)
