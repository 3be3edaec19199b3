"""Artifacts: a run's files (and uploaded images) by id, their bytes with HTTP ranges; image uploads.

An uploaded image is an `artifacts` row of kind `upload` without a run, stored in the artifact store under
`uploads/<id>/`: runners read it from the same store, so with the `local` store they must share the
gateway's file system (`trainforge up` does), with the `nats` store they may run anywhere.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from litestar.response import Stream
from sqlalchemy import ColumnElement, delete, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.access import check_artifact
from gateway.auth.caller import Caller
from gateway.db.models import Artifact, Run
from gateway.errors import Conflict, NotFound, Unprocessable
from gateway.files import servable_artifact
from gateway.ranges import byte_range, content_range
from gateway.services import audit
from gateway.state import GatewayState
from gateway.uploads import UploadedFile
from shared import names
from shared.artifacts import ArtifactError, ArtifactNotFound, ArtifactStore, LocalArtifactStore, artifact_store
from shared.contracts.common import ACTIVE_STATUSES, new_id, utcnow

log = logging.getLogger(__name__)

UPLOAD_KIND = "upload"
IMAGE_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tiff", "MPO": ".jpg"}
IMAGE_MEDIA_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".bmp": "image/bmp", ".webp": "image/webp",
                     ".tiff": "image/tiff"}
_ID = re.compile(names.whole(r"[0-9A-Za-z_-]{1,64}"))


def store_of(gw: GatewayState) -> ArtifactStore:
    return artifact_store(gw.settings, gw.js)


async def get_artifact(session: AsyncSession, artifact_id: str, caller: Caller) -> Artifact:
    """A run's artifact (its project's members see it) or an upload (its uploader sees it)."""
    row = await session.get(Artifact, artifact_id) if _ID.match(artifact_id) else None
    if row is None:
        raise NotFound(f"no artifact {artifact_id!r}")
    await check_artifact(session, caller, row, f"artifact {artifact_id!r}")
    return row


def image_info(path: Path) -> tuple[str, int, int]:
    """(suffix, width, height) of an image file; ValueError if it is not an image Ultralytics reads."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            fmt, size = im.format, im.size
            im.verify()
    except Exception as exc:  # noqa: BLE001 - whatever PIL (or a plugin) raises, it is not an image we take
        raise ValueError(f"not a readable image ({exc})") from None
    if fmt not in IMAGE_SUFFIXES:
        raise ValueError(f"image format {fmt} is not accepted ({', '.join(sorted(set(IMAGE_SUFFIXES) - {'MPO'}))})")
    return IMAGE_SUFFIXES[fmt], size[0], size[1]


async def checked_image(upload: UploadedFile) -> tuple[str, int, int]:
    """`image_info` of an uploaded file, off the event loop; Unprocessable (naming `file`) if it is no image."""
    try:
        return await anyio.to_thread.run_sync(image_info, upload.path)
    except ValueError as exc:
        raise not_an_image(exc) from None


def not_an_image(exc: ValueError) -> Unprocessable:
    """The 422 for an uploaded `file` that `image_info` refused."""
    return Unprocessable(f"file: {exc}", errors=[{"field": "file", "message": str(exc)}])


async def put_upload(gw: GatewayState, upload: UploadedFile, caller: Caller, info: tuple[str, int, int]) -> Artifact:
    """Keep a checked image (`info`: its `checked_image`) in the artifact store; returns its row, not yet
    added to a session (the row's id is the upload id)."""
    suffix, width, height = info
    upload_id = new_id()
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(upload.filename).stem)[:64] or "image"
    uri = await store_of(gw).put_file(f"uploads/{caller.user_id}/{upload_id}/{stem}{suffix}", upload.path)
    return Artifact(id=upload_id, run_id=None, project_id=None, owner_id=caller.user_id, name=f"{stem}{suffix}",
                    kind=UPLOAD_KIND, uri=uri, size_bytes=upload.size, media_type=IMAGE_MEDIA_TYPES[suffix],
                    meta={"width": width, "height": height, "sha256": upload.sha256, "filename": upload.filename},
                    created_at=utcnow())


