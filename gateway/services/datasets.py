"""Datasets: register (a server-side folder or an uploaded archive), inspect, list, page images, delete.

Preparation (`gateway.datasets`, blocking) runs in a worker thread. A dataset row is inserted first with
status `preparing` (which reserves its name), and marked `ready` with its inspection once prepared; if
preparation fails the row and every file written for it are removed again, so a refused dataset leaves
nothing behind.

`resolve_dataset(session, ref)` turns a dataset reference (id or name) into its row. Registration makes version 1
(`dataset_versions`: the prepared folder); a run trains on a version (`gateway.services.curation`).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import msgspec
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.access import data_roots_of, owned_by, owned_or_linked, pick
from gateway.auth.caller import Caller
from gateway.datasets import (
    ArchiveError,
    DatasetError,
    ImagePage,
    InspectionReport,
    PathNotAllowed,
    PreparedDataset,
    SplitRatios,
    list_images,
    load_prepared,
    prepare_from_archive,
    prepare_from_path,
)
from gateway.datasets.layout import read_index
from gateway.datasets.prepare import remove_dataset
from gateway.datasets.scan import SPLITS
from gateway.db.models import Dataset, DatasetVersion, ProjectDataset, Run
from gateway.errors import BadRequest, Conflict, GatewayError, NotFound, Unprocessable
from gateway.files import servable_file
from gateway.services import audit
from shared import names
from shared.contracts.common import ACTIVE_STATUSES, new_id
from shared.settings import Settings

log = logging.getLogger(__name__)

NAME_PATTERN = names.NAME
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN,
                                   description="Letters, digits, `.`, `_`, `-`; up to 128")]
Seed = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class RegisterByPath(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Register a folder on the server (inside a configured data root)."""

    name: Name
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    ratios: SplitRatios | None = None
    """Split ratios for a dataset without splits (default train 0.8, val 0.2)."""
    seed: Seed = 0
    drop_difficult: bool = False
    """Pascal VOC: leave out objects marked `<difficult>1</difficult>` (by default they are labels)."""


class UploadOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The text fields of an upload form: `name`, optional `ratios` (JSON), `seed` and `drop_difficult`."""

    name: Name
    ratios: SplitRatios | None = None
    seed: Seed = 0
    drop_difficult: bool = False
    """Pascal VOC: leave out objects marked `<difficult>1</difficult>` (by default they are labels)."""


class DatasetSummary(msgspec.Struct, kw_only=True):
    id: str
    name: str
    owner_id: str | None
    """The user who registered it."""
    status: str
    """preparing | ready."""
    source: str
    """path | upload."""
    source_path: str | None
    format: str | None
    task: str | None
    classes: list[str]
    splits: dict[str, int]
    """Images per split."""
    images: int
    instances: int
    images_without_labels: int
    broken_images: int
    problems_total: int
    last_version: int = 0
    """The highest version number given (`GET .../versions` lists those kept)."""
    created_at: datetime
    updated_at: datetime


class DatasetDetail(DatasetSummary, kw_only=True):
    format_reason: str | None = None
    split_by: Literal["source", "ratios"] | None = None
    ratios: SplitRatios | None = None
    seed: int | None = None
    kpt_shape: list[int] | None = None
    report: InspectionReport | None = None
    """The full inspection: per split and class, problems with their reasons."""


class DatasetPage(msgspec.Struct, kw_only=True):
    items: list[DatasetSummary]
    total: int
    limit: int
    offset: int


def dataset_error(exc: DatasetError) -> GatewayError:
    """The HTTP error for a dataset library error: a path or archive problem is 400, the content 422."""
    if isinstance(exc, PathNotAllowed | ArchiveError):
        return BadRequest(str(exc))
    return Unprocessable(str(exc))


def check_ratios(ratios: SplitRatios | None) -> SplitRatios | None:
    try:
        return ratios.check() if ratios is not None else None
    except DatasetError as exc:
        raise dataset_error(exc) from None


def archive_suffix(filename: str) -> str:
    """The archive extension of an uploaded file name, or BadRequest."""
    lowered = filename.lower()
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return suffix
    raise BadRequest(f"the upload {filename!r} is not an archive ({', '.join(ARCHIVE_SUFFIXES)})")


def uploads_dir(settings: Settings) -> Path:
    """Where uploaded archives wait while they are prepared (not a dataset id: ids have no dots)."""
    return settings.datasets_dir / ".uploads"


# -- registering ------------------------------------------------------------------------------------------


async def register_from_path(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, request: RegisterByPath, caller: Caller,
) -> Dataset:
    """Prepare a server folder inside the caller's data roots (`access.data_roots_of`)."""
    ratios = check_ratios(request.ratios)
    roots = data_roots_of(caller, settings)
    return await _register(
        sessions, settings, request.name, caller, "path", request.path,
        lambda dataset_id: prepare_from_path(request.path, settings, dataset_id, ratios, request.seed, roots,
                                             drop_difficult=request.drop_difficult),
    )


