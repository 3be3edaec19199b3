"""Training-resource advice, measured on this runner's device: batch, imgsz, workers, amp and cache for a model.

Answered on `Subjects.advice(pool)` (one runner of the pool: queue group). Nothing is a fixed constant per
model; every number comes from measuring the model here:

- **CUDA**: Ultralytics' own `check_train_batch_size` (its AutoBatch: profiles a few batch sizes on the GPU
  and fits memory against batch for a fraction of the free memory). This path runs only where CUDA is
  available; it is not exercised by the test suite (no GPU on the CI machines).
- **CPU**: the model is built from its YAML (offline) and a forward+backward pass is run at batch 1, 2 and 4
  after one warm-up pass. Memory is the peak resident set size (RSS) of this process during the pass over
  the RSS just before it, sampled every millisecond by a helper thread. torch's CPU allocator has no
  statistics and `tracemalloc` does not see it, but its large buffers come from `mmap`ed malloc blocks that
  show in RSS; the C heap is trimmed (`malloc_trim`, glibc) before each probe so memory retained by an
  earlier pass does not hide the next one's. The probes are fitted with a line (memory = fixed + per image ×
  batch); optimizer state and the EMA copy Ultralytics keeps are added from the parameter count (12 bytes
  per parameter: AdamW's two moments and the EMA weights, float32). The training data pipeline (mosaic
  buffers, loss targets) is not in the measurement, so the budget keeps a margin: usage under 60 % of the
  memory available now (or of the client's own limit).

Measurements run in a worker thread, one at a time, and stop probing larger batches when `MEASURE_CAP_S` is
spent (at least two probes are needed). They are cached per (model, imgsz, device) for `CACHE_TTL_S`.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psutil
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from runner.devices import DeviceError, parse_device
from shared.contracts.fleet import AdviceReply, AdviceRequest, advice_request_decoder
from shared.settings import Settings
from shared.subjects import Subjects

log = logging.getLogger(__name__)

MB = 1024 * 1024
MEMORY_FRACTION = 0.6
"""Plan training to use at most this share of the memory available now."""
MAX_BATCH = 64
PROBE_BATCHES = (1, 2, 4)
MEASURE_CAP_S = 60.0
"""Probing stops at the first batch size that would start after this long (two probes always run)."""
REPLY_SLACK_S = 30.0
"""On top of `MEASURE_CAP_S`: building the model, importing Ultralytics the first time."""
CACHE_TTL_S = 600.0
BYTES_PER_PARAM_EXTRA = 12
"""AdamW's two moments plus the EMA copy of the weights, float32."""
STRIDE = 32
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".dng", ".mpo", ".heic"})
MAX_FILES_SCANNED = 500_000
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")


class AdviceError(ValueError):
    """The request cannot be advised on (unknown model, a device this runner does not have)."""


@dataclass(frozen=True)
class Probe:
    batch: int
    peak_mb: float
    """Peak RSS over the RSS before the pass."""
    seconds: float


@dataclass
class Measurement:
    model: str
    task: str | None
    device: str
    imgsz: int
    parameters: int
    method: str
    probes: list[Probe] = field(default_factory=list)
    fixed_mb: float = 0.0
    per_image_mb: float = 0.0
    step_fixed_s: float | None = None
    step_per_image_s: float | None = None
    cuda_batch: int | None = None
    """CUDA: the batch Ultralytics' AutoBatch chose for MEMORY_FRACTION of the free GPU memory."""
    gpu_total_mb: float | None = None
    gpu_free_mb: float | None = None
    capped: bool = False
    """Probing stopped early (time cap)."""

    def need_mb(self, batch: int) -> float:
        return self.fixed_mb + self.per_image_mb * batch

    def step_s(self, batch: int) -> float | None:
        if self.step_fixed_s is None or self.step_per_image_s is None:
            return None
        return self.step_fixed_s + self.step_per_image_s * batch

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method, "parameters": self.parameters,
            "probes": [{"batch": p.batch, "peak_mb": round(p.peak_mb, 1), "seconds": round(p.seconds, 4)}
                       for p in self.probes],
            "fixed_mb": round(self.fixed_mb, 1), "per_image_mb": round(self.per_image_mb, 2),
            "capped": self.capped,
        }
        if self.cuda_batch is not None:
            out.update(autobatch=self.cuda_batch, gpu_total_mb=self.gpu_total_mb, gpu_free_mb=self.gpu_free_mb)
        return out


