"""The weights library: named models, each with numbered versions of weights kept in the artifact store.

- `register_version(session, store, name=..., file_path=..., ...)`: a new version of a model (created when
  new). The projector calls it when a `yolo.train` run completes (with the run's best.pt); uploads call it
  after `gateway.weights.inspect_weights` checked the file. It flushes; the caller commits.
- `resolve_model_version(session, ref)`: `"name"` (its latest version), `"name:3"`, or a version id; for run
  creation (`model=version.uri`, `model_version_id=version.id`).
- Deleting a model or a version is refused (409) while an active run uses it: a run whose spec names the
  version (`spec->>'model_version_id'`) or its weights (`spec->>'model'` = the URI).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import anyio
import msgspec
from sqlalchemy import delete, func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.access import owned_by, owned_or_linked, pick
from gateway.auth.caller import Caller
from gateway.db.models import Model, ModelVersion, ProjectModel, Run
from gateway.db.session import plain_fetch
from gateway.errors import BadRequest, Conflict, NotFound, Unprocessable
from gateway.services import audit
from gateway.uploads import UploadedFile
from gateway.weights import WeightsError, inspect_weights, weights_format
from shared import names
from shared.artifacts import ArtifactError, ArtifactStore, LocalArtifactStore
from shared.contracts.common import ACTIVE_STATUSES, new_id
from shared.settings import Settings

log = logging.getLogger(__name__)

NAME_PATTERN = names.NAME
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN,
                                   description="Letters, digits, `.`, `_`, `-`; up to 128")]
_VERSION_ID = re.compile(r"^[0-9a-f]{32}\Z")


class UploadOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The text fields of an upload form."""

    name: Name
    description: Annotated[str, msgspec.Meta(max_length=4096)] = ""


class ModelVersionView(msgspec.Struct, kw_only=True):
    id: str
    model_id: str
    model_name: str
    version: int
    ref: str
    """`name:version`, usable as a run's model."""
    format: str
    task: str
    class_names: list[str]
    metrics: dict[str, Any]
    size_bytes: int
    sha256: str
    source_run_id: str | None
    dataset_id: str | None
    parent_version_id: str | None
    created_at: datetime
    dataset_version: int | None = None
    """The version of the dataset it was trained on."""


class ModelView(msgspec.Struct, kw_only=True):
    id: str
    name: str
    task: str
    description: str
    versions_count: int
    latest: ModelVersionView | None
    created_at: datetime
    updated_at: datetime


class ModelDetail(ModelView, kw_only=True):
    versions: list[ModelVersionView]
    """Newest first."""


class ModelPage(msgspec.Struct, kw_only=True):
    items: list[ModelView]
    total: int
    limit: int
    offset: int


def version_view(model: Model, v: ModelVersion) -> ModelVersionView:
    return ModelVersionView(
        id=v.id, model_id=model.id, model_name=model.name, version=v.version, ref=f"{model.name}:{v.version}",
        format=v.format, task=v.task, class_names=list(v.class_names or []), metrics=dict(v.metrics or {}),
        size_bytes=v.size_bytes, sha256=v.sha256, source_run_id=v.source_run_id, dataset_id=v.dataset_id,
        dataset_version=v.dataset_version, parent_version_id=v.parent_version_id, created_at=v.created_at,
    )


def _owned(owner_id: str | None) -> Any:
    return Model.owner_id.is_(None) if owner_id is None else Model.owner_id == owner_id


# -- registering ------------------------------------------------------------------------------------------


