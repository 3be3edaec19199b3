"""One entry to a trainable dataset: recognise, convert, split, lay out, inspect.

    prepared = prepare_from_path("/data/coco8", settings, dataset_id)      # server-side folder
    prepared = prepare_from_archive(upload_path, settings, dataset_id)    # uploaded .zip / .tar
    model.train(data=prepared.data, ...)

Blocking: call it from a worker thread. Sources are only read; everything is written below
`<settings.datasets_dir>/<dataset_id>/` (`source/` for an upload, `prepared/` for the layout).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Literal

import msgspec

from gateway.datasets.archive import ArchiveLimits, extract_archive
from gateway.datasets.convert import convert
from gateway.datasets.errors import DatasetError, InvalidDataset
from gateway.datasets.formats import detect_format
from gateway.datasets.inspection import inspect
from gateway.datasets.layout import materialise, write_data_yaml
from gateway.datasets.paths import confine
from gateway.datasets.report import InspectionReport
from gateway.datasets.split import SplitRatios, split_keys
from gateway.datasets.tasks import Task
from shared.settings import Settings

MANIFEST = "dataset.json"
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class PreparedDataset(msgspec.Struct, frozen=True, kw_only=True):
    format: str
    format_reason: str
    task: str
    classes: list[str]
    data: str
    """What Ultralytics' `data=` gets: the data YAML, or the classification root folder."""
    root: str
    """The prepared folder (`list_images` and `load_prepared` take it)."""
    source: str
    """The folder the dataset was read from (a lone top-level folder of an upload is stepped into)."""
    splits: dict[str, int]
    """Images per split."""
    split_by: Literal["source", "ratios"]
    ratios: SplitRatios
    seed: int
    kpt_shape: list[int] | None = None
    report: InspectionReport


def prepare_dataset(
    source_dir: Path, out_dir: Path, ratios: SplitRatios | None = None, seed: int = 0, *,
    drop_difficult: bool = False,
) -> PreparedDataset:
    """Prepare the dataset in `source_dir` into `out_dir` (replaced if it exists). Raises `DatasetError`.
    `drop_difficult`: leave out Pascal VOC objects marked difficult (kept by default)."""
    ratios = (ratios or SplitRatios()).check()
    source, out = source_dir.resolve(), out_dir.resolve()
    if source.is_relative_to(out) or out.is_relative_to(source):
        raise InvalidDataset("the prepared folder must lie outside the source folder")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        return _prepare(source, out, ratios, seed, drop_difficult)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _prepare(source: Path, out: Path, ratios: SplitRatios, seed: int, drop_difficult: bool = False) -> PreparedDataset:
    match = detect_format(source)
    scratch = out / ".scratch"
    conv = convert(match, scratch, drop_difficult=drop_difficult)
    if not conv.samples:
        raise InvalidDataset(f"no usable images found ({match.reason})")
    split_by: Literal["source", "ratios"] = "source"
    if any(s.split is None for s in conv.samples):
        groups = [s.class_name or "" for s in conv.samples] if conv.task is Task.CLASSIFY else None
        assignment = split_keys([s.key for s in conv.samples], ratios, seed, groups)
        for s in conv.samples:
            s.split = assignment[s.key]
        split_by = "ratios"
    entries = materialise(conv, out, scratch)
    report = inspect(out, entries, fmt=match.format.value, task=conv.task, classes=conv.classes,
                     kpt_shape=conv.kpt_shape, problems=conv.problems)
    task = Task(report.task)
    if not report.classes:
        raise InvalidDataset("no classes: the labels are empty and no class names are given")
    splits = {s: len(items) for s, items in entries.items() if items}
    if task is Task.CLASSIFY:
        data = out / "classify"
    else:
        data = write_data_yaml(out, conv, task, report.classes, list(splits))
    prepared = PreparedDataset(
        format=match.format.value,
        format_reason=match.reason,
        task=task.value,
        classes=report.classes,
        data=str(data),
        root=str(out),
        source=str(match.root),
        splits=splits,
        split_by=split_by,
        ratios=ratios,
        seed=seed,
        kpt_shape=conv.kpt_shape if task is Task.POSE else None,
        report=report,
    )
    (out / MANIFEST).write_bytes(msgspec.json.encode(prepared))
    return prepared


def load_prepared(prepared_dir: Path) -> PreparedDataset:
    try:
        return msgspec.json.decode((prepared_dir / MANIFEST).read_bytes(), type=PreparedDataset)
    except (OSError, msgspec.DecodeError) as exc:
        raise DatasetError(f"no prepared dataset in {prepared_dir}") from exc


def dataset_dir(settings: Settings, dataset_id: str) -> Path:
    """The folder of one dataset below `settings.datasets_dir`."""
    if not _ID.fullmatch(dataset_id):
        raise DatasetError(f"invalid dataset id {dataset_id!r}")
    return settings.datasets_dir / dataset_id


def prepare_from_path(
    path: str | Path, settings: Settings, dataset_id: str, ratios: SplitRatios | None = None, seed: int = 0,
    roots: list[Path] | None = None, *, drop_difficult: bool = False,
) -> PreparedDataset:
    """Prepare a server-side folder, which must lie inside one of `roots` (default: `settings.data_roots`)."""
    source = confine(path, settings.data_roots if roots is None else roots)
    return prepare_dataset(source, dataset_dir(settings, dataset_id) / "prepared", ratios, seed,
                           drop_difficult=drop_difficult)


def prepare_from_archive(
    archive: Path, settings: Settings, dataset_id: str, ratios: SplitRatios | None = None, seed: int = 0, *,
    drop_difficult: bool = False,
) -> PreparedDataset:
    """Extract an uploaded archive (within the upload limits) and prepare it."""
    folder = dataset_dir(settings, dataset_id)
    if folder.exists():
        shutil.rmtree(folder)
    try:
        extract_archive(archive, folder / "source", ArchiveLimits.from_settings(settings))
        return prepare_dataset(folder / "source", folder / "prepared", ratios, seed, drop_difficult=drop_difficult)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def remove_dataset(settings: Settings, dataset_id: str) -> None:
    """Delete everything stored for a dataset (an uploaded source too; a server-side source is kept)."""
    shutil.rmtree(dataset_dir(settings, dataset_id), ignore_errors=True)
