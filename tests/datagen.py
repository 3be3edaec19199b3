"""Tiny synthetic datasets for YOLO tests: coloured rectangles on noise, with exact labels.

Deterministic (seeded), a few KB per image, generated in well under a second.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ((230, 40, 40), (40, 200, 60), (50, 80, 230), (240, 200, 30), (200, 60, 220))


def _background(rng: random.Random, imgsz: int) -> Image.Image:
    grey = rng.randint(90, 160)
    return Image.new("RGB", (imgsz, imgsz), (grey, grey, grey))


def _rectangle(rng: random.Random, imgsz: int) -> tuple[int, int, int, int]:
    w = rng.randint(imgsz // 6, imgsz // 2)
    h = rng.randint(imgsz // 6, imgsz // 2)
    x0 = rng.randint(0, imgsz - w - 1)
    y0 = rng.randint(0, imgsz - h - 1)
    return x0, y0, x0 + w, y0 + h


def make_detect_dataset(
    root: Path,
    n_train: int = 16,
    n_val: int = 8,
    imgsz: int = 128,
    classes: Sequence[str] = ("a", "b"),
    seed: int = 0,
) -> Path:
    """A YOLO detection dataset (images/{train,val}, labels/{train,val}); returns its data.yaml."""
    rng = random.Random(seed)
    root = Path(root)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = _background(rng, imgsz)
            draw = ImageDraw.Draw(image)
            lines = []
            for _ in range(rng.randint(1, 3)):
                cls = rng.randrange(len(classes))
                x0, y0, x1, y1 = _rectangle(rng, imgsz)
                draw.rectangle((x0, y0, x1, y1), fill=COLOURS[cls % len(COLOURS)])
                cx, cy = (x0 + x1) / 2 / imgsz, (y0 + y1) / 2 / imgsz
                lines.append(f"{cls} {cx:.6f} {cy:.6f} {(x1 - x0) / imgsz:.6f} {(y1 - y0) / imgsz:.6f}")
            image.save(root / "images" / split / f"{i:04d}.jpg", quality=90)
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(classes))
    data_yaml = root / "data.yaml"
    data_yaml.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data_yaml


def make_classify_dataset(
    root: Path,
    n_train: int = 8,
    n_val: int = 4,
    imgsz: int = 64,
    classes: Sequence[str] = ("a", "b"),
    seed: int = 0,
) -> Path:
    """An image-classification folder (train/<class>/*.jpg, val/<class>/*.jpg, n_* per class); returns it."""
    rng = random.Random(seed)
    root = Path(root)
    for split, count in (("train", n_train), ("val", n_val)):
        for cls, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = _background(rng, imgsz)
                ImageDraw.Draw(image).rectangle(_rectangle(rng, imgsz), fill=COLOURS[cls % len(COLOURS)])
                image.save(folder / f"{i:04d}.jpg", quality=90)
    return root