async def register_version(
    session: AsyncSession, store: ArtifactStore, *, name: str, file_path: Path | str, task: str,
    class_names: list[str], metrics: dict[str, Any] | None = None, source_run_id: str | None = None,
    dataset_id: str | None = None, parent_version_id: str | None = None, owner_id: str | None = None,
    description: str = "", format: str | None = None, dataset_version: int | None = None,
) -> ModelVersion:
    """Store the weights at `file_path` (a local file, or an artifact URI of `store`) as the next version of
    model `name` (created with `task` if new; Conflict if it exists with another task).

    Idempotent per training run: a second call with the same `source_run_id` returns the version the first
    made. The model row stays locked until the caller's transaction ends, so versions are numbered without
    gaps or clashes. Flushes; the caller commits (and, if that fails, may `store.delete(version.uri)`).
    """
    if not re.fullmatch(NAME_PATTERN, name):
        raise BadRequest(f"invalid model name {name!r} (letters, digits, '.', '_', '-'; up to 128)")
    fmt = format or weights_format(file_path)
    await session.execute(insert(Model).values(id=new_id(), name=name, task=task, description=description,
                                               owner_id=owner_id, last_version=0)
                          .on_conflict_do_nothing(constraint="uq_models_owner_name"))
    model = (await session.execute(select(Model).where(Model.name == name, _owned(owner_id))
                                   .with_for_update().execution_options(populate_existing=True))).scalar_one()
    if source_run_id is not None:
        existing = (await session.execute(select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.source_run_id == source_run_id)
        )).scalar_one_or_none()
        if existing is not None:
            return existing
    if model.task != task:
        raise Conflict(f"model {name!r} holds {model.task} weights; these are {task} weights")
    if parent_version_id is not None and await session.get(ModelVersion, parent_version_id) is None:
        log.warning("model %s: parent version %s is gone; registered without it", name, parent_version_id)
        parent_version_id = None
    version = model.last_version + 1
    uri = await _store_file(store, file_path, f"models/{model.id}/v{version}/weights.{fmt}")
    try:
        size, sha256 = await _size_and_hash(store, uri)
        row = ModelVersion(
            id=new_id(), model_id=model.id, version=version, uri=uri, size_bytes=size, sha256=sha256,
            task=task, class_names=list(class_names), metrics=dict(metrics or {}),
            source_run_id=source_run_id, dataset_id=dataset_id, dataset_version=dataset_version,
            parent_version_id=parent_version_id, format=fmt,
        )
        session.add(row)
        model.last_version = version
        model.updated_at = func.now()
        if description and not model.description:
            model.description = description
        await session.flush()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await store.delete(uri)
        raise
    await session.refresh(row)
    return row


async def _store_file(store: ArtifactStore, source: Path | str, key: str) -> str:
    if isinstance(source, str) and "://" in source:
        with tempfile.TemporaryDirectory(prefix="tf-weights-") as tmp:
            local = await store.fetch(source, Path(tmp) / "weights")
            return await store.put_file(key, local)
    return await store.put_file(key, Path(source))


async def _size_and_hash(store: ArtifactStore, uri: str) -> tuple[int, str]:
    hasher = hashlib.sha256()
    size = 0
    async for chunk in store.open(uri):
        hasher.update(chunk)
        size += len(chunk)
    return size, hasher.hexdigest()


async def upload_weights(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, store: ArtifactStore,
    options: UploadOptions, upload: UploadedFile, caller: Caller,
) -> tuple[Model, ModelVersion]:
    """Check an uploaded `.pt` by loading it safely, then register it as the model's next version."""
    if Path(upload.filename).suffix.lower() != ".pt":
        raise BadRequest(f"the upload {upload.filename!r} is not a .pt file (Ultralytics weights)")
    if upload.size == 0:
        raise BadRequest("the uploaded file is empty")
    try:
        info = await anyio.to_thread.run_sync(inspect_weights, upload.path, settings.state_dir)
    except WeightsError as exc:
        raise Unprocessable(str(exc)) from None
    async with sessions() as session:
        version = await register_version(
            session, store, name=options.name, file_path=upload.path, task=info.task,
            class_names=info.class_names, metrics=info.metrics, owner_id=caller.user_id,
            description=options.description, format="pt")
        audit.record(session, caller, "model.upload", "model", version.model_id, name=options.name,
                     version=version.version)
        try:
            await session.commit()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store.delete(version.uri)
            raise
        model = await session.get_one(Model, version.model_id)
    return model, version


# -- reading ----------------------------------------------------------------------------------------------


