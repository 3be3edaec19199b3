"""Custom model architectures: validate an Ultralytics model YAML (build it, one forward pass), save a valid
one by name, use it as the model of a `yolo.train` (`architecture: <name>`).

Validation never runs in the gateway's process: each one is a child process
(`python -m runner.yolo.architecture_child`, request on stdin, report on stdout) with an address-space limit
(`architecture_validate_memory_mb`), a timeout, a minimal environment (no secrets), and at most
`architecture_validate_concurrency` of them at once per gateway. The child first checks the YAML against the
`architecture_max_*` budgets on torch's meta device, then builds it for real. torch is never imported here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import signal
import sys
import weakref
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from gateway.db.models import Architecture
from gateway.auth.access import owned_by, pick
from gateway.auth.caller import Caller
from gateway.services import audit
from gateway.errors import Conflict, NotFound, Unavailable, Unprocessable
from gateway.schemas import Name, Request
from gateway.services.projects import check_text
from gateway.state import GatewayState
from shared.contracts.common import new_id
from shared.settings import Settings

log = logging.getLogger(__name__)

CHILD_MODULE = "runner.yolo.architecture_child"
CHILD_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "PYTHONPATH", "VIRTUAL_ENV",
                   "MPLCONFIGDIR", "XDG_CACHE_HOME", "LD_LIBRARY_PATH")
"""What the validation child inherits (besides YOLO_*): no TRAINFORGE_* setting, no API key, no token."""
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary())

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


async def validate(settings: Settings, text: str, imgsz: int, channels: int = 3) -> ArchitectureReport:
    """The report of a valid YAML; Unprocessable (with `error`, `line`, `layer`) for an invalid one or one
    past the budgets; Unavailable when the validation process failed (crashed, killed, timed out)."""
    check_text(text)
    request = {
        "yaml": text, "imgsz": imgsz, "channels": channels, "state_dir": str(Path(settings.state_dir).resolve()),
        "memory_mb": settings.architecture_validate_memory_mb,
        "budget": {"max_params": settings.architecture_max_params, "max_gflops": settings.architecture_max_gflops,
                   "max_activation_mb": settings.architecture_max_activation_mb},
    }
    async with _slot(settings.architecture_validate_concurrency):
        result = await _run_child(request, settings.architecture_validate_timeout_s)
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


def _slot(concurrency: int) -> asyncio.Semaphore:
    """The semaphore that counts this event loop's validations (one per loop: a semaphore is bound to one)."""
    per_loop = _slots.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault(concurrency, asyncio.Semaphore(max(1, concurrency)))


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The validation child's environment: a few plain variables and Ultralytics' YOLO_*; CPU only."""
    env = dict(os.environ if env is None else env)
    child = {k: v for k, v in env.items() if k in CHILD_ENV_NAMES or k.startswith("YOLO_")}
    root = _project_root()
    if root is not None:
        child["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), child.get("PYTHONPATH")) if p)
    child.update({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1",
                  "YOLO_AUTOINSTALL": "0", "PYTHONDONTWRITEBYTECODE": "1"})
    return child


def _project_root() -> Path | None:
    """The folder holding the `runner` package (found without importing it: it would load torch)."""
    spec = importlib.util.find_spec("runner")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


async def _run_child(request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one validation child; its report, or Unavailable if it answered nothing usable."""
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", CHILD_MODULE, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=child_environment(), start_new_session=True)
    except OSError as exc:
        log.error("cannot start the architecture validation process: %s", exc)
        raise Unavailable("architecture validation is unavailable: its process could not be started") from exc
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()), timeout_s)
    except TimeoutError:
        raise Unavailable(f"architecture validation took longer than {timeout_s:g} s and was stopped; "
                          "try again later or with a smaller imgsz", headers={"Retry-After": "30"}) from None
    finally:
        if proc.returncode is None:  # timed out, or this request was cancelled: the child goes too
            proc.kill()
            await proc.wait()
    try:
        result = json.loads(stdout)
        if not isinstance(result, dict) or "valid" not in result:
            raise ValueError("not a report")
    except ValueError:
        status = (f"was killed by signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
                  else f"exited with status {proc.returncode}")
        log.warning("architecture validation process %s: %s", status, stderr.decode(errors="replace")[-2000:])
        raise Unavailable(f"architecture validation failed: its process {status} (it may have run out of the "
                          "memory validation may use); nothing was saved") from None
    return result


async def create_architecture(gw: GatewayState, data: ArchitectureCreate, caller: Caller) -> Architecture:
    report = await validate(gw.settings, data.yaml, data.imgsz)
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