async def register_from_archive(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, options: UploadOptions, archive: Path,
    caller: Caller,
) -> Dataset:
    """Prepare an uploaded archive (the caller deletes `archive` afterwards)."""
    ratios = check_ratios(options.ratios)
    return await _register(
        sessions, settings, options.name, caller, "upload", None,
        lambda dataset_id: prepare_from_archive(archive, settings, dataset_id, ratios, options.seed,
                                                drop_difficult=options.drop_difficult),
    )


async def _register(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, name: str, caller: Caller,
    source: str, source_path: str | None, prepare: Any,
) -> Dataset:
    dataset_id = new_id()
    async with sessions() as session:
        session.add(Dataset(id=dataset_id, name=name, owner_id=caller.user_id, source=source,
                            source_path=source_path, status="preparing"))
        try:
            await session.flush()
        except IntegrityError:
            raise Conflict(f"you already have a dataset named {name!r}") from None
        await session.commit()
    try:
        prepared: PreparedDataset = await anyio.to_thread.run_sync(prepare, dataset_id)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await _forget(sessions, settings, dataset_id)
        if isinstance(exc, DatasetError):
            raise dataset_error(exc) from None
        raise
    async with sessions() as session:
        done = await session.execute(update(Dataset).where(Dataset.id == dataset_id).values(
            status="ready", format=prepared.format, task=prepared.task, classes=prepared.classes,
            root_path=prepared.root, data_yaml=prepared.data, stats=msgspec.to_builtins(prepared.report),
            source_path=prepared.source if source == "path" else None, updated_at=func.now(), last_version=1,
        ).returning(Dataset))
        row = done.scalar_one_or_none()
        if row is not None:  # version 1: the prepared folder as registered
            session.add(DatasetVersion(id=new_id(), dataset_id=dataset_id, number=1, root_path=prepared.root,
                                       data_yaml=prepared.data, classes=list(prepared.classes), materialised=False,
                                       created_by=caller.user_id))
            audit.record(session, caller, "dataset.create", "dataset", dataset_id, name=name, source=source)
        await session.commit()
    if row is None:  # deleted while it was being prepared
        await anyio.to_thread.run_sync(remove_dataset, settings, dataset_id)
        raise Conflict(f"dataset {name!r} was deleted while it was being prepared")
    return row


async def sweep_abandoned_preparations(sessions: async_sessionmaker[AsyncSession], settings: Settings,
                                       registered_before: datetime) -> int:
    """Datasets still `preparing` that were registered before `registered_before` (their gateway stopped
    mid-way), with their files: deleted; how many."""
    async with sessions() as session, session.begin():
        ids = list((await session.execute(delete(Dataset).where(
            Dataset.status == "preparing", Dataset.created_at < registered_before).returning(Dataset.id))).scalars())
    for dataset_id in ids:
        log.warning("dataset %s was left half-prepared; removed it", dataset_id)
        await anyio.to_thread.run_sync(remove_dataset, settings, dataset_id)
    return len(ids)


async def _forget(sessions: async_sessionmaker[AsyncSession], settings: Settings, dataset_id: str) -> None:
    async with sessions() as session:
        await session.execute(delete(Dataset).where(Dataset.id == dataset_id))
        await session.commit()
    await anyio.to_thread.run_sync(remove_dataset, settings, dataset_id)


# -- reading ----------------------------------------------------------------------------------------------


async def resolve_dataset(
    session: AsyncSession, ref: str, caller: Caller, *, ready: bool = True, read: bool = False
) -> Dataset:
    """The dataset with id or name `ref`. With `ready` (the default), one still preparing is a Conflict.
    With `read`, also a dataset linked to a project the caller is a member of (to read, never to change).

    For a run: `data=dataset.data_yaml` (the data YAML, or the classification folder) and
    `dataset_id=dataset.id`.
    """
    rows = (await session.execute(select(Dataset).where(
        or_(Dataset.id == ref, Dataset.name == ref),
        owned_or_linked(caller, Dataset.owner_id, Dataset.id, ProjectDataset.dataset_id, ProjectDataset.project_id)
        if read else owned_by(caller, Dataset.owner_id)))).scalars().all()
    dataset = pick(rows, ref, caller)
    if dataset is None:
        raise NotFound(f"no dataset {ref!r}")
    if ready and (dataset.status != "ready" or not dataset.data_yaml):
        raise Conflict(f"dataset {dataset.name!r} is {dataset.status}, not ready")
    return dataset


