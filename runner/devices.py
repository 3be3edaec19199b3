"""The device a runner runs its jobs on: `cpu`, `cuda:N` or `auto`, described for the runner heartbeat.

`auto`: the runner advertises every GPU of its host (the CPU when it has none) and gives each job a free GPU
when it claims it (`pick_device`).

GPUs are read through NVML (nvidia-ml-py, `shared.hoststats.list_gpus`). A host without the NVIDIA driver simply
has no GPUs.
"""

from __future__ import annotations

import os
import platform
import re

import psutil

from shared import names
from shared.contracts.commands import Requirements
from shared.contracts.events import DeviceInfo
from shared.hoststats import list_gpus

DEVICE_RE = re.compile(names.whole(r"(cpu|auto|cuda:(\d{1,3}))"))


class DeviceError(ValueError):
    """The device is not one this host has."""


def parse_device(device: str) -> tuple[str, int | None]:
    """`"cpu"` -> ("cpu", None); `"cuda:1"` -> ("cuda", 1); `"auto"` -> ("auto", None). Raises `DeviceError`
    for anything else."""
    match = DEVICE_RE.match(device)
    if not match:
        raise DeviceError(f"invalid device {device!r}: use cpu, auto or cuda:N (N = GPU index)")
    return (match[1], None) if match[1] in ("cpu", "auto") else ("cuda", int(match[2]))


def describe_devices(device: str) -> list[DeviceInfo]:
    """The devices a runner offers: its one device, or for `auto` every GPU of the host (else the CPU).
    Blocking for a few ms with NVML: call it in a thread."""
    if parse_device(device)[0] == "auto":
        return list_gpus() or [_describe_cpu()]
    return [describe_device(device)]


def pick_device(devices: list[DeviceInfo], busy: set[int], requirements: Requirements | None) -> str | None:
    """For an `auto` runner: the device string of a job (`cpu`, `cuda:N` or `cuda:N,M`), choosing GPUs that
    none of the runner's jobs uses, the least loaded first; None when not enough GPUs are free now."""
    req = requirements or Requirements()
    gpus = [d for d in devices if d.kind == "cuda" and d.index is not None]
    if not gpus or req.device == "cpu":
        return "cpu"
    minimum = req.min_gpu_memory_mb or 0
    free = [
        g for g in gpus
        if g.index not in busy and (g.memory_total_mb or 0) - (g.memory_used_mb or 0) >= minimum
    ]
    free.sort(key=lambda g: (g.utilization or 0.0, g.memory_used_mb or 0, g.index))
    wanted = req.gpus if req.needs_gpu else 1
    if len(free) < wanted:
        return None
    return "cuda:" + ",".join(str(g.index) for g in sorted(free[:wanted], key=lambda g: g.index or 0))


def describe_device(device: str) -> DeviceInfo:
    """What the heartbeat says about the device (blocking for a few ms with NVML: call it in a thread)."""
    kind, index = parse_device(device)
    if kind in ("cpu", "auto"):
        return _describe_cpu()
    gpus = {gpu.index: gpu for gpu in list_gpus()}
    if index not in gpus:
        have = ", ".join(f"cuda:{i}" for i in sorted(gpus)) or "none"
        raise DeviceError(f"device {device} not found on this host (GPUs: {have})")
    return gpus[index]


def _describe_cpu() -> DeviceInfo:
    memory = psutil.virtual_memory()
    total_mb, used_mb = memory.total // (1024 * 1024), (memory.total - memory.available) // (1024 * 1024)
    utilization = None
    try:
        utilization = min(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except OSError:
        pass
    name = f"{platform.machine() or 'cpu'} ({os.cpu_count() or '?'} cores)"
    return DeviceInfo(name=name, kind="cpu", memory_total_mb=total_mb, memory_used_mb=used_mb,
                      utilization=utilization)
