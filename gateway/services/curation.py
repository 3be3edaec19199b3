"""Curating a dataset: its working copy (samples, annotations, classes) and its frozen versions.

The working copy lives in `dataset_samples` (annotations in pixels) with its images in the dataset's blob store
(`gateway.datasets.curation`); it is made from version 1 (the registered, prepared folder) on first use.
Trainings never read it: `POST .../versions` freezes it into a folder of its own, and a run names a version
(`dataset: "name"` is the latest, `"name:3"` version 3).

Every write to one dataset's working copy holds that dataset's row lock (`SELECT ... FOR UPDATE`), so writes,
class edits and freezing are serialised per dataset.

Class edits and what they do to existing labels:
- add: a new class at the end of the list; no label changes.
- rename: the class keeps its place (index); every annotation of it carries the new name.
- merge `a` into `b`: every annotation of `a` becomes `b`; `a` leaves the list (later classes move up one).
- delete: every annotation of the class is removed (a classify image of it is left without a class, and stays
  out of versions until it gets one); later classes move up one.
"""

from __future__ import annotations

import functools
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import msgspec
from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.caller import Caller
from gateway.datasets import DatasetError, load_prepared
from gateway.datasets import curation as lib
from gateway.datasets.curation import AnnotationError, Manifest, SampleRecord
from gateway.datasets.prepare import dataset_dir
from gateway.datasets.scan import SPLITS
from gateway.db.models import Dataset, DatasetSample, DatasetVersion, ModelVersion, Run
from gateway.errors import Conflict, Forbidden, NotFound, Unprocessable
from gateway.services import audit
from gateway.services.datasets import resolve_dataset
from gateway.uploads import UploadedFile
from shared.contracts.common import ACTIVE_STATUSES, new_id
from shared.settings import Settings

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
ClassName = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f/\\]+$",
                                        description="A class name (no slash, no control characters)")]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]
UPLOAD_FILES_MAX = 100
"""Most images one upload request may carry."""


# -- request and response bodies ---------------------------------------------------------------------------


class SampleView(msgspec.Struct, kw_only=True):
    id: str
    split: str
    name: str
    sha256: str
    width: int | None
    height: int | None
    annotations: list[dict[str, Any]]
    """In pixels: `{"class", "box": [x_min, y_min, x_max, y_max]}`, `"polygon": [[x, y], ...]`,
    `"keypoints": [[x, y, v], ...]`; for classify `{"class"}` only."""
    tags: list[str]
    problems: list[dict[str, Any]]
    """What the registration's inspection found for the image (cleared by new annotations)."""
    created_at: datetime
    updated_at: datetime


class SamplePage(msgspec.Struct, kw_only=True):
    items: list[SampleView]
    total: int
    limit: int
    offset: int


class SamplesCreated(msgspec.Struct, kw_only=True):
    items: list[SampleView]


class SamplePatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    split: Split | None = None
    """Move the image to another split."""
    tags: Annotated[list[Tag], msgspec.Meta(max_length=64)] | None = None
    """Replace the image's tags."""
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[^/\\\x00-\x1f]+$")] | None = None


class AnnotationsBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    annotations: Annotated[list[Any], msgspec.Meta(max_length=10_000)]
    """The image's full set of annotations (replaces what it had); `[]` leaves it without labels."""