async def store_upload(gw: GatewayState, upload: UploadedFile, caller: Caller) -> Artifact:
    """Check an uploaded image and keep it in the artifact store, with its row."""
    row = await put_upload(gw, upload, caller, await checked_image(upload))
    async with gw.sessionmaker() as session:
        session.add(row)
        await session.commit()
    return row


def _read_by_active_run(sources: Any) -> ColumnElement[bool]:
    """A queued or running run reads an upload: its spec's `sources` contain `sources` (JSON: `[uri]`)."""
    return exists().where(Run.status.in_(ACTIVE_STATUSES), Run.spec["sources"].contains(sources))


async def delete_upload(gw: GatewayState, upload_id: str, caller: Caller) -> None:
    """Delete an uploaded image (its uploader or an admin); Conflict while a queued or running run reads it."""
    async with gw.sessionmaker() as session, session.begin():
        row = await session.get(Artifact, upload_id, with_for_update=True) if _ID.match(upload_id) else None
        if row is None or row.kind != UPLOAD_KIND or not (caller.is_admin or row.owner_id == caller.user_id):
            raise NotFound(f"no upload {upload_id!r}")
        if await session.scalar(select(_read_by_active_run([row.uri]))):
            raise Conflict(f"upload {upload_id!r} is read by a run that has not ended; delete it afterwards")
        await session.delete(row)
        audit.record(session, caller, "upload.delete", "upload", row.id, name=row.name)
    await delete_stored_files(gw, [row.uri])


async def sweep_uploads(gw: GatewayState, uploaded_before: datetime) -> int:
    """Delete the uploads made before `uploaded_before` that no queued or running run reads; how many.
    Safe to run from several gateways at once: each deletes what its own statement removed."""
    async with gw.sessionmaker() as session, session.begin():
        uris = list((await session.execute(
            delete(Artifact)
            .where(Artifact.kind == UPLOAD_KIND, Artifact.created_at < uploaded_before,
                   ~_read_by_active_run(func.jsonb_build_array(Artifact.uri)))
            .returning(Artifact.uri))).scalars())
    await delete_stored_files(gw, uris)
    return len(uris)


async def delete_stored_files(gw: GatewayState, uris: list[str]) -> None:
    """Delete uploaded images from the artifact store (and their folders); a failure is logged."""
    store = store_of(gw)
    for uri in uris:
        try:
            await store.delete(uri)
            if isinstance(store, LocalArtifactStore):  # each upload has a folder of its own
                with contextlib.suppress(OSError):
                    await anyio.to_thread.run_sync(store.path_of(uri).parent.rmdir)
        except ArtifactError:
            log.warning("could not delete the uploaded file %s", uri, exc_info=True)


async def download(gw: GatewayState, row: Artifact, range_header: str | None) -> Stream:
    """The artifact's bytes, all (200) or one range (206), as a streamed response."""
    store = store_of(gw)
    try:
        if not await anyio.to_thread.run_sync(servable_artifact, store, row.uri):
            raise ArtifactNotFound(row.uri)
        size = (await store.stat(row.uri)).size
    except ArtifactNotFound:
        raise NotFound(f"the file of artifact {row.id} is missing from the artifact store") from None
    span = byte_range(range_header, size)
    start, end = span or (0, size)
    filename = re.sub(r"[^A-Za-z0-9._-]", "_", Path(row.name).name) or "artifact"
    headers: dict[str, Any] = {
        "Accept-Ranges": "bytes",
        "Content-Length": str(end - start),
        "Content-Disposition": f'attachment; filename="{filename}"',
    }
    if span is not None:
        headers["Content-Range"] = content_range(start, end, size)
    return Stream(_chunks(store, row.uri, start, end), status_code=206 if span else 200, headers=headers,
                  media_type=row.media_type or "application/octet-stream")


async def _chunks(store: ArtifactStore, uri: str, start: int, end: int) -> AsyncIterator[bytes]:
    async for chunk in store.open(uri, start, end):
        yield chunk
