"""The device a runner runs its jobs on: `cpu` or `cuda:N`, described for the runner heartbeat.

GPUs are read through NVML (nvidia-ml-py, `shared.hoststats.list_gpus`). A host without the NVIDIA driver simply
has no GPUs.
"""

from __future__ import annotations

import os
import platform
import re

import psutil

from shared.contracts.events import DeviceInfo
from shared.hoststats import list_gpus

DEVICE_RE = re.compile(r"^(cpu|cuda:(\d{1,3}))$")


class DeviceError(ValueError):
    """The device is not one this host has."""


def parse_device(device: str) -> tuple[str, int | None]:
    """`"cpu"` -> ("cpu", None); `"cuda:1"` -> ("cuda", 1). Raises `DeviceError` for anything else."""
    match = DEVICE_RE.match(device)
    if not match:
        raise DeviceError(f"invalid device {device!r}: use cpu or cuda:N (N = GPU index)")
    return ("cpu", None) if match[1] == "cpu" else ("cuda", int(match[2]))


def describe_device(device: str) -> DeviceInfo:
    """What the heartbeat says about the device (blocking for a few ms with NVML: call it in a thread)."""
    kind, index = parse_device(device)
    if kind == "cpu":
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
