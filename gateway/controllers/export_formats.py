"""`GET /api/v1/export-formats`: every Ultralytics export format, and whether this deployment makes it (asked
of a runner: the gateway never imports Ultralytics; 503 when no runner with Ultralytics is online)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import msgspec
from litestar import Controller, get

from gateway.state import Gateway, GatewayState
from gateway.yolo_service import ask_runner
from shared.contracts.yolo_service import EXPORT_FORMATS, ExportFormatsQuery


class ExportFormat(msgspec.Struct, kw_only=True):
    format: str
    """The `format` of a `yolo.export` run."""
    name: str
    suffix: str
    """File (or folder) suffix of the export."""
    description: str
    cpu: bool
    gpu: bool
    arguments: list[str]
    """Export arguments the format takes."""
    available: bool
    """Whether this deployment has what the format needs (Python packages, programs, a GPU), as a runner
    with Ultralytics found it: runners installed like it can produce the same."""
    missing: list[str]


class ExportFormatList(msgspec.Struct, kw_only=True):
    items: list[ExportFormat]


EXPORT_FORMATS_TIMEOUT_S = 60.0
"""Bound of a runner's answer (its first probe imports Ultralytics)."""
EXPORT_FORMATS_CACHE_S = 300.0
"""How long the gateway keeps a runner's answer (runners installed alike answer alike)."""


@dataclass
class ExportFormatsCache:
    formats: ExportFormatList | None = None
    at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


async def export_formats(gw: GatewayState) -> ExportFormatList:
    """Asked of a runner with Ultralytics (`Subjects.yolo_service("export_formats")`), kept a few minutes;
    503 when no runner answers."""
    if gw.export_formats is None:
        gw.export_formats = ExportFormatsCache()
    cached = gw.export_formats
    async with cached.lock:
        if cached.formats is None or time.monotonic() - cached.at > EXPORT_FORMATS_CACHE_S:
            result = await ask_runner(gw.nc, gw.settings, EXPORT_FORMATS, ExportFormatsQuery(),
                                      what="the list of export formats", timeout_s=EXPORT_FORMATS_TIMEOUT_S)
            cached.formats = msgspec.convert({"items": result}, ExportFormatList)
            cached.at = time.monotonic()
        return cached.formats


class ExportFormatsController(Controller):
    tags = ["models"]

    @get("/export-formats", summary="Ultralytics export formats, with what this deployment can produce")
    async def index(self, gw: Gateway) -> ExportFormatList:
        return await export_formats(gw)
