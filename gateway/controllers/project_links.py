"""/api/v1/projects/{ref}/datasets and /models: what a project uses. Linking and unlinking need the `member`
role (and, to link, the dataset or model must be yours); every member may then read what is linked."""

from __future__ import annotations

from litestar import Controller, delete, get, post

from gateway.auth.caller import Me
from gateway.services import project_links as service
from gateway.services.project_links import (
    LinkDataset,
    LinkedDataset,
    LinkedDatasetPage,
    LinkedModel,
    LinkedModelPage,
    LinkModel,
)
from gateway.state import Gateway


class ProjectLinksController(Controller):
    path = "/projects"
    tags = ["projects"]

    @get("/{ref:str}/datasets", summary="The datasets a project uses")
    async def datasets(self, gw: Gateway, me: Me, ref: str) -> LinkedDatasetPage:
        return await service.list_datasets(gw, ref, me)

    @post("/{ref:str}/datasets", status_code=201,
          summary="Link one of your datasets to a project (its members may then read it)")
    async def link_dataset(self, gw: Gateway, me: Me, ref: str, data: LinkDataset) -> LinkedDataset:
        return await service.link_dataset(gw, ref, data, me)

    @delete("/{ref:str}/datasets/{dataset:str}", status_code=204,
            summary="Unlink a dataset from a project (the dataset stays)")
    async def unlink_dataset(self, gw: Gateway, me: Me, ref: str, dataset: str) -> None:
        await service.unlink(gw, ref, "dataset", dataset, me)

    @get("/{ref:str}/models", summary="The models a project uses")
    async def models(self, gw: Gateway, me: Me, ref: str) -> LinkedModelPage:
        return await service.list_models(gw, ref, me)

    @post("/{ref:str}/models", status_code=201,
          summary="Link one of your models to a project (its members may then read it)")
    async def link_model(self, gw: Gateway, me: Me, ref: str, data: LinkModel) -> LinkedModel:
        return await service.link_model(gw, ref, data, me)

    @delete("/{ref:str}/models/{model:str}", status_code=204,
            summary="Unlink a model from a project (the model stays)")
    async def unlink_model(self, gw: Gateway, me: Me, ref: str, model: str) -> None:
        await service.unlink(gw, ref, "model", model, me)
