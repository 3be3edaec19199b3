"""Custom model architectures: validate an Ultralytics model YAML (build it, one forward pass), save a valid
one by name, use it as the model of a `yolo.train` (`architecture: <name>`).

Validation never runs in the gateway's process, nor on its host: the gateway asks a runner that has
Ultralytics (request/reply on `Subjects.yolo_service("architecture")`, `runner.yolo.service`), which builds
the model in a child process of its own with the address-space limit (`architecture_validate_memory_mb`)
and timeout (`architecture_validate_timeout_s`) of the gateway's settings, first checking the YAML against
the `architecture_max_*` budgets on torch's meta device. No runner online, or none answering within the
timeout (plus `YOLO_SERVICE_MARGIN_S`): 503. torch is never imported here.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any

import msgspec
from nats.aio.client import Client as NATS
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from gateway.auth.access import owned_by, pick
from gateway.auth.caller import Caller
from gateway.db.models import Architecture
from gateway.errors import Conflict, NotFound, Unavailable, Unprocessable
from gateway.schemas import Name, Request
from gateway.services import audit
from gateway.services.projects import check_text
from gateway.state import GatewayState
from gateway.yolo_service import ask_runner
from shared.contracts.common import new_id
from shared.contracts.yolo_service import ARCHITECTURE, ArchitectureBudget, ArchitectureCheck
from shared.settings import Settings

log = logging.getLogger(__name__)

ModelYaml = Annotated[str, msgspec.Meta(min_length=1, max_length=65_536, description="Ultralytics model YAML")]
ValidateSize = Annotated[int, msgspec.Meta(ge=32, le=2048, description="Input size of the test forward pass")]


class ValidateRequest(Request):
    yaml: ModelYaml
    imgsz: ValidateSize = 640
    channels: Annotated[int, msgspec.Meta(ge=1, le=16)] = 3


class ArchitectureCreate(Request):
    name: Name
    yaml: ModelYaml
    description: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    imgsz: ValidateSize = 640


class LayerView(msgspec.Struct, kw_only=True):
    index: int
    from_: Any = msgspec.field(name="from")
    module: str
    params: int
    output_shape: Any
    line: int | None


class ArchitectureReport(msgspec.Struct, kw_only=True):
    """A valid architecture: what it builds to at `imgsz`."""

    valid: bool
    task: str
    nc: int
    imgsz: int
    layers: list[LayerView]
    parameters: int
    gflops: float
    stride: list[int]
    output_shapes: Any


class ArchitectureView(msgspec.Struct, kw_only=True):
    id: str
    name: str
    description: str
    task: str
    yaml: str
    summary: dict[str, Any]
    """parameters, gflops, imgsz, layers (count), output_shapes."""
    created_at: datetime


class ArchitecturePage(msgspec.Struct, kw_only=True):
    items: list[ArchitectureView]
    total: int
    limit: int
    offset: int


def architecture_view(row: Architecture) -> ArchitectureView:
    return ArchitectureView(id=row.id, name=row.name, description=row.description, task=row.task, yaml=row.yaml,
                            summary=row.summary, created_at=row.created_at)


async def validate(nc: NATS, settings: Settings, text: str, imgsz: int, channels: int = 3) -> ArchitectureReport:
    """The report of a valid YAML; Unprocessable (with `error`, `line`, `layer`) for an invalid one or one
    past the budgets; Unavailable when no runner could validate it (none online, its validation process
    failed: crashed, killed, timed out)."""
    check_text(text)
    check = ArchitectureCheck(
        yaml=text, imgsz=imgsz, channels=channels, memory_mb=settings.architecture_validate_memory_mb,
        timeout_s=settings.architecture_validate_timeout_s,
        budget=ArchitectureBudget(max_params=settings.architecture_max_params,
                                  max_gflops=settings.architecture_max_gflops,
                                  max_activation_mb=settings.architecture_max_activation_mb))
    result = await ask_runner(nc, settings, ARCHITECTURE, check, what="architecture validation",
                              timeout_s=settings.architecture_validate_timeout_s)
    if not isinstance(result, dict) or "valid" not in result:
        raise Unavailable("architecture validation is unavailable: the runner answered no report")
    if result.get("reason") == "setup":
        log.error("architecture validation could not start: %s", result.get("error"))
        raise Unavailable("architecture validation is unavailable: its process could not load torch within "
                          f"{settings.architecture_validate_memory_mb} MB (architecture_validate_memory_mb)")
    if not result["valid"]:
        message = result["error"]
        if result.get("reason") == "memory":
            message += f"; a validation may use at most {settings.architecture_validate_memory_mb:,} MB of memory"
        error = {"field": "yaml", "message": message}
        for key in ("line", "layer"):
            if result.get(key) is not None:
                error[key] = result[key]
        where = f" (line {result['line']})" if result.get("line") else ""
        raise Unprocessable(f"invalid architecture{where}: {message}", errors=[error])
    result.pop("names_count", None)
    return msgspec.convert(result, ArchitectureReport)


async def create_architecture(gw: GatewayState, data: ArchitectureCreate, caller: Caller) -> Architecture:
    report = await validate(gw.nc, gw.settings, data.yaml, data.imgsz)
    summary = {"parameters": report.parameters, "gflops": report.gflops, "imgsz": report.imgsz,
               "layers": len(report.layers), "nc": report.nc, "output_shapes": report.output_shapes}
    row = Architecture(id=new_id(), name=data.name, description=data.description, yaml=data.yaml,
                       task=report.task, summary=summary, owner_id=caller.user_id)
    async with gw.sessionmaker() as session:
        session.add(row)
        try:
            await session.commit()
        except IntegrityError:
            raise Conflict(f"you already have an architecture named {data.name!r}") from None
        await session.refresh(row)
    return row


async def list_architectures(gw: GatewayState, caller: Caller, *, limit: int, offset: int) -> ArchitecturePage:
    mine = owned_by(caller, Architecture.owner_id)
    async with gw.sessionmaker() as session:
        total = (await session.execute(select(func.count()).select_from(Architecture).where(mine))).scalar_one()
        rows = (await session.execute(select(Architecture).where(mine).order_by(Architecture.name, Architecture.id)
                                      .limit(limit).offset(offset))).scalars()
        return ArchitecturePage(items=[architecture_view(r) for r in rows], total=total, limit=limit,
                                offset=offset)


async def get_architecture(gw: GatewayState, ref: str, caller: Caller) -> Architecture:
    async with gw.sessionmaker() as session:
        row = pick((await session.execute(select(Architecture).where(
            (Architecture.name == ref) | (Architecture.id == ref), owned_by(caller, Architecture.owner_id)
        ))).scalars().all(), ref, caller)
    if row is None:
        raise NotFound(f"no architecture {ref!r}")
    return row


async def delete_architecture(gw: GatewayState, ref: str, caller: Caller) -> None:
    """Runs keep their own copy of the YAML (`model_yaml` of their spec): deleting never breaks one."""
    row = await get_architecture(gw, ref, caller)
    async with gw.sessionmaker() as session, session.begin():
        await session.execute(delete(Architecture).where(Architecture.id == row.id))
        audit.record(session, caller, "architecture.delete", "architecture", row.id, name=row.name)
