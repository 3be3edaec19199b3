"""Augmentation previews in a process of their own: `python -m runner.yolo.augment_child [--serve MEMORY_MB]`.

Without arguments: one preview. Reads the request (`shared.contracts.yolo_service.AugmentPreview` as JSON, plus `state_dir`) on stdin and
writes one JSON object on stdout: `{"ok": true, "result": ...}` (`runner.yolo.augment.preview`),
`{"ok": false, "reason": "invalid", "error", "field"}` for what the request got wrong, or
`{"ok": false, "reason": "setup", "error"}` when torch or Ultralytics could not be loaded. The address space
is limited to `memory_mb` before torch is imported (as `runner.yolo.architecture_child` does).

With `--serve MEMORY_MB`: one request per line on stdin, one answer per line on stdout, until stdin ends;
torch and Ultralytics are imported once (seconds), each preview then takes well under a second. Each request
seeds every generator and builds its dataset anew, so an answer does not depend on what came before it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from runner.yolo.architecture_child import limit_memory


def run(request: dict[str, Any], limited: bool = False) -> dict[str, Any]:
    if not limited:
        limit_memory(int(request["memory_mb"]))
    try:
        import torch

        from runner.yolo.offline import prepare_ultralytics

        torch.set_num_threads(1)
        prepare_ultralytics(Path(request["state_dir"]))
        from runner.yolo.augment import PreviewError, preview
    except BaseException as exc:  # noqa: BLE001 - MemoryError, ImportError, OSError from a refused mmap
        return {"ok": False, "reason": "setup",
                "error": f"could not load torch and Ultralytics within {request['memory_mb']} MB "
                         f"({type(exc).__name__}: {exc})"}
    try:
        return {"ok": True, "result": preview(request)}
    except PreviewError as exc:
        return {"ok": False, "reason": "invalid", "error": str(exc), "field": exc.field}
    except MemoryError:
        return {"ok": False, "reason": "memory", "error": f"out of memory (the preview may use {request['memory_mb']} MB)"}
    except (FileNotFoundError, ValueError, KeyError) as exc:
        return {"ok": False, "reason": "dataset", "error": f"cannot read the dataset: {type(exc).__name__}: {exc}"}


def main(argv: list[str]) -> int:
    result = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever torch or Ultralytics print goes to stderr; stdout carries the answers only
    sys.stdout = sys.stderr
    if argv[:1] == ["--serve"]:
        limit_memory(int(argv[1]))
        for line in sys.stdin.buffer:
            if line.strip():
                result.write(json.dumps(run(json.loads(line), limited=True)) + "\n")
                result.flush()
        return 0
    result.write(json.dumps(run(json.loads(sys.stdin.buffer.read()))))
    result.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