class NewClass(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: ClassName


class ClassRename(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: ClassName
    """The new name (an existing class's name is a 409: merge instead)."""


class ClassMerge(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    into: ClassName
    """The class that receives the merged class's annotations."""


class ClassesView(msgspec.Struct, kw_only=True):
    classes: list[str]
    """The working copy's classes, in index order."""
    samples_changed: int
    """Samples whose annotations the edit changed."""
    annotations_changed: int
    """Annotations renamed, moved to another class or removed."""


class VersionChanges(msgspec.Struct, kw_only=True):
    since: int | None
    """The version compared with (the previous one still kept), or None for the first."""
    totals: dict[str, int]
    """How many samples were added, removed, relabelled, moved (to another split)."""
    added: list[str] = []
    removed: list[str] = []
    relabelled: list[str] = []
    moved: list[str] = []
    """Sample ids (at most 1000 per kind)."""
    classes_added: list[str] = []
    classes_removed: list[str] = []


class VersionView(msgspec.Struct, kw_only=True):
    number: int
    ref: str
    """`name:number`, usable as a run's `dataset`."""
    classes: list[str]
    images: int
    instances: int
    splits: dict[str, Any]
    """Per split: images, instances, images_without_labels, and per class images and instances."""
    changes: VersionChanges | None
    """What changed since the previous version (None for a version 1 made at registration)."""
    used_by_models: int
    """Model versions trained on it (it cannot be deleted while any is)."""
    created_at: datetime


class VersionPage(msgspec.Struct, kw_only=True):
    items: list[VersionView]
    total: int
    limit: int
    offset: int


# -- resolving --------------------------------------------------------------------------------------------


def split_ref(ref: str) -> tuple[str, int | None]:
    """`name:3` → ("name", 3); `name` → ("name", None)."""
    base, sep, number = ref.rpartition(":")
    if sep and base and number.isdigit():
        return base, int(number)
    return ref, None


async def dataset_version(session: AsyncSession, dataset: Dataset, number: int | None) -> DatasetVersion:
    """Version `number` of a dataset, or its latest; NotFound / Conflict when there is none."""
    query = select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
    if number is not None:
        row = (await session.execute(query.where(DatasetVersion.number == number))).scalar_one_or_none()
        if row is None:
            raise NotFound(f"dataset {dataset.name!r} has no version {number}")
        return row
    row = (await session.execute(query.order_by(DatasetVersion.number.desc()).limit(1))).scalar_one_or_none()
    if row is None:
        raise Conflict(f"dataset {dataset.name!r} has no version: freeze one (POST .../versions)")
    return row


async def resolve_versioned(session: AsyncSession, ref: str, caller: Caller) -> tuple[Dataset, DatasetVersion]:
    """A run's `dataset`: `name`, `id` (the latest version) or `name:3`, `id:3`."""
    base, number = split_ref(ref)
    dataset = await resolve_dataset(session, base, caller)
    return dataset, await dataset_version(session, dataset, number)


def _may_write(dataset: Dataset, caller: Caller) -> None:
    if not (caller.is_admin or dataset.owner_id == caller.user_id):
        raise Forbidden(f"you may read dataset {dataset.name!r} but not change it")


async def _locked(session: AsyncSession, ref: str, caller: Caller) -> Dataset:
    """The caller's dataset, locked for a write of its working copy."""
    found = await resolve_dataset(session, ref, caller)
    _may_write(found, caller)
    row = (await session.execute(select(Dataset).where(Dataset.id == found.id).with_for_update()
                                 .execution_options(populate_existing=True))).scalar_one()
    return row


# -- the working copy -------------------------------------------------------------------------------------


async def _ensure_working_copy(session: AsyncSession, settings: Settings, dataset: Dataset) -> None:
    """Make the working copy from the registered folder, once (the caller holds the row lock)."""
    if dataset.working_copy:
        return
    if not dataset.root_path:
        raise Conflict(f"dataset {dataset.name!r} is not ready")
    folder = dataset_dir(settings, dataset.id)
    try:
        manifest = await anyio.to_thread.run_sync(
            lambda: lib.import_prepared(Path(dataset.root_path or ""), folder, new_id, link=dataset.source == "upload"))
    except DatasetError as exc:
        raise Conflict(f"dataset {dataset.name!r}: its registered folder cannot be read ({exc})") from None
    rows = [dict(id=s.id, dataset_id=dataset.id, split=s.split, name=s.name, sha256=s.sha256, ext=s.ext,
                 width=s.width, height=s.height, annotations=s.annotations, tags=[], problems=s.problems,
                 position=i) for i, s in enumerate(manifest.samples)]
    for start in range(0, len(rows), 1000):
        await session.execute(insert(DatasetSample), rows[start:start + 1000])
    version_1 = (await session.execute(select(DatasetVersion).where(
        DatasetVersion.dataset_id == dataset.id, DatasetVersion.number == 1))).scalar_one_or_none()
    if version_1 is not None and not version_1.materialised:
        # what version 1 holds, sample by sample, for the changes of version 2
        await anyio.to_thread.run_sync(lib.write_manifest, folder, 1, manifest)
    dataset.working_copy = True
    dataset.classes = list(manifest.classes)


class _Write:
    """`async with _Write(...) as (session, dataset)`: a transaction holding the dataset's lock, with its
    working copy made."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings, ref: str,
                 caller: Caller) -> None:
        self.sessions, self.settings, self.ref, self.caller = sessions, settings, ref, caller

    async def __aenter__(self) -> tuple[AsyncSession, Dataset]:
        self.session = self.sessions()
        self.tx = self.session.begin()
        await self.session.__aenter__()
        await self.tx.__aenter__()
        try:
            dataset = await _locked(self.session, self.ref, self.caller)
            await _ensure_working_copy(self.session, self.settings, dataset)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self.session, dataset

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.tx.__aexit__(*exc)
        finally:
            await self.session.__aexit__(*exc)


def sample_view(row: DatasetSample) -> SampleView:
    return SampleView(id=row.id, split=row.split, name=row.name, sha256=row.sha256, width=row.width,
                      height=row.height, annotations=list(row.annotations or []), tags=list(row.tags or []),
                      problems=list(row.problems or []), created_at=row.created_at, updated_at=row.updated_at)


async def list_samples(sessions: async_sessionmaker[AsyncSession], settings: Settings, ref: str, caller: Caller,
                       *, split: str | None, class_name: str | None, no_labels: bool | None,
                       has_problems: bool | None, tag: str | None, limit: int, offset: int) -> SamplePage:
    async with sessions() as session:
        dataset = await resolve_dataset(session, ref, caller, read=True)
    if not dataset.working_copy:
        if dataset.owner_id == caller.user_id or caller.is_admin:
            async with _Write(sessions, settings, ref, caller):
                pass
    if split is not None and split not in SPLITS:
        raise Unprocessable(f"split: unknown split {split!r}",
                            errors=[{"field": "split", "message": f"one of {', '.join(SPLITS)}"}])
    where = [DatasetSample.dataset_id == dataset.id]
    if split:
        where.append(DatasetSample.split == split)
    if class_name:
        where.append(DatasetSample.annotations.contains([{"class": class_name}]))
    if no_labels is not None:
        empty = func.jsonb_array_length(DatasetSample.annotations) == 0
        where.append(empty if no_labels else ~empty)
    if has_problems is not None:
        some = func.jsonb_array_length(DatasetSample.problems) > 0
        where.append(some if has_problems else ~some)
    if tag:
        where.append(DatasetSample.tags.contains([tag]))
    async with sessions() as session:
        total = (await session.execute(select(func.count()).select_from(DatasetSample).where(*where))).scalar_one()
        rows = (await session.execute(select(DatasetSample).where(*where).order_by(
            DatasetSample.position, DatasetSample.id).limit(limit).offset(offset))).scalars().all()
    return SamplePage(items=[sample_view(r) for r in rows], total=total, limit=limit, offset=offset)


async def _sample(session: AsyncSession, dataset: Dataset, sample_id: str, *, lock: bool = False) -> DatasetSample:
    query = select(DatasetSample).where(DatasetSample.id == sample_id, DatasetSample.dataset_id == dataset.id)
    row = (await session.execute(query.with_for_update() if lock else query)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"dataset {dataset.name!r} has no sample {sample_id!r}")
    return row


async def get_sample(sessions: async_sessionmaker[AsyncSession], ref: str, sample_id: str,
                     caller: Caller) -> SampleView:
    async with sessions() as session:
        dataset = await resolve_dataset(session, ref, caller, read=True)
        return sample_view(await _sample(session, dataset, sample_id))


async def sample_file(sessions: async_sessionmaker[AsyncSession], settings: Settings, ref: str, sample_id: str,
                      caller: Caller) -> tuple[Path, str]:
    """(blob path, file name) of a sample's image."""
    async with sessions() as session:
        dataset = await resolve_dataset(session, ref, caller, read=True)
        row = await _sample(session, dataset, sample_id)
    path = lib.blob_path(dataset_dir(settings, dataset.id), row.sha256, row.ext)
    if not await anyio.to_thread.run_sync(path.is_file):
        raise NotFound(f"the image of sample {sample_id!r} is missing")
    return path, row.name


async def patch_sample(sessions: async_sessionmaker[AsyncSession], settings: Settings, ref: str, sample_id: str,
                       patch: SamplePatch, caller: Caller) -> SampleView:
    async with _Write(sessions, settings, ref, caller) as (session, dataset):
        row = await _sample(session, dataset, sample_id)
        if patch.split is not None:
            row.split = patch.split
        if patch.tags is not None:
            row.tags = sorted(set(patch.tags))
        if patch.name is not None:
            row.name = patch.name
        row.updated_at = func.now()
        await session.flush()
        await session.refresh(row)
        return sample_view(row)


async def delete_sample(sessions: async_sessionmaker[AsyncSession], settings: Settings, ref: str, sample_id: str,
                        caller: Caller) -> None:
    """Remove a sample from the working copy (versions that hold it keep their image)."""
    async with _Write(sessions, settings, ref, caller) as (session, dataset):
        await _sample(session, dataset, sample_id)
        await session.execute(delete(DatasetSample).where(DatasetSample.id == sample_id))
        audit.record(session, caller, "dataset.sample_delete", "dataset", dataset.id, sample_id=sample_id)


async def _kpt_shape(dataset: Dataset) -> list[int] | None:
    if dataset.task != "pose" or not dataset.root_path:
        return None
    try:
        return (await anyio.to_thread.run_sync(load_prepared, Path(dataset.root_path))).kpt_shape
    except DatasetError:
        return None


def _checked(raw: list[Any], dataset: Dataset, width: int | None, height: int | None, kpt_shape: list[int] | None,
             prefix: str) -> list[dict[str, Any]]:
    try:
        return lib.check_annotations(raw, task=dataset.task or "detect", classes=list(dataset.classes or []),
                                     width=width, height=height, kpt_shape=kpt_shape, prefix=prefix)
    except AnnotationError as exc:
        raise Unprocessable(str(exc), errors=exc.errors) from None


async def put_annotations(sessions: async_sessionmaker[AsyncSession], settings: Settings, ref: str,
                          sample_id: str, body: AnnotationsBody, caller: Caller) -> SampleView:
    async with _Write(sessions, settings, ref, caller) as (session, dataset):
        row = await _sample(session, dataset, sample_id)
        row.annotations = _checked(body.annotations, dataset, row.width, row.height, await _kpt_shape(dataset),
                                   "annotations")
        row.problems = [p for p in (row.problems or []) if p.get("kind") in ("unreadable_image", "image_too_small")]
        row.updated_at = func.now()
        await session.flush()
        await session.refresh(row)
        return sample_view(row)


async def add_samples(sessions: async_sessionmaker[AsyncSession], settings: Settings, ref: str, caller: Caller,
                      files: list[UploadedFile], split: str, annotations: Any) -> SamplesCreated:
    """New samples from uploaded images (all or none: one bad image or annotation refuses the request).
    `annotations`: None, a list aligned with the files, or an object {file name: [annotation, ...]}."""
    if not files:
        raise Unprocessable("the form has no image", errors=[{"field": "file", "message": "one or more images"}])
    if split not in SPLITS:
        raise Unprocessable(f"split: unknown split {split!r}",
                            errors=[{"field": "split", "message": f"one of {', '.join(SPLITS)}"}])
    per_file: list[tuple[list[Any], str]] = []
    if annotations is None:
        per_file = [([], "") for _ in files]
    elif isinstance(annotations, list):
        if len(annotations) != len(files):
            raise Unprocessable("annotations: one list per image", errors=[{
                "field": "annotations", "message": f"{len(files)} images but {len(annotations)} annotation lists"}])
        per_file = [(a, f"annotations[{i}]") for i, a in enumerate(annotations)]
    elif isinstance(annotations, dict):
        names = {f.filename for f in files}
        if unknown := sorted(set(annotations) - names):
            raise Unprocessable("annotations: names no uploaded image", errors=[
                {"field": f"annotations.{n}", "message": "no uploaded image has this name"} for n in unknown])
        per_file = [(annotations.get(f.filename, []), f"annotations.{f.filename}") for f in files]
    else:
        raise Unprocessable("annotations: a list per image or an object by file name",
                            errors=[{"field": "annotations", "message": "a list of lists, or an object"}])
    errors: list[dict[str, str]] = []
    checked_files = []
    for i, f in enumerate(files):
        ext = lib.image_suffix(f.filename)
        size = await anyio.to_thread.run_sync(lib.image_size, f.path) if ext else None
        if ext is None or size is None:
            errors.append({"field": f"file[{i}]", "message": f"{f.filename!r} is not an image Ultralytics reads"})
            continue
        checked_files.append((f, ext, size))
    if errors:
        raise Unprocessable("; ".join(e["message"] for e in errors), errors=errors)
    async with _Write(sessions, settings, ref, caller) as (session, dataset):
        kpt_shape = await _kpt_shape(dataset)
        stored: list[list[dict[str, Any]]] = []
        for (_, _, (w, h)), (raw, prefix) in zip(checked_files, per_file, strict=True):
            try:
                stored.append(_checked(raw, dataset, w, h, kpt_shape, prefix) if prefix else [])
            except Unprocessable as exc:
                errors.extend(exc.errors or [])
        if errors:
            raise Unprocessable("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)
        folder = dataset_dir(settings, dataset.id)
        position = (await session.execute(select(func.coalesce(func.max(DatasetSample.position), -1)).where(
            DatasetSample.dataset_id == dataset.id))).scalar_one()
        rows = []
        for (f, ext, (w, h)), anns in zip(checked_files, stored, strict=True):
            await anyio.to_thread.run_sync(functools.partial(lib.store_blob, folder, f.path, f.sha256, ext, move=True))
            position += 1
            row = DatasetSample(id=new_id(), dataset_id=dataset.id, split=split, name=_file_name(f.filename),
                                sha256=f.sha256, ext=ext, width=w, height=h, annotations=anns, tags=[], problems=[],
                                position=position)
            session.add(row)
            rows.append(row)
        await session.flush()
        for row in rows:
            await session.refresh(row)
        audit.record(session, caller, "dataset.samples_add", "dataset", dataset.id, count=len(rows))
        return SamplesCreated(items=[sample_view(r) for r in rows])


def _file_name(filename: str) -> str:
    """A sample's name from an upload's file name: its last part, without control characters."""
    name = "".join(c for c in os.path.basename(filename.replace("\\", "/")) if c >= " ")[:255]
    return name or "image"


# -- classes ----------------------------------------------------------------------------------------------


async def _relabel(session: AsyncSession, dataset: Dataset, change: Any) -> tuple[int, int]:
    """Apply `change(annotation) -> annotation | None` to every annotation of the working copy."""
    samples = annotations = 0
    rows = (await session.execute(select(DatasetSample).where(DatasetSample.dataset_id == dataset.id))).scalars()
    for row in rows:
        new: list[dict[str, Any]] = []
        changed = 0
        for ann in row.annotations or []:
            out = change(ann)
            if out != ann:
                changed += 1
            if out is not None:
                new.append(out)
        if changed:
            row.annotations = new
            row.updated_at = func.now()
            samples += 1
            annotations += changed
    return samples, annotations


async def edit_classes(sessions: async_sessionmaker[AsyncSession], settings: Settings, ref: str, caller: Caller,
                       op: Literal["add", "rename", "merge", "delete"], name: str, other: str | None = None
                       ) -> ClassesView:
    for field, value in (("name", other if op == "rename" else name if op == "add" else None),
                         ("into", other if op == "merge" else None)):
        if value in (".", ".."):
            raise Unprocessable(f"{field}: {value!r} is not a class name",
                                errors=[{"field": field, "message": "not `.` or `..`"}])
    async with _Write(sessions, settings, ref, caller) as (session, dataset):
        classes = list(dataset.classes or [])
        if op == "add":
            if name in classes:
                raise Conflict(f"dataset {dataset.name!r} already has a class {name!r}")
            dataset.classes = [*classes, name]
            changed = (0, 0)
        else:
            if name not in classes:
                raise NotFound(f"dataset {dataset.name!r} has no class {name!r}")
            if op == "rename":
                assert other is not None
                if other in classes:
                    raise Conflict(f"dataset {dataset.name!r} already has a class {other!r}: merge {name!r} into "
                                   "it instead")
                changed = await _relabel(session, dataset, lambda a: {**a, "class": other} if a["class"] == name
                                         else a)
                dataset.classes = [other if c == name else c for c in classes]
            elif op == "merge":
                assert other is not None
                if other not in classes:
                    raise Unprocessable(f"into: no class {other!r}",
                                        errors=[{"field": "into", "message": f"no class {other!r}"}])
                if other == name:
                    raise Unprocessable("into: a class cannot be merged into itself",
                                        errors=[{"field": "into", "message": "another class than the merged one"}])
                changed = await _relabel(session, dataset, lambda a: {**a, "class": other} if a["class"] == name
                                         else a)
                dataset.classes = [c for c in classes if c != name]
            else:
                if len(classes) == 1:
                    raise Conflict(f"dataset {dataset.name!r} needs at least one class")
                changed = await _relabel(session, dataset, lambda a: None if a["class"] == name else a)
                dataset.classes = [c for c in classes if c != name]
        dataset.updated_at = func.now()
        audit.record(session, caller, f"dataset.class_{op}", "dataset", dataset.id, name=name, other=other)
        return ClassesView(classes=list(dataset.classes), samples_changed=changed[0], annotations_changed=changed[1])


# -- versions ---------------------------------------------------------------------------------------------


async def _used_by_models(session: AsyncSession, dataset_id: str, number: int) -> int:
    return (await session.execute(select(func.count()).select_from(ModelVersion).where(
        ModelVersion.dataset_id == dataset_id, ModelVersion.dataset_version == number))).scalar_one()


async def version_view(session: AsyncSession, dataset: Dataset, row: DatasetVersion) -> VersionView:
    counts = row.counts if row.counts is not None else lib.counts_from_report(dataset.stats or {})
    return VersionView(
        number=row.number, ref=f"{dataset.name}:{row.number}", classes=list(row.classes or []),
        images=int(counts.get("images", 0)), instances=int(counts.get("instances", 0)),
        splits=counts.get("splits") or {},
        changes=msgspec.convert(row.changes, VersionChanges) if row.changes else None,
        used_by_models=await _used_by_models(session, dataset.id, row.number), created_at=row.created_at)


async def create_version(sessions: async_sessionmaker[AsyncSession], settings: Settings, ref: str,
                         caller: Caller) -> VersionView:
    """Freeze the working copy as the next version (its own folder; images hard links to the blobs)."""
    async with _Write(sessions, settings, ref, caller) as (session, dataset):
        rows = (await session.execute(select(DatasetSample).where(DatasetSample.dataset_id == dataset.id)
                                      .order_by(DatasetSample.position, DatasetSample.id))).scalars().all()
        manifest = Manifest(classes=list(dataset.classes or []), samples=[SampleRecord(
            id=r.id, split=r.split, name=r.name, sha256=r.sha256, ext=r.ext, width=r.width, height=r.height,
            annotations=list(r.annotations or [])) for r in rows])
        number = dataset.last_version + 1
        previous = (await session.execute(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
                                          .order_by(DatasetVersion.number.desc()).limit(1))).scalar_one_or_none()
        folder = dataset_dir(settings, dataset.id)
        extra = await anyio.to_thread.run_sync(lib.pose_keys, previous.data_yaml) if previous else {}
        if dataset.task == "pose" and not extra and dataset.root_path:
            extra = await anyio.to_thread.run_sync(lib.pose_keys, Path(dataset.root_path) / "data.yaml")
        try:
            root, data = await anyio.to_thread.run_sync(
                lib.materialise_version, folder, number, manifest, dataset.task or "detect", extra)
        except DatasetError as exc:
            raise Conflict(f"dataset {dataset.name!r}: {exc}") from None
        try:
            before = await anyio.to_thread.run_sync(lib.read_manifest, folder, previous.number) if previous else None
            changes = lib.changes_between(before, previous.number if previous else None, manifest)
            row = DatasetVersion(id=new_id(), dataset_id=dataset.id, number=number, root_path=str(root),
                                 data_yaml=str(data), classes=list(manifest.classes),
                                 counts=lib.counts_of(manifest, dataset.task or "detect"), changes=changes,
                                 materialised=True, created_by=caller.user_id)
            session.add(row)
            dataset.last_version = number
            dataset.updated_at = func.now()
            await session.flush()
            await session.refresh(row)
            audit.record(session, caller, "dataset.version_create", "dataset", dataset.id, number=number)
            view = await version_view(session, dataset, row)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lib.remove_version, folder, number)
            raise
    return view


async def list_versions(sessions: async_sessionmaker[AsyncSession], ref: str, caller: Caller, *, limit: int,
                        offset: int) -> VersionPage:
    async with sessions() as session:
        dataset = await resolve_dataset(session, ref, caller, read=True)
        where = DatasetVersion.dataset_id == dataset.id
        total = (await session.execute(select(func.count()).select_from(DatasetVersion).where(where))).scalar_one()
        rows = (await session.execute(select(DatasetVersion).where(where).order_by(DatasetVersion.number.desc())
                                      .limit(limit).offset(offset))).scalars().all()
        items = [await version_view(session, dataset, r) for r in rows]
    return VersionPage(items=items, total=total, limit=limit, offset=offset)


async def get_version(sessions: async_sessionmaker[AsyncSession], ref: str, number: int,
                      caller: Caller) -> VersionView:
    async with sessions() as session:
        dataset = await resolve_dataset(session, ref, caller, read=True)
        return await version_view(session, dataset, await dataset_version(session, dataset, number))


async def delete_version(sessions: async_sessionmaker[AsyncSession], settings: Settings, ref: str, number: int,
                         caller: Caller) -> None:
    """Delete a version and its folder; 409 while a model version or an unfinished run uses it."""
    async with sessions() as session, session.begin():
        dataset = await _locked(session, ref, caller)
        row = await dataset_version(session, dataset, number)
        if models := await _used_by_models(session, dataset.id, number):
            raise Conflict(f"version {number} of dataset {dataset.name!r} is used by {models} model version(s)")
        runs = list((await session.execute(select(Run.id).where(
            Run.spec["dataset_id"].astext == dataset.id, Run.spec["dataset_version"].astext == str(number),
            Run.status.in_(ACTIVE_STATUSES)).limit(10))).scalars())
        if runs:
            raise Conflict(f"version {number} of dataset {dataset.name!r} is used by unfinished runs: "
                           f"{', '.join(runs)}")
        await session.execute(delete(DatasetVersion).where(DatasetVersion.id == row.id))
        audit.record(session, caller, "dataset.version_delete", "dataset", dataset.id, number=number)
    await anyio.to_thread.run_sync(lib.remove_version, dataset_dir(settings, dataset.id), number)
