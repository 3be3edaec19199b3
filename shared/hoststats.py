"""What a host has and uses: CPU, memory, the disk of a state folder, GPUs (runner heartbeats, the gateway).

`sample_host` blocks (psutil reads /proc, NVML talks to the driver): call it in a worker thread. CPU use is
measured since the previous call (`psutil.cpu_percent(interval=None)`), so the first sample reads 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil

from shared.contracts.events import DeviceInfo, HostStats

MB = 1024 * 1024


def _existing(path: Path) -> Path:
    """`path`, or its nearest existing parent (the state folder may not exist yet)."""
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def sample_host(state_dir: Path) -> HostStats:
    memory = psutil.virtual_memory()
    try:
        disk = psutil.disk_usage(str(_existing(state_dir)))
        disk_total, disk_free = disk.total // MB, disk.free // MB
    except OSError:
        disk_total = disk_free = None
    try:
        load1: float | None = round(os.getloadavg()[0], 2)
    except OSError:
        load1 = None
    return HostStats(
        cpu_percent=psutil.cpu_percent(interval=None),
        cpu_count=psutil.cpu_count() or None,
        memory_total_mb=memory.total // MB,
        memory_used_mb=(memory.total - memory.available) // MB,
        memory_available_mb=memory.available // MB,
        disk_total_mb=disk_total,
        disk_free_mb=disk_free,
        load1=load1,
        gpus=list_gpus(),
    )


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