# -- measuring ---------------------------------------------------------------------------------------------

_measure_lock = threading.Lock()
_cache: dict[tuple[str, int, str], tuple[float, Measurement]] = {}


def _model_yaml(model: str) -> str:
    name = model.removesuffix(".yaml").removesuffix(".pt")
    if not MODEL_RE.match(name):
        raise AdviceError(f"invalid model name {model!r}")
    return f"{name}.yaml"


def _build(model: str, state_dir: Path) -> Any:
    from runner.yolo.offline import prepare_ultralytics

    prepare_ultralytics(state_dir)
    from ultralytics import YOLO

    try:
        return YOLO(_model_yaml(model))
    except (FileNotFoundError, AttributeError, KeyError, ValueError) as exc:
        raise AdviceError(f"Ultralytics has no model {model!r} ({type(exc).__name__}: {exc})") from None


def _trim_heap() -> None:
    """Give freed C-heap memory back to the OS (glibc), so RSS shows the next pass's own memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _PeakRss:
    """Peak RSS of this process while the block runs, sampled every `every_s` by a helper thread."""

    def __init__(self, every_s: float = 0.001) -> None:
        self._proc = psutil.Process()
        self._every = every_s
        self._stop = threading.Event()
        self.before = self.peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._every)

    def __enter__(self) -> _PeakRss:
        self.before = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = max(self.peak, self._proc.memory_info().rss)
        self._stop.set()
        self._thread.join()

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.before) / MB


def _loss(out: Any) -> Any:
    """A scalar depending on every tensor of the model's training-mode output (lists, tuples, dicts)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out.float().sum() if out.requires_grad else None
    parts = out.values() if isinstance(out, dict) else out if isinstance(out, list | tuple) else []
    total = None
    for part in parts:
        value = _loss(part)
        if value is not None:
            total = value if total is None else total + value
    return total


def _pass(net: Any, batch: int, imgsz: int, channels: int) -> float:
    import torch

    x = torch.rand(batch, channels, imgsz, imgsz)
    start = time.perf_counter()
    loss = _loss(net(x))
    if loss is None:
        raise AdviceError("the model's training output has no tensor to back-propagate")
    loss.backward()
    seconds = time.perf_counter() - start
    net.zero_grad(set_to_none=True)
    return seconds


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=False)) / var if var else 0.0
    return my - slope * mx, slope


def measure_cpu(model: str, imgsz: int, state_dir: Path, cap_s: float = MEASURE_CAP_S) -> Measurement:
    """Build `model` and measure forward+backward passes on the CPU (blocking: call it in a thread)."""
    yolo = _build(model, state_dir)
    net = yolo.model
    net.train()
    for p in net.parameters():
        p.requires_grad_(True)
    channels = int(getattr(net, "yaml", {}).get("channels", 3))
    measurement = Measurement(model=model, task=yolo.task, device="cpu", imgsz=imgsz,
                              parameters=sum(p.numel() for p in net.parameters()), method="cpu-rss-peak")
    start = time.monotonic()
    _pass(net, 1, imgsz, channels)  # warm-up: one-time buffers (gradients, oneDNN caches) and timings
    for batch in PROBE_BATCHES:
        if len(measurement.probes) >= 2 and time.monotonic() - start > cap_s:
            measurement.capped = True
            break
        _trim_heap()
        with _PeakRss() as rss:
            seconds = _pass(net, batch, imgsz, channels)
        measurement.probes.append(Probe(batch=batch, peak_mb=rss.extra_mb, seconds=seconds))
    del yolo, net
    _trim_heap()
    xs = [float(p.batch) for p in measurement.probes]
    fixed, per_image = _fit(xs, [p.peak_mb for p in measurement.probes])
    if per_image <= 0:  # noise swamped the growth: the conservative reading, all of it per image
        fixed, per_image = 0.0, max(p.peak_mb / p.batch for p in measurement.probes)
    measurement.per_image_mb = per_image
    measurement.fixed_mb = max(fixed, 0.0) + measurement.parameters * BYTES_PER_PARAM_EXTRA / MB
    step_fixed, step_per_image = _fit(xs, [p.seconds for p in measurement.probes])
    measurement.step_per_image_s = max(step_per_image, 0.0)
    measurement.step_fixed_s = max(step_fixed, 0.0)
    return measurement


