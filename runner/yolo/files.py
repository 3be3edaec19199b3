"""Publishing an Ultralytics output folder as run artifacts."""

from __future__ import annotations

from pathlib import Path

from runner.yolo.bridge import JobBridge

KINDS = {".pt": "weights", ".csv": "metrics", ".yaml": "config", ".png": "plot", ".jpg": "image", ".json": "data"}


def artifact_kind(path: Path) -> str:
    return KINDS.get(path.suffix.lower(), "file")


def publish_run_folder(folder: Path, bridge: JobBridge, weights_meta: dict | None = None) -> list[str]:
    """Store every file of an Ultralytics run folder (results, plots, args, weights) as an artifact; weights
    carry `weights_meta` (the dataset and version they were trained on)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return bridge.artifacts([(path, path.relative_to(folder).as_posix(), artifact_kind(path)) for path in files],
                            {"weights": weights_meta} if weights_meta else None)
