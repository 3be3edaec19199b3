"""Saved run configurations: `/api/v1/projects/{ref}/configs`."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.params import Parameter

from gateway.auth.caller import Me
from gateway.services import configs as service
from gateway.services.configs import ConfigCreate, ConfigPage, ConfigView
from gateway.state import Gateway
from shared import names

KindFilter = Annotated[str | None, Parameter(pattern=names.whole(r"[A-Za-z0-9._-]{1,32}"), description="Only this run kind")]


class ConfigsController(Controller):
    path = "/projects/{ref:str}/configs"
    tags = ["configs"]

    @post("/", status_code=201, summary="Save a run configuration (params of a yolo.* run request)")
    async def create(self, gw: Gateway, me: Me, ref: str, data: ConfigCreate) -> ConfigView:
        return service.config_view(await service.create_config(gw, ref, data, me))

    @get("/", summary="A project's saved configurations, by name")
    async def index(self, gw: Gateway, me: Me, ref: str, kind: KindFilter = None) -> ConfigPage:
        rows = await service.list_configs(gw, ref, kind, me)
        return ConfigPage(items=[service.config_view(r) for r in rows], total=len(rows))

    @get("/{name:str}", summary="One saved configuration")
    async def read(self, gw: Gateway, me: Me, ref: str, name: str) -> ConfigView:
        return service.config_view(await service.get_config(gw, ref, name, me))

    @delete("/{name:str}", status_code=204, summary="Delete a saved configuration")
    async def remove(self, gw: Gateway, me: Me, ref: str, name: str) -> None:
        await service.delete_config(gw, ref, name, me)