def measure_cuda(model: str, imgsz: int, index: int, state_dir: Path) -> Measurement:  # pragma: no cover - GPU
    """Ultralytics' AutoBatch on GPU `index` (blocking: call it in a thread). Needs CUDA."""
    import torch

    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise AdviceError(f"CUDA device {index} is not available to torch on this runner")
    from ultralytics.utils.autobatch import check_train_batch_size

    yolo = _build(model, state_dir)
    net = yolo.model.to(f"cuda:{index}")
    free, total = torch.cuda.mem_get_info(index)
    batch = check_train_batch_size(net, imgsz, amp=True, batch=MEMORY_FRACTION)
    measurement = Measurement(model=model, task=yolo.task, device=f"cuda:{index}", imgsz=imgsz,
                              parameters=sum(p.numel() for p in net.parameters()),
                              method="ultralytics-autobatch", cuda_batch=int(batch),
                              gpu_total_mb=round(total / MB), gpu_free_mb=round(free / MB))
    del yolo, net
    torch.cuda.empty_cache()
    return measurement


def measure(model: str, imgsz: int, device: str, state_dir: Path) -> Measurement:
    """A cached measurement, else a new one (one at a time in this process)."""
    key = (model, imgsz, device)
    with _measure_lock:
        hit = _cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < CACHE_TTL_S:
            return hit[1]
        kind, index = parse_device(device)
        result = measure_cpu(model, imgsz, state_dir) if kind == "cpu" else measure_cuda(model, imgsz, index or 0,
                                                                                          state_dir)
        _cache[key] = (time.monotonic(), result)
        return result


# -- advising ----------------------------------------------------------------------------------------------


def _power_of_two_at_most(value: float) -> int:
    return 2 ** math.floor(math.log2(value)) if value >= 1 else 0


def _allowed_root(path: Path, settings: Settings) -> bool:
    roots = [settings.datasets_dir, *(Path(r).resolve() for r in settings.data_roots)]
    return any(path.is_relative_to(root) for root in roots)


def count_images(path: Path) -> tuple[int, bool]:
    """Images under `path` (a folder, or the folder of a data YAML); whether the count stopped early."""
    folder = path.parent if path.is_file() else path
    count = scanned = 0
    for _, _, files in os.walk(folder):
        for name in files:
            scanned += 1
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                count += 1
            if scanned >= MAX_FILES_SCANNED:
                return count, True
    return count, False


