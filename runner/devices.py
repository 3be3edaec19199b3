"""The device a runner runs its jobs on: `cpu` or `cuda:N`, described for the runner heartbeat.

GPUs are read through NVML (nvidia-ml-py). A host without the NVIDIA driver simply has no GPUs.
"""

from __future__ import annotations

import os
import platform
import re
from typing import Any

from shared.contracts.events import DeviceInfo

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
    total_mb = None
    try:
        total_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    except (ValueError, OSError):
        pass
    utilization = None
    try:
        utilization = min(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except OSError:
        pass
    name = f"{platform.machine() or 'cpu'} ({os.cpu_count() or '?'} cores)"
    return DeviceInfo(name=name, kind="cpu", memory_total_mb=total_mb, utilization=utilization)


def list_gpus() -> list[DeviceInfo]:
    """The NVIDIA GPUs of this host; empty when there is no driver or no NVML."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return []
    except pynvml.NVMLError:
        return []  # driver present but unusable (e.g. no device nodes in this container)
    try:
        return [_describe_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


def _describe_gpu(pynvml: Any, index: int) -> DeviceInfo:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = pynvml.nvmlDeviceGetName(handle)
    if isinstance(name, bytes):
        name = name.decode()
    memory_total = memory_used = utilization = temperature = None
    try:
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        memory_total, memory_used = memory.total // (1024 * 1024), memory.used // (1024 * 1024)
    except pynvml.NVMLError:
        pass
    try:
        utilization = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
    except pynvml.NVMLError:
        pass
    try:
        temperature = float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
    except pynvml.NVMLError:
        pass
    return DeviceInfo(
        name=name,
        kind="cuda",
        index=index,
        memory_total_mb=memory_total,
        memory_used_mb=memory_used,
        utilization=utilization,
        temperature_c=temperature,
    )
