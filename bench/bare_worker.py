"""A warmed process that trains or predicts with bare Ultralytics on request (one JSON command per stdin line),
so that the bench compares Trainforge with the same work done directly, in the same session and conditions."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    state_dir = Path(sys.argv[1])
    from runner.yolo.offline import prepare_ultralytics

    prepare_ultralytics(state_dir)
    from ultralytics import YOLO

    models: dict[str, object] = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "train":
            started = time.perf_counter()
            model = YOLO(cmd["model"])
            model.train(**cmd["args"])
            print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)
        elif cmd["op"] == "predict":
            model = models.get(cmd["weights"]) or YOLO(cmd["weights"])
            models[cmd["weights"]] = model
            times = []
            for _ in range(cmd["repeat"]):
                started = time.perf_counter()
                model.predict(cmd["image"], imgsz=cmd["imgsz"], conf=0.25, verbose=False)
                times.append(time.perf_counter() - started)
            print(json.dumps({"seconds": times}), flush=True)


if __name__ == "__main__":
    main()
