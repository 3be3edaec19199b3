"""Inspection of a prepared dataset: statistics per split and class, and every problem with its reason.

The checks follow what Ultralytics does when it loads a dataset: an image that cannot be read, or a label
file with one bad line, makes it skip that image.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from gateway.datasets.layout import Entry
from gateway.datasets.report import (
    MAX_PROBLEMS,
    ClassStats,
    InspectionReport,
    Problem,
    ProblemKind,
    SplitStats,
)
from gateway.datasets.scan import IMG_FORMATS
from gateway.datasets.tasks import Task

_EPS = 1e-6
_Row = tuple[int, list[str]]  # (1-based line, fields)


def check_image(path: Path) -> tuple[ProblemKind, str] | None:
    """Why Ultralytics could not use the image at `path`, or None."""
    try:
        with Image.open(path) as im:
            im.verify()
            fmt = (im.format or "").lower()
            width, height = im.size
    except Exception as exc:  # PIL raises many types for damaged files  # noqa: BLE001
        return ProblemKind.UNREADABLE_IMAGE, f"cannot read image: {exc}"
    if fmt not in IMG_FORMATS and not (fmt == "jpeg" and "jpg" in IMG_FORMATS):
        return ProblemKind.UNREADABLE_IMAGE, f"unsupported image format {fmt!r}"
    if width < 10 or height < 10:
        return ProblemKind.IMAGE_TOO_SMALL, f"image is {width}x{height}; at least 10x10 pixels are needed"
    return None


def _read_label(path: Path) -> list[_Row] | str | None:
    """The label file's non-empty lines split into fields; None if absent; a reason if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read label file: {exc}"
    return [(i, line.split()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def infer_task(rows: list[list[str]]) -> Task:
    """Detect, segment or OBB from the field counts of YOLO label lines (pose needs `kpt_shape`)."""
    lengths = Counter(len(r) for r in rows)
    if not lengths or set(lengths) == {5}:
        return Task.DETECT
    if set(lengths) == {9}:
        return Task.OBB
    if max(lengths) > 5:
        return Task.SEGMENT
    return Task.DETECT


def _check_line(fields: list[str], task: Task, nc: int, kpt_shape: list[int] | None) -> tuple[ProblemKind, str] | None:
    try:
        values = [float(f) for f in fields]
    except ValueError:
        return ProblemKind.NOT_A_NUMBER, "a field is not a number"
    cls = values[0]
    if cls != int(cls) or not 0 <= cls < nc:
        return ProblemKind.BAD_CLASS_ID, f"class id {fields[0]} is not one of 0..{nc - 1}"
    n = len(values)
    if task is Task.POSE and kpt_shape:
        expected = 5 + kpt_shape[0] * kpt_shape[1]
        if n != expected:
            return ProblemKind.WRONG_FIELD_COUNT, f"{n} fields; pose labels with kpt_shape {kpt_shape} need {expected}"
        ndim = kpt_shape[1]
        coords = values[1:5] + [v for i, v in enumerate(values[5:]) if i % ndim < 2]
    elif task is Task.OBB:
        if n != 9:
            return ProblemKind.WRONG_FIELD_COUNT, f"{n} fields; OBB labels need 9 (class x1 y1 ... x4 y4)"
        coords = values[1:]
    elif task is Task.SEGMENT:
        if n < 7 or n % 2 == 0:
            return ProblemKind.WRONG_FIELD_COUNT, f"{n} fields; segment labels need a class and 3 or more x y points"
        coords = values[1:]
    else:
        if n != 5:
            return ProblemKind.WRONG_FIELD_COUNT, f"{n} fields; detection labels need 5 (class cx cy w h)"
        coords = values[1:]
    bad = [v for v in coords if not -_EPS <= v <= 1 + _EPS]
    if bad:
        return ProblemKind.COORDINATES_OUT_OF_RANGE, f"coordinate {bad[0]:g} is outside 0..1 (normalised)"
    return None


class _Collector:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.total = 0
        self.counts: Counter[str] = Counter()

    def add(self, problem: Problem) -> None:
        self.total += 1
        self.counts[problem.kind.value] += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


def inspect(
    out: Path,
    entries: dict[str, list[Entry]],
    *,
    fmt: str,
    task: Task | None,
    classes: list[str],
    kpt_shape: list[int] | None = None,
    problems: list[Problem] = (),  # type: ignore[assignment]
) -> InspectionReport:
    """Inspect the `entries` prepared in `out`. `task` None: read it from the labels; `classes` empty: number them."""
    collector = _Collector()
    for p in problems:
        collector.add(p)
    all_entries = [(split, e) for split, items in entries.items() for e in items]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        image_problems = list(pool.map(lambda se: check_image(se[1].path), all_entries, chunksize=64))
    if task is Task.CLASSIFY:
        return _classify_report(out, entries, all_entries, image_problems, fmt, classes, collector)

    labels = [_read_label(e.label) for _s, e in all_entries]
    if task is None:
        task = infer_task([f for rows in labels if isinstance(rows, list) for _i, f in rows])
    if not classes:
        ids = [int(f[0]) for rows in labels if isinstance(rows, list) for _i, f in rows if f[0].isdigit()]
        classes = [f"class_{i}" for i in range(max(ids) + 1)] if ids else []
    nc = len(classes)
    stats = {s: _SplitCounter(nc) for s in entries}
    for (split, entry), image_problem, rows in zip(all_entries, image_problems, labels, strict=True):
        counter = stats[split]
        counter.images += 1
        broken = False
        if image_problem:
            broken = True
            collector.add(Problem(kind=image_problem[0], message=image_problem[1], path=entry.key, split=split))
        if isinstance(rows, str):
            broken = True
            collector.add(Problem(kind=ProblemKind.UNREADABLE_LABEL, message=rows, path=entry.key, split=split))
            rows = []
        if not rows:
            counter.without_labels += 1
        seen: set[tuple[str, ...]] = set()
        good: list[int] = []
        for line, fields in rows or []:
            reason = _check_line(fields, task, nc, kpt_shape)
            if reason is None and tuple(fields) in seen:
                collector.add(Problem(kind=ProblemKind.DUPLICATE_LABEL, message="duplicate of an earlier line",
                                      path=entry.key, split=split, line=line))
                continue
            if reason:
                broken = True
                collector.add(Problem(kind=reason[0], message=reason[1], path=entry.key, split=split, line=line))
                continue
            seen.add(tuple(fields))
            good.append(int(float(fields[0])))
        if broken:
            counter.broken += 1
            continue
        counter.add(good)
    return _report(fmt, task, classes, stats, collector)


class _SplitCounter:
    def __init__(self, nc: int) -> None:
        self.images = self.instances = self.without_labels = self.broken = 0
        self.class_images = [0] * nc
        self.class_instances = [0] * nc

    def add(self, class_ids: list[int]) -> None:
        self.instances += len(class_ids)
        for c in class_ids:
            self.class_instances[c] += 1
        for c in set(class_ids):
            self.class_images[c] += 1

    def stats(self, classes: list[str]) -> SplitStats:
        return SplitStats(
            images=self.images,
            instances=self.instances,
            images_without_labels=self.without_labels,
            broken_images=self.broken,
            classes=[ClassStats(id=i, name=name, images=self.class_images[i], instances=self.class_instances[i])
                     for i, name in enumerate(classes)],
        )


def _classify_report(out, entries, all_entries, image_problems, fmt, classes, collector) -> InspectionReport:
    index = {c: i for i, c in enumerate(classes)}
    stats = {s: _SplitCounter(len(classes)) for s in entries}
    for (split, entry), image_problem in zip(all_entries, image_problems, strict=True):
        counter = stats[split]
        counter.images += 1
        if image_problem:
            counter.broken += 1
            collector.add(Problem(kind=image_problem[0], message=image_problem[1], path=entry.key, split=split))
            continue
        counter.add([index[entry.path.relative_to(out / "classify" / split).parts[0]]])
    return _report(fmt, Task.CLASSIFY, classes, stats, collector)


def _report(fmt: str, task: Task, classes: list[str], stats: dict[str, _SplitCounter], collector: _Collector):
    splits = {s: c.stats(classes) for s, c in stats.items() if c.images}
    return InspectionReport(
        format=fmt,
        task=task.value,
        classes=classes,
        splits=splits,
        images=sum(s.images for s in splits.values()),
        instances=sum(s.instances for s in splits.values()),
        images_without_labels=sum(s.images_without_labels for s in splits.values()),
        broken_images=sum(s.broken_images for s in splits.values()),
        problems=collector.problems,
        problems_total=collector.total,
        problem_counts=dict(collector.counts),
    )
