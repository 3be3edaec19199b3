"""A paged listing of a prepared dataset's images with their labels."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import msgspec
from PIL import Image

from gateway.datasets.errors import DatasetError
from gateway.datasets.layout import Entry, read_index
from gateway.datasets.prepare import load_prepared
from gateway.datasets.report import Problem
from gateway.datasets.scan import SPLITS
from gateway.datasets.tasks import Task


class Label(msgspec.Struct, frozen=True, kw_only=True):
    class_id: int
    class_name: str
    values: list[float] = []
    """Normalised YOLO values after the class: cx cy w h (detect), polygon points (segment), ... ."""


class ImageItem(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    """Position of the image in its split (stable; `GET .../images/{split}/{index}/file` serves it)."""
    split: str
    path: str
    """Relative to the dataset folder."""
    width: int | None
    height: int | None
    labels: list[Label]
    problems: list[Problem] = []


class ImagePage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ImageItem]
    total: int
    offset: int
    limit: int


def list_images(prepared_dir: Path, split: str | None = None, offset: int = 0, limit: int = 50) -> ImagePage:
    """Images `offset`..`offset+limit` of `split` (all splits, train first, when None)."""
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if offset < 0 or limit < 0:
        raise DatasetError("offset and limit must not be negative")
    prepared = load_prepared(prepared_dir)
    # (split, position in the split, entry): `index` is the position in its split, the one `image_file` takes,
    # also in a listing of all splits
    rows = [(s, j, e) for s in ([split] if split else SPLITS)
            for j, e in enumerate(read_index(prepared_dir, s))]
    problems: dict[str, list[Problem]] = defaultdict(list)
    for p in prepared.report.problems:
        problems[p.path].append(p)
    task = Task(prepared.task)
    items = []
    for s, i, entry in rows[offset:offset + limit]:
        width, height = _size(entry.path)
        if task is Task.CLASSIFY:
            name = entry.path.relative_to(prepared_dir / "classify" / s).parts[0]
            labels = [Label(class_id=prepared.classes.index(name), class_name=name)]
        else:
            labels = _labels(entry, prepared.classes)
        items.append(ImageItem(index=i, split=s, path=entry.key, width=width, height=height, labels=labels,
                               problems=problems.get(entry.key, [])))
    return ImagePage(items=items, total=len(rows), offset=offset, limit=limit)


def image_file(prepared_dir: Path, split: str, index: int) -> Path:
    """The image file at `index` of `split`'s listing (to serve its bytes)."""
    entries = read_index(prepared_dir, split) if split in SPLITS else []
    if not 0 <= index < len(entries):
        raise DatasetError(f"no image {index} in split {split!r}")
    return entries[index].path.resolve()


def _size(path: Path) -> tuple[int | None, int | None]:
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001
        return None, None


def _labels(entry: Entry, classes: list[str]) -> list[Label]:
    try:
        lines = entry.label.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    labels = []
    for line in lines:
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            continue
        if values and values[0] == int(values[0]) and 0 <= values[0] < len(classes):
            cid = int(values[0])
            labels.append(Label(class_id=cid, class_name=classes[cid], values=values[1:]))
    return labels
