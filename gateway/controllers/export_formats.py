"""`GET /api/v1/export-formats`: every Ultralytics export format, and whether this deployment makes it."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
from litestar import Controller, get

from gateway.state import Gateway, GatewayState


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
    """Whether this deployment has what the format needs (Python packages, programs, a GPU). Computed on
    the gateway's host: runners installed like it can produce the same."""
    missing: list[str]


class ExportFormatList(msgspec.Struct, kw_only=True):
    items: list[ExportFormat]


async def export_formats(gw: GatewayState) -> ExportFormatList:
    """Computed once per gateway (it imports Ultralytics and probes packages) in a worker thread."""
    lock = gw.extras.setdefault("export_formats_lock", anyio.Lock())
    async with lock:  # type: ignore[attr-defined]
        cached = gw.extras.get("export_formats")
        if cached is None:
            from runner.yolo.export import export_formats as probe
            from runner.yolo.offline import prepare_ultralytics

            def compute() -> list[dict[str, Any]]:
                prepare_ultralytics(gw.settings.state_dir)
                return probe()

            cached = msgspec.convert({"items": await anyio.to_thread.run_sync(compute)}, ExportFormatList)
            gw.extras["export_formats"] = cached
    return cached  # type: ignore[return-value]


class ExportFormatsController(Controller):
    tags = ["models"]

    @get("/export-formats", summary="Ultralytics export formats, with what this deployment can produce")
    async def index(self, gw: Gateway) -> ExportFormatList:
        return await export_formats(gw)