async def resolve_model(session: AsyncSession, ref: str, caller: Caller, *, read: bool = False) -> Model:
    """The model with id or name `ref` among the caller's (an admin's own first, then anyone's). With `read`,
    also a model linked to a project the caller is a member of (to read, never to change)."""
    rows = (await session.execute(select(Model).where(
        or_(Model.id == ref, Model.name == ref),
        owned_or_linked(caller, Model.owner_id, Model.id, ProjectModel.model_id, ProjectModel.project_id)
        if read else owned_by(caller, Model.owner_id)))).scalars().all()
    model = pick(rows, ref, caller)
    if model is None:
        raise NotFound(f"no model {ref!r}")
    return model


async def get_version(session: AsyncSession, model: Model, version: int) -> ModelVersion:
    row = (await session.execute(select(ModelVersion).where(
        ModelVersion.model_id == model.id, ModelVersion.version == version))).scalar_one_or_none()
    if row is None:
        raise NotFound(f"model {model.name!r} has no version {version}")
    return row


async def latest_version(session: AsyncSession, model: Model) -> ModelVersion | None:
    return (await session.execute(select(ModelVersion).where(ModelVersion.model_id == model.id)
                                  .order_by(ModelVersion.version.desc()).limit(1))).scalar_one_or_none()


_MODEL_COLUMNS = tuple(column.name for column in Model.__table__.columns)
_VERSION_COLUMNS = tuple(column.name for column in ModelVersion.__table__.columns)
_READ_MODEL_VERSION = f"""
    SELECT {", ".join(f"m.{c}" for c in _MODEL_COLUMNS)}, {", ".join(f"v.{c} AS v_{c}" for c in _VERSION_COLUMNS)}
    FROM models m LEFT JOIN LATERAL (
        SELECT * FROM model_versions mv WHERE mv.model_id = m.id AND ($2::int IS NULL OR mv.version = $2)
        ORDER BY mv.version DESC LIMIT 1) v ON true
    WHERE (m.id = $1 OR m.name = $1) AND ($3::text IS NULL OR m.owner_id = $3)
"""


async def read_model_version(session: AsyncSession, ref: str, caller: Caller,
                             version: int | None = None) -> tuple[Model, ModelVersion]:
    """What `resolve_model` and `get_version` (or `latest_version`) find, read by one plain statement (the
    synchronous predict path), as copies outside the session: for reading only. NotFound for no model or no
    such version, Conflict for a model with no versions at all."""
    rows = await plain_fetch(session, _READ_MODEL_VERSION, ref, version, None if caller.is_admin else caller.user_id)
    found = [(Model(**{c: row[c] for c in _MODEL_COLUMNS}), row) for row in rows]
    model = pick([m for m, _ in found], ref, caller)
    if model is None:
        raise NotFound(f"no model {ref!r}")
    row = next(r for m, r in found if m is model)
    if row["v_id"] is None:
        if version is not None:
            raise NotFound(f"model {model.name!r} has no version {version}")
        raise Conflict(f"model {model.name!r} has no versions")
    return model, ModelVersion(**{c: row[f"v_{c}"] for c in _VERSION_COLUMNS})


async def resolve_model_version(session: AsyncSession, ref: str, caller: Caller) -> ModelVersion:
    """A version by `"name"` (the latest), `"name:N"`, or version id. NotFound if there is none.

    For a run: `model=version.uri` and `model_version_id=version.id` in its spec.
    """
    if _VERSION_ID.match(ref):
        row = (await session.execute(select(ModelVersion).join(Model).where(
            ModelVersion.id == ref, owned_by(caller, Model.owner_id)))).scalar_one_or_none()
        if row is not None:
            return row
    name, sep, number = ref.rpartition(":") if ":" in ref else (ref, "", "")
    if sep and not number.isdigit():
        raise BadRequest(f"invalid model reference {ref!r}: name, name:version or a version id")
    model = await resolve_model(session, name, caller)
    if sep:
        return await get_version(session, model, int(number))
    row = await latest_version(session, model)
    if row is None:
        raise NotFound(f"model {model.name!r} has no versions")
    return row


