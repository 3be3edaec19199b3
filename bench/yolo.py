"""YOLO figures, printed as one JSON report:

- training overhead: wall time of a `yolo.train` run through Trainforge (POST → run.completed seen by the
  client) divided by the same training with bare Ultralytics (model build + `train()`, same data, args and
  machine, in a warmed process), alternated, median of the ratios; target ≤ 1.02;
- predict latency per image: synchronous predict (`POST /api/v1/models/{ref}/predict`, one image, answered
  by a runner from a model it keeps loaded) against `model.predict` in a warmed process; target p50 ≤ 2×.

    python -m bench.yolo                      # 3 pairs of trainings, 3 epochs, 64 images at 128 px
    python -m bench.yolo --pairs 1 --epochs 1 --images 16   # quick
    python -m bench.yolo --pairs 0 --epochs 1 --predictions 30   # predict latency only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

from bench.stack import REPO, running_stack
from bench.stats import summary_ms

PHOTO = Path(__import__("ultralytics").__file__).parent / "assets" / "bus.jpg"


class BareWorker:
    def __init__(self, state_dir: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.bare_worker", str(state_dir)], cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError("bare worker died")
            if line.startswith("{"):
                return json.loads(line)

    def call(self, **cmd: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(cmd) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(30)


def make_dataset(root: Path, images: int, imgsz: int) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.datagen import make_detect_dataset

    make_detect_dataset(root, n_train=images, n_val=max(8, images // 4), imgsz=imgsz)
    return root


def run_through_trainforge(api: httpx.Client, project: str, body: dict[str, Any]) -> tuple[float, dict]:
    started = time.perf_counter()
    response = api.post(f"/projects/{project}/runs", json=body)
    response.raise_for_status()
    run = response.json()
    with connect_sse(api, "GET", f"/runs/{run['id']}/events", timeout=httpx.Timeout(30, read=None)) as source:
        for event in source.iter_sse():
            if event.event in ("run.completed", "run.failed", "run.canceled"):
                break
    elapsed = time.perf_counter() - started
    final = api.get(f"/runs/{run['id']}").json()
    if final["status"] != "completed":
        raise RuntimeError(f"run {run['id']} ended {final['status']}: {final.get('error')}")
    return elapsed, final


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.yolo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="Trainforge/bare training pairs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=64, help="training images (validation: a quarter)")
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--predictions", type=int, default=20, help="images for the predict latency")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "yolo",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "device": "cpu"},
        "command": "python -m bench.yolo " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
    }
    with tempfile.TemporaryDirectory(prefix="tf-bench-yolo-") as tmp, running_stack(runners=1) as stack:
        data = make_dataset(Path(tmp) / "shapes", args.images, args.imgsz)
        archive = Path(tmp) / "shapes.zip"
        subprocess.run(["python3", "-m", "zipfile", "-c", str(archive), "."], cwd=data, check=True)
        with httpx.Client(base_url=stack["url"] + "/api/v1", timeout=httpx.Timeout(300), headers=stack["headers"]) as api:
            api.post("/projects", json={"name": "bench"}).raise_for_status()
            with archive.open("rb") as f:
                dataset = api.post("/datasets", data={"name": "shapes"}, files={"file": ("shapes.zip", f)})
            dataset.raise_for_status()
            dataset_id = dataset.json()["id"]
            data_yaml = Path(stack["state_dir"]) / "datasets" / dataset_id / "prepared" / "data.yaml"
            body = {"kind": "yolo.train", "dataset": dataset_id, "model": "yolov8n", "epochs": args.epochs,
                    "imgsz": args.imgsz, "batch": args.batch, "device": "cpu", "register_as": "bench-shapes"}
            bare_args = {"data": str(data_yaml), "epochs": args.epochs, "batch": args.batch, "imgsz": args.imgsz,
                         "lr0": 0.01, "optimizer": "auto", "device": "cpu", "patience": 100, "save_period": -1,
                         "seed": 0, "exist_ok": True, "save": True}
            worker = BareWorker(Path(tmp) / "bare-state")
            try:
                # Warm both sides: the runner imports torch/Ultralytics on its first YOLO job.
                run_through_trainforge(api, "bench", {**body, "epochs": 1})
                worker.call(op="train", model="yolov8n.yaml",
                            args={**bare_args, "epochs": 1, "save_dir": str(Path(tmp) / "bare-warm")})
                ratios, tf_times, bare_times = [], [], []
                for i in range(args.pairs):
                    tf_s, final = run_through_trainforge(api, "bench", body)
                    bare_s = worker.call(op="train", model="yolov8n.yaml",
                                         args={**bare_args, "save_dir": str(Path(tmp) / f"bare-{i}")})["seconds"]
                    tf_times.append(tf_s)
                    bare_times.append(bare_s)
                    ratios.append(tf_s / bare_s)
                if ratios:  # --pairs 0: predict only (the warm-up training registers the model)
                    report["training"] = {
                        "epochs": args.epochs, "train_images": args.images, "imgsz": args.imgsz,
                        "batch": args.batch, "trainforge_s": [round(t, 2) for t in tf_times],
                        "bare_s": [round(t, 2) for t in bare_times],
                        "ratio_median": round(statistics.median(ratios), 3),
                        "ratios": [round(r, 3) for r in ratios], "target": "<= 1.02",
                    }
                # Predict: the trained model through the synchronous job path, and directly.
                model_ref = "bench-shapes"
                job_times: list[float] = []
                served_s: list[float] = []  # the gateway's own `elapsed_s` (model lookup to answer)
                with PHOTO.open("rb") as f:  # the first request loads the model into the runner: not timed
                    api.post(f"/models/{model_ref}/predict", files={"file": ("bus.jpg", f)},
                             data={"imgsz": str(args.imgsz), "save": "false"}).raise_for_status()
                for _ in range(args.predictions):
                    with PHOTO.open("rb") as f:
                        started = time.perf_counter()
                        response = api.post(f"/models/{model_ref}/predict", files={"file": ("bus.jpg", f)},
                                            data={"imgsz": str(args.imgsz), "save": "false"})
                        job_times.append(time.perf_counter() - started)
                    response.raise_for_status()
                    served_s.append(response.json()["elapsed_s"])
                latest = api.get(f"/models/{model_ref}").json()["latest"]
                weights = Path(tmp) / "best.pt"
                weights.write_bytes(api.get(f"/models/{model_ref}/versions/{latest['version']}/download").content)
                direct = worker.call(op="predict", weights=str(weights), image=str(PHOTO), imgsz=args.imgsz,
                                     repeat=args.predictions)["seconds"]
                saved_times = []  # with the annotated image drawn, stored and downloadable once answered
                for _ in range(args.predictions):
                    with PHOTO.open("rb") as f:
                        started = time.perf_counter()
                        api.post(f"/models/{model_ref}/predict", files={"file": ("bus.jpg", f)},
                                 data={"imgsz": str(args.imgsz), "save": "true"}).raise_for_status()
                        saved_times.append(time.perf_counter() - started)
                served, bare = summary_ms(job_times), summary_ms(direct)
                report["predict_per_image"] = {
                    "sync_predict": served, "gateway_elapsed_of_sync_predict": summary_ms(served_s),
                    "sync_predict_with_annotated_image": summary_ms(saved_times),
                    "direct": bare, "image": "ultralytics/assets/bus.jpg",
                    "imgsz": args.imgsz, "ratio_p50": round(served["p50_ms"] / bare["p50_ms"], 3),
                    "target": "ratio_p50 <= 2 (POST /models/{ref}/predict answered by a runner's loaded model)"}
            finally:
                worker.close()
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
