"""Every verb of the Python client, once (docs/python.md explains them). `mypy --strict` checks this file
(tests/unit/test_client_typing.py); tests/e2e/test_client.py runs it against a real stack.

    python examples/client_tour.py DATASET_FOLDER IMAGE [OUT_FOLDER]

The gateway and token come from TRAINFORGE_API_URL / TRAINFORGE_API_TOKEN (or `trainforge login`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from trainforge import Client
from trainforge.client import (
    ImagePrediction,
    Invalid,
    NotFound,
    RunCheckpoint,
    RunDetail,
    RunLog,
    RunMetrics,
    RunProgress,
    TrainforgeError,
    ValMetrics,
)


def tour(client: Client, dataset: Path, image: Path, out: Path) -> None:
    epochs: list[int] = []

    def on_metrics(event: RunMetrics) -> None:
        if event.epoch is not None:
            epochs.append(event.epoch)
            print(f"epoch {event.epoch}: mAP50 {event.metrics.get('metrics/mAP50(B)', 0.0):.3f}")

    def on_progress(event: RunProgress) -> None:
        pass

    def on_checkpoint(event: RunCheckpoint) -> None:
        print(f"checkpoint {event.checkpoint_id} at epoch {event.epoch}")

    def on_log(event: RunLog) -> None:
        pass

    def on_end(run: RunDetail) -> None:
        print(f"run {run.id} {run.status}")

    def on_upload(sent: int, total: int) -> None:
        pass

    # train: a local folder, uploaded and registered first; the weights go to the library as "tour"
    run = client.train("yolov8n", dataset, epochs=2, imgsz=64, batch=8, device="cpu", project="tour", name="tour",
                       dataset_name="tour-shapes", extra={"plots": False}, on_upload=on_upload,
                       callbacks={"on_metrics": on_metrics, "on_progress": on_progress,
                                  "on_checkpoint": on_checkpoint, "on_log": on_log, "on_end": on_end})
    assert run.status == "completed" and epochs == [1, 2], (run.status, epochs)

    # stop and resume: a run started without waiting, stopped at its first checkpoint, then continued
    queued = client.train("yolov8n", "tour-shapes", epochs=3, imgsz=64, batch=8, project="tour", name="tour",
                          extra={"plots": False}, wait=False)
    for event in client.events(queued):
        if isinstance(event, RunCheckpoint):
            break
    if client.stop(queued):
        checkpoint = client.checkpoints(queued)[0]
        resumed = client.resume(queued, checkpoint)
        print(f"resumed as {resumed.id}: {resumed.status}")
    client.wait(queued)

    metrics: ValMetrics = client.validate("library:tour", "tour-shapes", imgsz=64, batch=8)
    print(f"mAP50 {metrics.mAP50} mAP50-95 {metrics.mAP50_95} F1 {metrics.f1}")

    predictions: list[ImagePrediction] = client.infer("tour", [image, image.read_bytes()], conf=0.01, imgsz=64)
    for prediction in predictions:
        print(prediction.width, prediction.height, [(b.name, b.score, b.xyxy) for b in prediction.boxes])

    onnx: Path = client.export("library:tour", "onnx", imgsz=64, dynamic=False, path=out)
    print(f"exported {onnx} ({onnx.stat().st_size} bytes)")

    for model in client.list_models():
        print(model.name, model.task, model.latest.version if model.latest else None)
    weights = client.download_model("tour", path=out)
    copy = client.upload_model(weights, "tour-copy")
    print(client.get_model("tour-copy").versions[0].ref == copy.ref)
    client.delete_model("tour-copy")
    try:
        client.get_model("tour-copy")
    except NotFound as exc:
        print(f"gone: {exc}")

    for dataset_row in client.datasets(task="detect"):
        print(dataset_row.name, dataset_row.splits)
    for project in client.projects():
        print(project.name, project.runs_started)
    for listed in client.runs("tour", status=["completed", "canceled"]):
        print(listed.id, listed.kind, listed.status)

    container = client.container_run("tour", "echo '{\"loss\": 0.5, \"step\": 1}'", backend="local",
                                     callbacks={"on_metrics": lambda e: print("container", e.metrics)})
    print(f"container run {container.status}")

    try:
        client.train("yolov8n", "tour-shapes", epochs=0, project="tour")
    except Invalid as exc:
        print(f"refused: {exc.fields}")


def main(argv: list[str]) -> int:
    out = Path(argv[3]) if len(argv) > 3 else Path.cwd()
    try:
        with Client() as client:
            tour(client, Path(argv[1]), Path(argv[2]), out)
    except TrainforgeError as exc:
        print(f"client_tour: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
