"""Run in a fresh interpreter by `test_gateway_lean.py`: start the gateway app (its lifespan: NATS, the
database, the projector, the dispatcher), make one request of every kind, and print (JSON) the status of each
and which heavy modules were in `sys.modules` after start-up and after the requests.

    python -m tests.integration.lean_gateway_probe SETTINGS_JSON WEIGHTS_PT DATA_ROOT
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import zipfile
from pathlib import Path

HEAVY = ("torch", "torchvision", "ultralytics", "cv2", "numpy", "matplotlib", "runner")


def heavy_loaded() -> list[str]:
    return sorted({name.split(".")[0] for name in sys.modules if name.split(".")[0] in HEAVY})


def _coco_zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in folder.rglob("*"):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


async def main(settings_json: str, weights: Path, data_root: Path) -> dict[str, object]:
    import msgspec
    from litestar.testing import AsyncTestClient

    from gateway.app import create_app
    from shared.settings import Settings
    from tests.auth_support import authorize

    settings = msgspec.convert(json.loads(settings_json), Settings, dec_hook=lambda kind, value: kind(value))
    report: dict[str, object] = {"after_import": heavy_loaded()}
    codes: dict[str, int] = {}
    async with AsyncTestClient(create_app(settings)) as client:
        report["after_startup"] = heavy_loaded()
        await authorize(client)
        v1 = "/api/v1"
        tiny = Path(data_root / "tiny.yaml").read_text()
        calls = [
            ("ready", "GET", "/ready", {}),
            ("project", "POST", f"{v1}/projects", {"json": {"name": "lean"}}),
            ("architecture_validate", "POST", f"{v1}/architectures/validate", {"json": {"yaml": tiny, "imgsz": 64}}),
            ("architecture_save", "POST", f"{v1}/architectures", {"json": {"name": "tiny", "yaml": tiny, "imgsz": 64}}),
            ("export_formats", "GET", f"{v1}/export-formats", {}),
            ("model_catalog", "GET", f"{v1}/models/available", {}),
            ("dataset_by_path", "POST", f"{v1}/datasets", {"json": {"name": "shapes", "path": str(data_root / "shapes")}}),
            ("dataset_upload_coco", "POST", f"{v1}/datasets",
             {"files": {"file": ("coco.zip", _coco_zip(data_root / "coco"), "application/zip")},
              "data": {"name": "coco"}}),
            ("dataset_images", "GET", f"{v1}/datasets/coco/images", {}),
            ("dataset_stats", "GET", f"{v1}/datasets/shapes/stats", {}),
            ("dataset_augment", "POST", f"{v1}/datasets/shapes/augment", {"json": {"count": 1, "imgsz": 64}}),
            ("project_dataset", "POST", f"{v1}/projects/lean/datasets", {"json": {"dataset": "shapes"}}),
            ("weights_upload", "POST", f"{v1}/models",
             {"files": {"file": ("best.pt", weights.read_bytes())}, "data": {"name": "net"}}),
            ("model", "GET", f"{v1}/models/net", {}),
            ("image_upload", "POST", f"{v1}/uploads", {"files": {"file": ("a.png", _png(), "image/png")}}),
            ("predict", "POST", f"{v1}/models/net/predict",
             {"files": {"file": ("a.png", _png(), "image/png")}, "data": {"imgsz": "64"}}),
            ("train_run", "POST", f"{v1}/projects/lean/runs",
             {"json": {"kind": "yolo.train", "dataset": "shapes", "model": "yolov8n", "imgsz": 64}}),
            ("export_run", "POST", f"{v1}/projects/lean/runs",
             {"json": {"kind": "yolo.export", "model": "library:net", "format": "torchscript"}}),
            ("container_run", "POST", f"{v1}/projects/lean/runs",
             {"json": {"kind": "container", "start_command": "true"}}),
            ("runs", "GET", f"{v1}/projects/lean/runs", {}),
            ("queue", "GET", f"{v1}/queue", {}),
            ("runners", "GET", f"{v1}/runners", {}),
        ]
        for name, method, path, kwargs in calls:
            response = await client.request(method, path, **kwargs)
            codes[name] = response.status_code
        report["after_requests"] = heavy_loaded()
    report["codes"] = codes
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))))
