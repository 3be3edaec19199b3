"""The gateway's footprint: `import gateway.app` time, and a running gateway's RSS, idle and after one
request of every kind that once needed torch/Ultralytics (architecture validation, export formats, model
catalog, weights upload, dataset import, predict). Prints a JSON report.

    python -m bench.gateway_footprint [--imports 5] [--runners 1]

`import_gateway_app` has the median wall time and CPU time of `import gateway.app` in fresh interpreters
(bytecode already compiled); on a loaded machine the CPU time is the figure to compare (the load average is
in the report). `torch_loaded` says whether torch's shared library is mapped into the gateway's process
(`/proc/<pid>/maps`), which is how torch shows from outside; the in-process check of `sys.modules` is the
test `tests/integration/test_gateway_lean.py`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from bench.stack import REPO, running_stack

IMPORT_PROBE = ("import sys, time; t = time.perf_counter(); c = time.process_time(); import gateway.app; "
                "print(time.perf_counter() - t, time.process_time() - c, int('torch' in sys.modules), "
                "int('ultralytics' in sys.modules))")


def import_times(repeats: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", "import gateway.app"], env=env, check=True, cwd=REPO)  # compile once
    times, cpu, heavy = [], [], set()
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], env=env, check=True, cwd=REPO,
                             capture_output=True, text=True).stdout.split()
        times.append(float(out[0]))
        cpu.append(float(out[1]))
        heavy |= {name for name, flag in zip(("torch", "ultralytics"), out[2:], strict=False) if flag == "1"}
    return {"median_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times],
            "median_cpu_s": round(statistics.median(cpu), 3), "heavy_modules_imported": sorted(heavy),
            "load_average": os.getloadavg()[0]}


def _tree_pids(pid: int) -> list[int]:
    pids = [pid]
    for p in pids:
        try:
            pids += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return pids


def footprint(pid: int) -> dict[str, Any]:
    rss = 0
    torch = False
    for p in _tree_pids(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rss += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            torch |= "libtorch" in Path(f"/proc/{p}/maps").read_text()
        except (OSError, StopIteration):
            continue
    return {"rss_mb": round(rss / 1024, 1), "torch_loaded": torch}


TINY_YAML = """nc: 2
backbone:
  - [-1, 1, Conv, [8, 3, 2]]
  - [-1, 1, Conv, [16, 3, 2]]
head:
  - [[-1], 1, Detect, [nc]]
"""


def _coco_zip() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        images = []
        for i in range(2):
            img = io.BytesIO()
            Image.new("RGB", (32, 32), (i * 100, 50, 50)).save(img, "JPEG")
            zf.writestr(f"images/im{i}.jpg", img.getvalue())
            images.append({"id": i, "file_name": f"im{i}.jpg", "width": 32, "height": 32})
        coco = {"images": images, "categories": [{"id": 1, "name": "thing"}],
                "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 10, 10],
                                 "segmentation": [[4, 4, 14, 4, 14, 14]], "iscrowd": 0} for i in range(2)]}
        zf.writestr("annotations/instances_train.json", json.dumps(coco))
    return buf.getvalue()


def every_kind(api: httpx.Client) -> dict[str, int]:
    """One request of every kind that touched Ultralytics in the gateway; their status codes."""
    codes: dict[str, int] = {}
    codes["architecture_validate"] = api.post("/architectures/validate", json={"yaml": TINY_YAML, "imgsz": 64},
                                              timeout=300).status_code
    codes["export_formats"] = api.get("/export-formats", timeout=300).status_code
    codes["model_catalog"] = api.get("/models/available").status_code
    codes["dataset_upload"] = api.post("/datasets", files={"file": ("coco.zip", _coco_zip(), "application/zip")},
                                       data={"name": "bench-coco"}, timeout=300).status_code
    weights = io.BytesIO(b"not a checkpoint")
    codes["weights_upload"] = api.post("/models", files={"file": ("w.pt", weights)}, data={"name": "bench"},
                                       timeout=300).status_code
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_footprint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imports", type=int, default=5, help="fresh interpreters timing `import gateway.app`")
    parser.add_argument("--runners", type=int, default=1, help="runners of the stack (0: none; requests answer 503)")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "gateway_footprint",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": f"python -m bench.gateway_footprint --imports {args.imports} --runners {args.runners}",
        "import_gateway_app": import_times(args.imports),
    }
    with running_stack(runners=args.runners) as stack:
        gateway = next(c for c in stack["info"]["children"] if c["name"] == "gateway")
        time.sleep(2)  # let start-up settle before reading the idle figure
        report["gateway_idle"] = footprint(gateway["pid"])
        with httpx.Client(base_url=stack["url"] + "/api/v1", headers=stack["headers"]) as api:
            report["requests"] = every_kind(api)
        report["gateway_after_requests"] = footprint(gateway["pid"])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
