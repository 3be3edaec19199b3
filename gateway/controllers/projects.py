"""`/api/v1/projects`: a project is found by its id or its unique name (`ref`)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, patch, post, put
from litestar.params import Parameter
from litestar.response import Response

from gateway.auth.caller import Me
from gateway.controllers.common import IdempotencyKey, Limit, Offset, Reply, page_limit, respond_once
from gateway.schemas import MemberSet, ProjectCreate, ProjectPage, ProjectUpdate, ProjectView, from_row
from gateway.services import projects
from gateway.services.projects import MemberView
from gateway.state import Gateway


class ProjectsController(Controller):
    path = "/projects"
    tags = ["projects"]

    @post("/", summary="Create a project", status_code=201)
    async def create(
        self, gw: Gateway, me: Me, request: Request[Any, Any, Any], data: ProjectCreate,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[ProjectView]:
        async def work() -> Reply:
            return Reply(201, from_row(ProjectView, await projects.create_project(gw, data, me)))

        return await respond_once(gw, request, idempotency_key, data, work)

    @get("/", summary="List the projects you may see, newest first")
    async def index(
        self, gw: Gateway, me: Me, status: str | None = None, limit: Limit = 50, offset: Offset = 0
    ) -> ProjectPage:
        rows, total = await projects.list_projects(gw, me, status=status, limit=page_limit(gw, limit), offset=offset)
        return ProjectPage(items=[from_row(ProjectView, p) for p in rows], total=total, limit=limit, offset=offset)

    @get("/{ref:str}", summary="A project, by id or name")
    async def read(self, gw: Gateway, me: Me, ref: str = Parameter(description="Project id or name")) -> ProjectView:
        return from_row(ProjectView, await projects.find_project(gw, ref, me))

    @patch("/{ref:str}", summary="Change a project (only the fields sent); archive it with status=archived")
    async def update(self, gw: Gateway, me: Me, ref: str, data: ProjectUpdate) -> ProjectView:
        return from_row(ProjectView, await projects.update_project(gw, ref, data, me))

    @delete("/{ref:str}", summary="Delete a project with its runs (409 while a run is active)", status_code=204)
    async def remove(self, gw: Gateway, me: Me, ref: str) -> None:
        await projects.delete_project(gw, ref, me)

    @get("/{ref:str}/members", summary="Who may reach the project, and their roles")
    async def members(self, gw: Gateway, me: Me, ref: str) -> list[MemberView]:
        return await projects.list_members(gw, ref, me)

    @put("/{ref:str}/members/{username:str}", summary="Add a member or change their role (project owners)")
    async def set_member(self, gw: Gateway, me: Me, ref: str, username: str, data: MemberSet) -> MemberView:
        return await projects.set_member(gw, ref, username, data.role, me)

    @delete("/{ref:str}/members/{username:str}", summary="Remove a member (project owners; anyone may leave)",
            status_code=204)
    async def remove_member(self, gw: Gateway, me: Me, ref: str, username: str) -> None:
        await projects.remove_member(gw, ref, username, me)
