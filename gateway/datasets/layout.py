"""The prepared layout Ultralytics trains on, built from samples with links (the source is never written).

    <out>/yolo/images/<split>/<name>   -> link to the source image
    <out>/yolo/labels/<split>/<name>.txt  (the label path Ultralytics derives from the image path)
    <out>/classify/<split>/<class>/<name> -> link to the source image
    <out>/index/<split>.txt             one "<path below out>\\t<source key>" line per image, in order
    <out>/data.yaml                     (detection family)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

import yaml

from gateway.datasets.convert import Converted
from gateway.datasets.errors import InvalidDataset
from gateway.datasets.scan import SPLITS, label_path
from gateway.datasets.tasks import Task


class Entry:
    """One image of the prepared layout."""

    __slots__ = ("key", "path")

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key

    @property
    def label(self) -> Path:
        return label_path(self.path)


def materialise(conv: Converted, out: Path, scratch: Path) -> dict[str, list[Entry]]:
    """Link every (already split) sample into `out`; labels written below `scratch` are moved, others linked."""
    classify = conv.task is Task.CLASSIFY
    base = out / ("classify" if classify else "yolo/images")
    entries: dict[str, list[Entry]] = {s: [] for s in SPLITS}
    taken: set[tuple[str, str]] = set()
    made: set[Path] = set()
    for sample in conv.samples:
        split = sample.split or "train"
        name = _unique(split, sample.name, taken)
        link = base / split / name
        if link.parent not in made:
            link.parent.mkdir(parents=True, exist_ok=True)
            made.add(link.parent)
        os.symlink(os.path.abspath(sample.image), link)
        entry = Entry(link, sample.key)
        if sample.label is not None:
            label = entry.label
            label.parent.mkdir(parents=True, exist_ok=True)
            if sample.label.is_relative_to(scratch):
                os.replace(sample.label, label)
            else:
                os.symlink(os.path.abspath(sample.label), label)
        entries[split].append(entry)
    if classify:
        for split in SPLITS:
            if entries[split] or split != "test":
                for cls in conv.classes:
                    (base / split / cls).mkdir(parents=True, exist_ok=True)
    if not entries["val"]:
        raise InvalidDataset("the dataset has no validation images (it needs at least 2 images)")
    index = out / "index"
    index.mkdir(parents=True, exist_ok=True)
    for split, items in entries.items():
        with (index / f"{split}.txt").open("w", encoding="utf-8") as fh:
            fh.writelines(f"{e.path.relative_to(out).as_posix()}\t{e.key}\n" for e in items)
    shutil.rmtree(scratch, ignore_errors=True)
    return entries


def read_index(out: Path, split: str) -> list[Entry]:
    path = out / "index" / f"{split}.txt"
    if not path.is_file():
        return []
    entries = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            rel, _, key = line.rstrip("\n").partition("\t")
            entries.append(Entry(out / rel, key))
    return entries


def write_data_yaml(out: Path, conv: Converted, task: Task, classes: list[str], splits: list[str]) -> Path:
    """The data YAML the runner trains on; written from scratch, so nothing from the source's YAML
    (a `download:` script, paths elsewhere) ever reaches Ultralytics."""
    data: dict = {"path": str((out / "yolo").resolve())}
    for split in splits:
        data[split] = f"images/{split}"
    data["nc"] = len(classes)
    data["names"] = dict(enumerate(classes))
    if task is Task.POSE and conv.kpt_shape:
        data["kpt_shape"] = conv.kpt_shape
        if conv.flip_idx and len(conv.flip_idx) == conv.kpt_shape[0]:
            data["flip_idx"] = conv.flip_idx
    path = out / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _unique(split: str, name: str, taken: set[tuple[str, str]]) -> str:
    candidate, n = name, 0
    while (split, candidate) in taken:
        n += 1
        p = PurePosixPath(name)
        candidate = str(p.with_name(f"{p.stem}_{n}{p.suffix}"))
    taken.add((split, candidate))
    return candidate
