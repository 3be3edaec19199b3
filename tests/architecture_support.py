"""Model YAMLs for the architecture tests (a tiny valid one, and ones past the validation budget), and the
process's RSS, for the budget tests."""

from __future__ import annotations

from pathlib import Path

TINY_YAML = """\
nc: 2
backbone:
  - [-1, 1, Conv, [8, 3, 2]]
  - [-1, 1, Conv, [16, 3, 2]]
head:
  - [-1, 1, Classify, [nc]]
"""
"""A valid two-class classifier of two small convolutions."""
WIDE_CONVS = """\
nc: 2
backbone:
  - [-1, 1, Conv, [4096, 3, 1]]
  - [-1, 1, Conv, [4096, 3, 1]]
head:
  - [-1, 1, Classify, [nc]]
"""
"""The outside test's attack: two 4,096-channel 3x3 convolutions (151 M parameters)."""
FULL_RESOLUTION = """\
nc: 2
backbone:
  - [-1, 1, Conv, [64, 1, 1]]
  - [-1, 1, Conv, [64, 1, 1]]
  - [-1, 1, Conv, [64, 1, 1]]
head:
  - [-1, 1, Classify, [nc]]
"""
"""Few parameters, but 64 full-resolution channels per layer: past the activation budget at imgsz 2048."""


def rss_mb() -> float:
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmRSS")) / 1024


def untrained_detector(folder: Path) -> Path:
    """A real (untrained) yolov8n detection checkpoint with the dataset factories' classes, saved as
    `<folder>/best.pt` (Ultralytics set up offline in `<folder>/state` first)."""
    from runner.yolo.offline import prepare_ultralytics

    prepare_ultralytics(folder / "state")
    from ultralytics import YOLO

    from tests.dataset_factories import CLASSES

    model = YOLO("yolov8n.yaml")
    model.model.names = dict(enumerate(CLASSES))
    path = folder / "best.pt"
    model.save(path)
    return path