def _cache_advice(request: AdviceRequest, imgsz: int, available_mb: float, need_mb: float, settings: Settings,
                  notes: list[str], warnings: list[str]) -> str | bool:
    images = request.dataset_images
    path = Path(request.dataset_path).resolve() if request.dataset_path else None
    if path is not None and not _allowed_root(path, settings):
        warnings.append(f"dataset path {request.dataset_path!r} is outside this runner's data roots; "
                        "not inspected")
        path = None
    if images is None and path is not None and path.exists():
        images, partial = count_images(path)
        if partial:
            notes.append(f"counted images in the first {MAX_FILES_SCANNED} files of the dataset only")
    if images is None:
        notes.append("cache: no dataset given, so not decided (False)")
        return False
    ram_mb = images * imgsz * imgsz * 3 / MB
    room_mb = available_mb - need_mb
    if ram_mb <= 0.5 * room_mb:
        notes.append(f"cache=ram: {images} images at imgsz {imgsz} take at most {ram_mb:.0f} MB decoded, "
                     f"half of the {room_mb:.0f} MB left beside training is enough")
        return "ram"
    folder = (path.parent if path.is_file() else path) if path is not None else None
    if folder is not None and os.access(folder, os.W_OK):
        free_mb = psutil.disk_usage(str(folder)).free / MB
        if ram_mb * 2 < free_mb:
            notes.append(f"cache=disk: the decoded images ({ram_mb:.0f} MB) do not fit in memory beside "
                         f"training; .npy files beside the images ({free_mb:.0f} MB free)")
            return "disk"
    notes.append(f"cache off: the decoded images ({ram_mb:.0f} MB) fit neither in memory nor on a writable "
                 "disk beside the dataset")
    return False


def suggest(request: AdviceRequest, measurement: Measurement, settings: Settings, *, active_runs: int = 0
            ) -> AdviceReply:
    """Turn a measurement into batch/workers/amp/cache and warnings (cheap: no measuring here)."""
    warnings: list[str] = []
    notes: list[str] = []
    imgsz = measurement.imgsz
    if request.imgsz % STRIDE:
        warnings.append(f"imgsz {request.imgsz} is not a multiple of {STRIDE} (the model's largest stride); "
                        f"Ultralytics rounds it up to {imgsz}, measured and suggested here")
    memory = psutil.virtual_memory()
    available_mb, total_mb = memory.available / MB, memory.total / MB
    cpu_count = psutil.cpu_count() or 1
    described = measurement.describe()
    if measurement.cuda_batch is not None:  # pragma: no cover - GPU
        batch = max(1, min(measurement.cuda_batch, 1024))
        amp, workers = True, min(cpu_count, 8)
        if request.batch is not None and request.batch > measurement.cuda_batch:
            warnings.append(f"batch {request.batch} is larger than the {measurement.cuda_batch} that fits in "
                            f"{MEMORY_FRACTION:.0%} of the free GPU memory ({measurement.gpu_free_mb} MB); "
                            "it may run out of memory")
        if measurement.gpu_free_mb and measurement.gpu_total_mb and \
                measurement.gpu_free_mb < 0.25 * measurement.gpu_total_mb:
            warnings.append(f"GPU memory pressure: only {measurement.gpu_free_mb} of "
                            f"{measurement.gpu_total_mb} MB free")
        need_mb = 0.0  # host memory for training on the GPU is small next to the dataset cache
    else:
        budget_mb = MEMORY_FRACTION * available_mb
        if request.memory_limit_mb is not None:
            budget_mb = min(budget_mb, float(request.memory_limit_mb))
            notes.append(f"planned within the requested {request.memory_limit_mb} MB")
        fits = (budget_mb - measurement.fixed_mb) / measurement.per_image_mb
        batch = min(_power_of_two_at_most(fits), MAX_BATCH)
        if batch < 1:
            batch = 1
            warnings.append(f"memory pressure: even batch 1 needs about {measurement.need_mb(1):.0f} MB, more "
                            f"than the {budget_mb:.0f} MB budget ({MEMORY_FRACTION:.0%} of "
                            f"{available_mb:.0f} MB available)")
        elif available_mb < 0.2 * total_mb:
            warnings.append(f"memory pressure: only {available_mb:.0f} of {total_mb:.0f} MB available on "
                            "this host")
        if request.batch is not None:
            need = measurement.need_mb(request.batch)
            if need > available_mb:
                warnings.append(f"batch {request.batch} would not fit: it needs about {need:.0f} MB, "
                                f"{available_mb:.0f} MB are available")
            elif need > budget_mb:
                warnings.append(f"batch {request.batch} is too large: it needs about {need:.0f} MB, over the "
                                f"{budget_mb:.0f} MB budget; {batch} fits")
        amp = False
        workers = min(cpu_count, 8)
        notes.append(f"workers={workers} is min(CPU cores, 8); on CPU Ultralytics forces workers=0 anyway "
                     "(data loading in the training process)")
        notes.append("amp=False: mixed precision needs CUDA")
        need_mb = measurement.need_mb(batch)
        described.update(available_mb=round(available_mb), budget_mb=round(budget_mb),
                         estimated_memory_mb=round(need_mb))
        if (step := measurement.step_s(batch)) is not None:
            described["estimated_step_s"] = round(step, 4)
    if active_runs:
        warnings.append(f"measured while {active_runs} run(s) were active on this runner: the numbers include "
                        "their load")
    cache = _cache_advice(request, imgsz, available_mb, need_mb, settings, notes, warnings)
    return AdviceReply(device=measurement.device, model=measurement.model, task=measurement.task, imgsz=imgsz,
                       batch=batch, workers=workers, amp=amp, cache=cache, warnings=warnings, notes=notes,
                       measurement=described)


