"""GPU use of a run, sampled with NVML (nvidia-ml-py) for the GPUs the runner gave it.

Metrics `gpu.<index>.util` (percent) and `gpu.<index>.mem_mb`. No driver, no NVML or no such GPU → no
samples and no error.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import anyio

from runner.executors.base import Emitter

_CUDA_RE = re.compile(r"^(?:cuda|gpu)?:?(\d+(?:,\d+)*)\Z")


def cuda_indices(device: str) -> list[int]:
    """GPU indices of a runner device: `cuda:0` → [0], `cuda:0,1` → [0, 1]; `cpu` (or anything else) → []."""
    match = _CUDA_RE.match(device.strip().lower())
    return [int(i) for i in match[1].split(",")] if match else []


class _Nvml:
    def __init__(self, indices: list[int]) -> None:
        self.indices = indices
        self.handles: dict[int, Any] = {}
        self.pynvml: Any = None

    def open(self) -> bool:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no package, no driver, no device nodes: no GPUs to watch  # noqa: BLE001
            return False
        self.pynvml = pynvml
        for index in self.indices:
            try:
                self.handles[index] = pynvml.nvmlDeviceGetHandleByIndex(index)
            except pynvml.NVMLError:
                continue
        if not self.handles:
            self.close()
            return False
        return True

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for index, handle in self.handles.items():
            try:
                util = self.pynvml.nvmlDeviceGetUtilizationRates(handle)
                mem = self.pynvml.nvmlDeviceGetMemoryInfo(handle)
            except self.pynvml.NVMLError:
                continue
            out[f"gpu.{index}.util"] = float(util.gpu)
            out[f"gpu.{index}.mem_mb"] = round(mem.used / (1024 * 1024), 1)
        return out

    def close(self) -> None:
        if self.pynvml is not None:
            try:
                self.pynvml.nvmlShutdown()
            except self.pynvml.NVMLError:
                pass
            self.pynvml = None


async def sample_gpus(indices: list[int], every_s: float, emit: Emitter) -> None:
    """Emit GPU metrics every `every_s` seconds until cancelled; returns at once with nothing to watch."""
    if not indices:
        return
    nvml = _Nvml(indices)
    if not await anyio.to_thread.run_sync(nvml.open):
        return
    try:
        while True:
            if sample := await anyio.to_thread.run_sync(nvml.sample):
                await emit.metrics(sample)
            await asyncio.sleep(every_s)
    finally:
        await asyncio.shield(anyio.to_thread.run_sync(nvml.close))
