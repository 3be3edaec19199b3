"""The YOLO services a runner answers for the gateway (which never loads torch or Ultralytics itself):
validate a model YAML, list the export formats this runner can produce, preview a dataset's training
augmentation (`runner.yolo.augment`, in one long-lived child process per runner: `PreviewWorker`).

Request/reply on `Subjects.yolo_service(operation)` in the queue group `Subjects.yolo_service_group`, so one
runner with Ultralytics answers each request (contracts: `shared.contracts.yolo_service`).

Validation never runs in the runner's process either: each one is a child process
(`python -m runner.yolo.architecture_child`, request on stdin, report on stdout) with the address-space
limit (`memory_mb`) and timeout the gateway sends, a minimal environment (no secrets), and at most
`architecture_validate_concurrency` of them at once per runner. The child first checks the YAML against the
budgets on torch's meta device, then builds it for real. Export formats are probed once per runner (that
imports Ultralytics into the runner, which runs it in-process for its jobs anyway) in a worker thread.
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
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.contracts.yolo_service import (
    ARCHITECTURE,
    AUGMENT,
    EXPORT_FORMATS,
    ArchitectureCheck,
    AugmentPreview,
    ServiceReply,
    architecture_check_decoder,
    augment_preview_decoder,
)
from shared.settings import Settings
from shared.subjects import Subjects

log = logging.getLogger(__name__)

CHILD_MODULE = "runner.yolo.architecture_child"
AUGMENT_CHILD_MODULE = "runner.yolo.augment_child"
CHILD_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "PYTHONPATH", "VIRTUAL_ENV",
                   "MPLCONFIGDIR", "XDG_CACHE_HOME", "LD_LIBRARY_PATH")
"""What the validation child inherits (besides YOLO_*): no TRAINFORGE_* setting, no API key, no token."""
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary())


class ValidationUnavailable(Exception):
    """The validation process failed (could not start, crashed, was killed, timed out)."""

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def available() -> bool:
    """Whether this runner can answer: Ultralytics is installed (found without importing it)."""
    return importlib.util.find_spec("ultralytics") is not None


async def validate_in_child(check: ArchitectureCheck, state_dir: Path, concurrency: int) -> dict[str, Any]:
    """The child's report (`valid` true or false; `reason: setup` when it could not load torch); raises
    `ValidationUnavailable` when the process answered nothing usable."""
    request = {"yaml": check.yaml, "imgsz": check.imgsz, "channels": check.channels,
               "state_dir": str(Path(state_dir).resolve()), "memory_mb": check.memory_mb,  # noqa: ASYNC240
               "budget": msgspec.structs.asdict(check.budget)}
    async with _slot(concurrency):
        return await _run_child(request, check.timeout_s)


def _slot(concurrency: int) -> asyncio.Semaphore:
    """The semaphore that counts this event loop's validations (one per loop: a semaphore is bound to one)."""
    per_loop = _slots.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault(concurrency, asyncio.Semaphore(max(1, concurrency)))


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The validation child's environment: a few plain variables and Ultralytics' YOLO_*; CPU only."""
    env = dict(os.environ if env is None else env)
    child = {k: v for k, v in env.items() if k in CHILD_ENV_NAMES or k.startswith("YOLO_")}
    root = Path(__file__).resolve().parents[2]  # the folder holding the `runner` package
    child["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), child.get("PYTHONPATH")) if p)
    child.update({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1",
                  "YOLO_AUTOINSTALL": "0", "PYTHONDONTWRITEBYTECODE": "1"})
    return child


PREVIEW_IDLE_S = 300.0
"""A preview process with nothing to do for this long ends (it holds torch and Ultralytics in memory)."""
PREVIEW_LINE_LIMIT = 64 * 2**20


class PreviewWorker:
    """One long-lived `runner.yolo.augment_child --serve` process per runner, started on the first preview:
    torch and Ultralytics are imported once, not per request. One preview at a time; a preview past its
    timeout, or a process that died, ends the process (the next preview starts another). It ends when idle
    for `PREVIEW_IDLE_S` and with the service."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = Path(state_dir).resolve()
        self._proc: asyncio.subprocess.Process | None = None
        self._memory_mb = 0
        self._lock = asyncio.Lock()
        self._idle: asyncio.TimerHandle | None = None

    async def preview(self, preview: AugmentPreview) -> dict[str, Any]:
        request = msgspec.structs.asdict(preview) | {"state_dir": str(self._state_dir)}
        async with self._lock:
            if self._idle is not None:
                self._idle.cancel()
            try:
                return await self._ask(request, preview)
            finally:
                if self._proc is not None:
                    self._idle = asyncio.get_running_loop().call_later(
                        PREVIEW_IDLE_S, lambda: asyncio.ensure_future(self.close()))

    async def _ask(self, request: dict[str, Any], preview: AugmentPreview) -> dict[str, Any]:
        if self._proc is not None and (self._proc.returncode is not None or self._memory_mb != preview.memory_mb):
            await self._end()
        if self._proc is None:
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", AUGMENT_CHILD_MODULE, "--serve", str(preview.memory_mb),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                    env=child_environment(), start_new_session=True, limit=PREVIEW_LINE_LIMIT)
            except OSError as exc:
                log.error("cannot start the augmentation preview process: %s", exc)
                raise ValidationUnavailable("the augmentation preview is unavailable: its process could not be "
                                            "started") from exc
            self._memory_mb = preview.memory_mb
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), preview.timeout_s)
        except TimeoutError:
            await self._end()
            raise ValidationUnavailable(f"the augmentation preview took longer than {preview.timeout_s:g} s and was "
                                        "stopped; try again later, with fewer images or a smaller imgsz",
                                        retry_after_s=30) from None
        except (ConnectionError, ValueError, asyncio.LimitOverrunError) as exc:
            await self._end()
            raise ValidationUnavailable(f"the augmentation preview failed: {type(exc).__name__}") from None
        except BaseException:
            await self._end()  # cancelled mid-answer: the process's next line would be this one's
            raise
        try:
            answer = json.loads(line)
            if not isinstance(answer, dict) or "ok" not in answer:
                raise ValueError("not an answer")
        except ValueError:
            await self._end()
            raise ValidationUnavailable("the augmentation preview failed: its process ended without an answer (it "
                                        f"may have run out of the {preview.memory_mb} MB it may use)") from None
        return answer

    async def _end(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._lock.locked():
            return  # a preview started meanwhile; it sets a new idle timer
        await self._end()


async def _run_child(request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one validation child; its report, or ValidationUnavailable if it answered nothing usable."""
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", CHILD_MODULE, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=child_environment(), start_new_session=True)
    except OSError as exc:
        log.error("cannot start the architecture validation process: %s", exc)
        raise ValidationUnavailable("architecture validation is unavailable: its process could not be "
                                    "started") from exc
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()), timeout_s)
    except TimeoutError:
        raise ValidationUnavailable(f"architecture validation took longer than {timeout_s:g} s and was stopped; "
                                    "try again later or with a smaller imgsz", retry_after_s=30) from None
    finally:
        if proc.returncode is None:  # timed out, or this request was cancelled: the child goes too
            proc.kill()
            await proc.wait()
    try:
        result = json.loads(stdout)
        if not isinstance(result, dict) or "valid" not in result:
            raise ValueError("not a report")
    except ValueError:
        assert proc.returncode is not None
        status = (f"was killed by signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
                  else f"exited with status {proc.returncode}")
        log.warning("architecture validation process %s: %s", status, stderr.decode(errors="replace")[-2000:])
        raise ValidationUnavailable(f"architecture validation failed: its process {status} (it may have run out "
                                    "of the memory validation may use); nothing was saved") from None
    return result


def probe_export_formats(state_dir: Path) -> list[dict[str, Any]]:
    """Every Ultralytics export format and whether this runner can produce it (blocking: imports Ultralytics)."""
    from runner.yolo.export import export_formats
    from runner.yolo.offline import prepare_ultralytics

    prepare_ultralytics(state_dir)
    return export_formats()


class YoloService:
    """Answers the gateway's YOLO service requests on one connection."""

    def __init__(self, nc: NATS, settings: Settings, runner_id: str) -> None:
        self._nc = nc
        self._settings = settings
        self._runner_id = runner_id
        self._subjects = Subjects(settings.bus_prefix)
        self._formats: list[dict[str, Any]] | None = None
        self._previews = PreviewWorker(settings.state_dir)
        self._formats_lock = asyncio.Lock()
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        group = self._subjects.yolo_service_group
        for operation, handler in ((ARCHITECTURE, self._on_architecture), (EXPORT_FORMATS, self._on_export_formats),
                                   (AUGMENT, self._on_augment)):
            self._subscriptions.append(await self._nc.subscribe(
                self._subjects.yolo_service(operation), queue=group, cb=self._replying(handler)))
        await self._nc.flush()  # subscribed at the server before anyone is told this runner is up

    async def stop(self) -> None:
        for sub in self._subscriptions:
            await sub.unsubscribe()
        self._subscriptions.clear()
        for task in self._tasks:
            task.cancel()  # a validation child is killed with its request
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._previews.close()

    def _replying(self, handler: Any) -> Any:
        """A subscription callback that answers each request in a task of its own (nats-py runs one
        subscription's callbacks one after another; validations may run side by side)."""
        async def handle(msg: Msg) -> None:
            task = asyncio.create_task(answer(msg), name=f"yolo-service {msg.subject}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        async def answer(msg: Msg) -> None:
            try:
                reply = await handler(msg.data)
            except Exception as exc:  # noqa: BLE001 - the asker gets a 503 with the reason, not a hang
                log.exception("yolo service request on %s failed", msg.subject)
                reply = ServiceReply(status="unavailable", error=f"the runner failed: {type(exc).__name__}: {exc}")
            if msg.reply:
                try:
                    await msg.respond(msgspec.json.encode(msgspec.structs.replace(reply, runner_id=self._runner_id)))
                except nats.errors.Error as exc:  # the connection is closing: the asker times out (503)
                    log.warning("yolo service: cannot answer on %s: %r", msg.subject, exc)

        return handle

    async def _on_architecture(self, data: bytes) -> ServiceReply:
        try:
            check = architecture_check_decoder.decode(data)
        except msgspec.DecodeError as exc:
            return ServiceReply(status="unavailable", error=f"bad architecture request: {exc}")
        try:
            result = await validate_in_child(check, self._settings.state_dir,
                                             self._settings.architecture_validate_concurrency)
        except ValidationUnavailable as exc:
            return ServiceReply(status="unavailable", error=str(exc), retry_after_s=exc.retry_after_s)
        return ServiceReply(status="ok", result=result)

    async def _on_augment(self, data: bytes) -> ServiceReply:
        """An augmentation preview: `result` is the child's answer (`ok` true with the images, or false with
        `reason` `invalid` and the `field` at fault); `unavailable` when the child could not answer."""
        try:
            preview = augment_preview_decoder.decode(data)
        except msgspec.DecodeError as exc:
            return ServiceReply(status="unavailable", error=f"bad augmentation request: {exc}")
        preview = msgspec.structs.replace(preview, max_bytes=min(preview.max_bytes, self._nc.max_payload - 65_536))
        try:
            result = await self._previews.preview(preview)
        except ValidationUnavailable as exc:
            return ServiceReply(status="unavailable", error=str(exc), retry_after_s=exc.retry_after_s)
        if not result.get("ok") and result.get("reason") in ("setup", "memory", "dataset"):
            return ServiceReply(status="unavailable", error=f"augmentation preview failed: {result.get('error')}")
        return ServiceReply(status="ok", result=result)

    async def _on_export_formats(self, data: bytes) -> ServiceReply:
        async with self._formats_lock:
            if self._formats is None:
                self._formats = await anyio.to_thread.run_sync(probe_export_formats, self._settings.state_dir)
        return ServiceReply(status="ok", result=self._formats)


async def serve_yolo_service(nc: NATS, settings: Settings, runner_id: str) -> YoloService | None:
    """Start answering (None when Ultralytics is not installed here); `stop()` to end."""
    if not available():
        return None
    service = YoloService(nc, settings, runner_id)
    await service.start()
    return service