def target_device(requested: str, runner_device: str) -> str:
    """The device to measure: the runner's own (`auto`), or the requested one if the runner has it."""
    if requested == "auto":
        return runner_device
    try:
        kind, _ = parse_device(requested)
    except DeviceError as exc:
        raise AdviceError(str(exc)) from None
    if requested == runner_device or kind == "cpu":
        return requested
    raise AdviceError(f"this runner runs on {runner_device}, not {requested}")


async def advise(request: AdviceRequest, settings: Settings, runner_device: str, *, active_runs: int = 0
                 ) -> AdviceReply:
    if request.imgsz < STRIDE or request.imgsz > 4096:
        raise AdviceError(f"imgsz must be between {STRIDE} and 4096, got {request.imgsz}")
    device = target_device(request.device, runner_device)
    _model_yaml(request.model)
    imgsz = math.ceil(request.imgsz / STRIDE) * STRIDE  # what Ultralytics trains at
    with anyio.fail_after(MEASURE_CAP_S + REPLY_SLACK_S):
        measurement = await anyio.to_thread.run_sync(
            measure, request.model, imgsz, device, settings.state_dir, abandon_on_cancel=True)
    return await anyio.to_thread.run_sync(
        lambda: suggest(request, measurement, settings, active_runs=active_runs))


async def serve_advice(
    nc: NATS, settings: Settings, pool: str, runner_device: str, context: Callable[[], tuple[str, str, int]]
) -> Subscription:
    """Answer advice requests for `pool` (one runner of the pool answers each). `context()` gives (runner id,
    host, runs active now). Unsubscribe (or drain the connection) to stop."""
    subjects = Subjects(settings.bus_prefix)

    async def handle(msg: Msg) -> None:
        runner_id, host, active = context()
        try:
            request = advice_request_decoder.decode(msg.data)
            reply = await advise(request, settings, runner_device, active_runs=active)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reply = AdviceReply(error=f"bad advice request: {exc}", error_kind="invalid")
        except AdviceError as exc:
            reply = AdviceReply(error=str(exc), error_kind="invalid")
        except TimeoutError:
            reply = AdviceReply(error=f"the measurement took longer than {MEASURE_CAP_S + REPLY_SLACK_S:g} s",
                                error_kind="failed")
        except Exception as exc:  # noqa: BLE001 - a failed measurement is an answer, not a dead runner
            log.exception("advice for %r failed", msg.data[:200])
            reply = AdviceReply(error=f"the measurement failed: {type(exc).__name__}: {exc}", error_kind="failed")
        reply = msgspec.structs.replace(reply, runner_id=runner_id, host=host)
        if msg.reply:
            await msg.respond(msgspec.json.encode(reply))

    return await nc.subscribe(subjects.advice(pool), queue=subjects.advice_group, cb=handle)
