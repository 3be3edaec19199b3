"""Validate one architecture in a process of its own: `python -m runner.yolo.architecture_child`.

Reads one request as JSON on stdin:
    {"yaml": ..., "imgsz": 640, "channels": 3, "state_dir": ..., "memory_mb": 4096,
     "budget": {"max_params": ..., "max_gflops": ..., "max_activation_mb": ...}}
and writes one JSON object on stdout: the report of `validate_architecture`, or
`{"valid": false, "reason": "setup", "error": ...}` when torch or Ultralytics could not even be loaded.

The address space is limited to `memory_mb` (RLIMIT_AS) before torch is imported: torch and Ultralytics
take ~0.9 GB of it by themselves, a yolov8x forward pass at 2048 ~2.5 GB. The parent (the gateway) gives this
process a minimal environment, a timeout, and counts what it runs at once.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any


def limit_memory(memory_mb: int) -> None:
    limit = memory_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run(request: dict[str, Any]) -> dict[str, Any]:
    limit_memory(int(request["memory_mb"]))
    try:
        import torch

        from runner.yolo.architecture import Budget, validate_architecture
        from runner.yolo.offline import prepare_ultralytics

        torch.set_num_threads(1)  # one core per validation: the gateway's host is not a training machine
        prepare_ultralytics(Path(request["state_dir"]))
        import ultralytics.nn.tasks  # noqa: F401 - loaded here, so that a failure is a setup failure
    except BaseException as exc:  # noqa: BLE001 - MemoryError, ImportError, OSError from a refused mmap
        return {"valid": False, "reason": "setup",
                "error": f"could not load torch and Ultralytics within {request['memory_mb']} MB "
                         f"({type(exc).__name__}: {exc})"}
    budget = Budget(**request.get("budget", {}))
    try:
        return validate_architecture(request["yaml"], int(request["imgsz"]), channels=int(request["channels"]),
                                     state_dir=Path(request["state_dir"]), budget=budget)
    except MemoryError:
        return {"valid": False, "reason": "memory", "error": "out of memory building or running the model"}


def main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    result = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever torch or Ultralytics print goes to stderr; stdout carries the answer only
    sys.stdout = sys.stderr
    report = run(request)
    result.write(json.dumps(report))
    result.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
