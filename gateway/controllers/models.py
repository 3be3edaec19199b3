"""/api/v1/models: the weights library. Upload a `.pt` (checked by loading it safely), list, get, download
(with HTTP ranges), delete."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery, PathParameter, QueryParameter
from litestar.response import Stream

from gateway.auth.caller import Me
from gateway.controllers.common import Offset
from gateway.errors import BadRequest, NotFound, Unprocessable, validation_errors
from gateway.files import servable_artifact
from gateway.ranges import byte_range, content_range
from gateway.services import models as service
from gateway.services.models import ModelDetail, ModelPage, ModelVersionView, UploadOptions
from gateway.state import Gateway
from gateway.uploads import MB, incoming_dir, read_multipart
from shared.artifacts import ArtifactNotFound, ArtifactStore, artifact_store
from shared.contracts.common import new_id

Limit = Annotated[int, QueryParameter(ge=1, description="Items per page (at most page_size_max)")]
Version = Annotated[int, PathParameter(ge=1, le=2**31 - 1, description="Version number")]

UPLOAD_DESCRIPTION = """\
`multipart/form-data` with `name` (the model; created when new), `file` (Ultralytics weights, `.pt`, at most
`max_upload_mb`) and optional `description`. The file is loaded with a restricted unpickler (no code from the
file runs; a file that needs any is refused with 422); its task and class names are read from it. Answers the
new version (1 for a new model, then 2, 3, ...)."""


def _store(gw: Gateway) -> ArtifactStore:
    return artifact_store(gw.settings, gw.js)


class ModelsController(Controller):
    path = "/models"
    tags = ["models"]

    @post("/", status_code=201, request_max_body_size=None, summary="Upload weights as a new model version",
          description=UPLOAD_DESCRIPTION)
    async def upload(self, gw: Gateway, me: Me, request: Request[Any, Any, Any]) -> ModelVersionView:
        if request.content_type[0] != "multipart/form-data":
            raise HTTPException(status_code=415, detail="send multipart/form-data with name and file (.pt)")
        form = await read_multipart(
            request, file_field="file", dest=incoming_dir(gw.settings) / f"{new_id()}.pt",
            max_file_bytes=gw.settings.max_upload_mb * MB, allowed_fields=frozenset({"name", "description"}))
        try:
            if form.file is None:
                raise BadRequest('the form has no "file" part (the .pt weights)')
            try:
                options = msgspec.convert(form.fields, UploadOptions)
            except msgspec.ValidationError as exc:
                raise Unprocessable("the form is invalid", errors=validation_errors(exc)) from None
            model, version = await service.upload_weights(gw.sessionmaker, gw.settings, _store(gw), options,
                                                          form.file, me)
        finally:
            form.discard()
        return service.version_view(model, version)

    @get("/", summary="List models, each with its latest version")
    async def list_models(self, gw: Gateway, me: Me, offset: Offset = 0, limit: Limit = 50,
                          task: FromQuery[str | None] = None) -> ModelPage:
        async with gw.sessionmaker() as session:
            return await service.list_models(session, me, limit=min(limit, gw.settings.page_size_max),
                                             offset=offset, task=task)

    @get("/{ref:str}", summary="A model with its versions (by id or name)")
    async def get_model(self, gw: Gateway, me: Me, ref: FromPath[str]) -> ModelDetail:
        async with gw.sessionmaker() as session:
            model = await service.resolve_model(session, ref, me, read=True)
            return await service.model_view(session, model, with_versions=True)  # type: ignore[return-value]

    @get("/{ref:str}/versions/{version:int}", summary="One version of a model")
    async def get_version(self, gw: Gateway, me: Me, ref: FromPath[str], version: Version) -> ModelVersionView:
        async with gw.sessionmaker() as session:
            model = await service.resolve_model(session, ref, me, read=True)
            return service.version_view(model, await service.get_version(session, model, version))

    @get("/{ref:str}/versions/{version:int}/download", summary="The weights file (supports Range requests)",
         media_type="application/octet-stream")
    async def download(self, gw: Gateway, me: Me, request: Request[Any, Any, Any], ref: FromPath[str],
                       version: Version) -> Stream:
        async with gw.sessionmaker() as session:
            model = await service.resolve_model(session, ref, me, read=True)
            row = await service.get_version(session, model, version)
        store = _store(gw)
        try:
            if not await anyio.to_thread.run_sync(servable_artifact, store, row.uri):
                raise ArtifactNotFound(row.uri)
            size = (await store.stat(row.uri)).size
        except ArtifactNotFound:
            raise NotFound(f"the weights of {model.name}:{version} are missing from the artifact store"
                           ) from None
        span = byte_range(request.headers.get("range"), size)
        start, end = span or (0, size)
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Length": str(end - start),
            "Content-Disposition": f'attachment; filename="{_filename(model.name, version, row.format)}"',
            "ETag": f'"{row.sha256}"',
        }
        if span is not None:
            headers["Content-Range"] = content_range(start, end, size)
        return Stream(_chunks(store, row.uri, start, end), status_code=206 if span else 200, headers=headers,
                      media_type="application/octet-stream")

    @delete("/{ref:str}", status_code=204, summary="Delete a model and all its versions (409 while in use)")
    async def delete_model(self, gw: Gateway, me: Me, ref: FromPath[str]) -> None:
        await service.delete_model(gw.sessionmaker, _store(gw), ref, me)

    @delete("/{ref:str}/versions/{version:int}", status_code=204,
            summary="Delete one version of a model (409 while in use)")
    async def delete_version(self, gw: Gateway, me: Me, ref: FromPath[str], version: Version) -> None:
        await service.delete_model(gw.sessionmaker, _store(gw), ref, me, version)


async def _chunks(store: ArtifactStore, uri: str, start: int, end: int) -> AsyncIterator[bytes]:
    async for chunk in store.open(uri, start, end):
        yield chunk


def _filename(name: str, version: int, fmt: str) -> str:
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-v{version}.{fmt}"
