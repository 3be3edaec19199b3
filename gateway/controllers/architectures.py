"""Custom architectures: `/api/v1/architectures` (validate an Ultralytics model YAML, save, list, get)."""

from __future__ import annotations

from litestar import Controller, delete, get, post

from gateway.auth.caller import Me
from gateway.controllers.common import Limit, Offset
from gateway.services import architectures as service
from gateway.services.architectures import (
    ArchitectureCreate,
    ArchitecturePage,
    ArchitectureReport,
    ArchitectureView,
    ValidateRequest,
)
from gateway.state import Gateway

VALIDATE_DESCRIPTION = """\
Builds the model of an Ultralytics model YAML and runs one forward pass at `imgsz`: answers its layers
(module, inputs, parameters, output shape, YAML line), parameters, GFLOPs and output shapes. An invalid YAML
is a 422 whose `errors[0]` has the `message`, the YAML `line` and the `layer` at fault. Only torch and
Ultralytics modules are accepted as layers. A model past the validation budgets (parameters, GFLOPs and
activation memory at `imgsz`, counted before anything is built) is a 422 naming the first layer past one.
Validation runs on a runner with Ultralytics (asked over NATS), in a separate process with a memory limit; a
503 means no such runner is online, or the process crashed, ran out of that memory or time."""


class ArchitecturesController(Controller):
    path = "/architectures"
    tags = ["architectures"]

    @post("/validate", status_code=200, summary="Validate a model YAML", description=VALIDATE_DESCRIPTION)
    async def validate(self, gw: Gateway, data: ValidateRequest) -> ArchitectureReport:
        return await service.validate(gw.nc, gw.settings, data.yaml, data.imgsz, data.channels)

    @post("/", status_code=201, summary="Save a valid architecture by name (then `architecture` of a yolo.train)")
    async def create(self, gw: Gateway, me: Me, data: ArchitectureCreate) -> ArchitectureView:
        return service.architecture_view(await service.create_architecture(gw, data, me))

    @get("/", summary="Saved architectures, by name")
    async def index(self, gw: Gateway, me: Me, offset: Offset = 0, limit: Limit = 50) -> ArchitecturePage:
        return await service.list_architectures(gw, me, limit=min(limit, gw.settings.page_size_max), offset=offset)

    @get("/{ref:str}", summary="A saved architecture (by name or id), with its YAML")
    async def read(self, gw: Gateway, me: Me, ref: str) -> ArchitectureView:
        return service.architecture_view(await service.get_architecture(gw, ref, me))

    @delete("/{ref:str}", status_code=204, summary="Delete a saved architecture (runs keep their copy)")
    async def remove(self, gw: Gateway, me: Me, ref: str) -> None:
        await service.delete_architecture(gw, ref, me)