async def list_datasets(
    session: AsyncSession, caller: Caller, *, limit: int, offset: int, format: str | None = None,
    task: str | None = None,
) -> DatasetPage:
    where = [owned_by(caller, Dataset.owner_id)]
    if format:
        where.append(Dataset.format == format)
    if task:
        where.append(Dataset.task == task)
    total = (await session.execute(select(func.count()).select_from(Dataset).where(*where))).scalar_one()
    rows = (await session.execute(
        select(Dataset).where(*where).order_by(Dataset.created_at.desc(), Dataset.id)
        .limit(limit).offset(offset))).scalars().all()
    return DatasetPage(items=[summary(r) for r in rows], total=total, limit=limit, offset=offset)


def summary(row: Dataset) -> DatasetSummary:
    stats = row.stats or {}
    splits = stats.get("splits") or {}
    return DatasetSummary(
        id=row.id, name=row.name, owner_id=row.owner_id, status=row.status, source=row.source,
        source_path=row.source_path,
        format=row.format, task=row.task, classes=list(row.classes or []),
        splits={name: int(s.get("images", 0)) for name, s in splits.items()},
        images=int(stats.get("images", 0)), instances=int(stats.get("instances", 0)),
        images_without_labels=int(stats.get("images_without_labels", 0)),
        broken_images=int(stats.get("broken_images", 0)), problems_total=int(stats.get("problems_total", 0)),
        last_version=row.last_version or 0, created_at=row.created_at, updated_at=row.updated_at,
    )


async def detail(row: Dataset) -> DatasetDetail:
    """The summary with the full inspection report and how the dataset was split."""
    base = msgspec.structs.asdict(summary(row))
    if row.status != "ready" or not row.root_path:
        return DatasetDetail(**base)
    try:
        prepared = await anyio.to_thread.run_sync(load_prepared, Path(row.root_path))
    except DatasetError:
        log.warning("dataset %s: its prepared folder %s is unreadable", row.id, row.root_path)
        report = msgspec.convert(row.stats, InspectionReport) if row.stats else None
        return DatasetDetail(**base, report=report)
    return DatasetDetail(**base, format_reason=prepared.format_reason, split_by=prepared.split_by,
                         ratios=prepared.ratios, seed=prepared.seed, kpt_shape=prepared.kpt_shape,
                         report=prepared.report)


def _root(row: Dataset) -> Path:
    if row.status != "ready" or not row.root_path:
        raise Conflict(f"dataset {row.name!r} is {row.status}, not ready")
    return Path(row.root_path)


async def images(row: Dataset, split: str | None, offset: int, limit: int) -> ImagePage:
    root = _root(row)
    try:
        return await anyio.to_thread.run_sync(lambda: list_images(root, split, offset, limit))
    except DatasetError as exc:
        raise BadRequest(str(exc)) from None


async def image_path(row: Dataset, split: str, index: int) -> Path:
    root = _root(row)
    source = Path(row.source_path) if row.source == "path" and row.source_path else root.parent / "source"
    try:
        return await anyio.to_thread.run_sync(_servable_image, root, source, split, index)
    except DatasetError as exc:
        raise NotFound(str(exc)) from None


def _servable_image(prepared: Path, source: Path, split: str, index: int) -> Path:
    """The file to serve for image `index` of `split`. The prepared layout's entry is a link the gateway made
    to the source image: it is followed one hop, and what it names must pass `servable_file` inside the
    dataset's source folder (a link planted in either folder is a missing image)."""
    entries = read_index(prepared, split) if split in SPLITS else []
    if not 0 <= index < len(entries):
        raise DatasetError(f"no image {index} in split {split!r}")
    entry = Path(os.path.normpath(entries[index].path))
    if entry.is_symlink():
        found = servable_file(entry.parent / os.readlink(entry), source)
    else:
        found = servable_file(entry, prepared)
    if found is None or not entry.is_relative_to(prepared):
        raise DatasetError(f"image {index} of split {split!r} is missing")
    return found


# -- deleting ---------------------------------------------------------------------------------------------


async def active_runs_using(session: AsyncSession, dataset_id: str) -> list[str]:
    """Ids of active runs whose spec names the dataset (`spec->>'dataset_id'`)."""
    return list((await session.execute(
        select(Run.id).where(Run.spec["dataset_id"].astext == dataset_id, Run.status.in_(ACTIVE_STATUSES))
        .limit(10))).scalars().all())


async def delete_dataset(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, ref: str, caller: Caller
) -> None:
    """Delete a dataset and its files (a server-side source folder is left alone); Conflict while an active
    run uses it."""
    async with sessions() as session, session.begin():
        row = await resolve_dataset(session, ref, caller, ready=False)
        if runs := await active_runs_using(session, row.id):
            raise Conflict(f"dataset {row.name!r} is used by active runs: {', '.join(runs)}")
        await session.execute(delete(Dataset).where(Dataset.id == row.id))
        audit.record(session, caller, "dataset.delete", "dataset", row.id, name=row.name)
    await anyio.to_thread.run_sync(remove_dataset, settings, row.id)