async def model_view(session: AsyncSession, model: Model, *, with_versions: bool = False) -> ModelView:
    versions = (await session.execute(select(ModelVersion).where(ModelVersion.model_id == model.id)
                                      .order_by(ModelVersion.version.desc()))).scalars().all()
    views = [version_view(model, v) for v in versions]
    base: dict[str, Any] = dict(id=model.id, name=model.name, task=model.task, description=model.description,
                                versions_count=len(views), latest=views[0] if views else None,
                                created_at=model.created_at, updated_at=model.updated_at)
    return ModelDetail(**base, versions=views) if with_versions else ModelView(**base)


async def list_models(
    session: AsyncSession, caller: Caller, *, limit: int, offset: int, task: str | None = None
) -> ModelPage:
    where = [owned_by(caller, Model.owner_id)]
    if task:
        where.append(Model.task == task)
    total = (await session.execute(select(func.count()).select_from(Model).where(*where))).scalar_one()
    models = (await session.execute(select(Model).where(*where).order_by(Model.updated_at.desc(), Model.id)
                                    .limit(limit).offset(offset))).scalars().all()
    latest: dict[str, ModelVersion] = {}
    if models:
        rows = (await session.execute(
            select(ModelVersion).where(ModelVersion.model_id.in_([m.id for m in models]))
            .distinct(ModelVersion.model_id).order_by(ModelVersion.model_id, ModelVersion.version.desc())
        )).scalars().all()
        latest = {r.model_id: r for r in rows}
    counts = dict((await session.execute(
        select(ModelVersion.model_id, func.count()).where(ModelVersion.model_id.in_([m.id for m in models]))
        .group_by(ModelVersion.model_id))).all()) if models else {}
    items = [ModelView(id=m.id, name=m.name, task=m.task, description=m.description,
                       versions_count=counts.get(m.id, 0),
                       latest=version_view(m, latest[m.id]) if m.id in latest else None,
                       created_at=m.created_at, updated_at=m.updated_at) for m in models]
    return ModelPage(items=items, total=total, limit=limit, offset=offset)


# -- deleting ---------------------------------------------------------------------------------------------


async def active_runs_using(session: AsyncSession, versions: list[ModelVersion]) -> list[str]:
    """Ids of active runs whose spec names one of `versions` (by id or by its weights' URI)."""
    if not versions:
        return []
    uses = or_(Run.spec["model_version_id"].astext.in_([v.id for v in versions]),
               Run.spec["model"].astext.in_([v.uri for v in versions]))
    return list((await session.execute(
        select(Run.id).where(uses, Run.status.in_(ACTIVE_STATUSES)).limit(10))).scalars().all())


async def delete_model(sessions: async_sessionmaker[AsyncSession], store: ArtifactStore, ref: str,
                       caller: Caller, version: int | None = None) -> None:
    """Delete a model with all its versions, or one version; Conflict while an active run uses one."""
    async with sessions() as session, session.begin():
        model = await resolve_model(session, ref, caller)
        await session.execute(select(Model.id).where(Model.id == model.id).with_for_update())
        if version is None:
            versions = list((await session.execute(
                select(ModelVersion).where(ModelVersion.model_id == model.id))).scalars().all())
        else:
            versions = [await get_version(session, model, version)]
        if runs := await active_runs_using(session, versions):
            what = f"model {model.name!r}" if version is None else f"{model.name}:{version}"
            raise Conflict(f"{what} is used by active runs: {', '.join(runs)}")
        if version is None:
            await session.execute(delete(Model).where(Model.id == model.id))
        else:
            await session.execute(delete(ModelVersion).where(ModelVersion.id == versions[0].id))
            model.updated_at = func.now()
        audit.record(session, caller, "model.delete", "model", model.id, name=model.name, version=version)
    for v in versions:
        try:
            await store.delete(v.uri)
        except ArtifactError:
            log.warning("model %s: could not delete the weights %s", model.name, v.uri, exc_info=True)
    if version is None and isinstance(store, LocalArtifactStore):  # drop the model's folder too
        folder = store.root / "models" / model.id
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))
