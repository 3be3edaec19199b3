"""/api/v1/datasets: register by server path or upload, list, inspect, page images, serve an image, delete."""

from __future__ import annotations

import mimetypes
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import File

from gateway.auth.caller import Me
from gateway.controllers.common import Offset
from gateway.datasets import ImagePage
from gateway.errors import BadRequest, Unprocessable, validation_errors
from gateway.routeopts import MEDIA_TYPE_OPT
from gateway.services import datasets as service
from gateway.services.datasets import DatasetDetail, DatasetPage, RegisterByPath, UploadOptions
from gateway.state import Gateway
from gateway.uploads import MB, read_json, read_multipart
from shared.contracts.common import new_id

Limit = Annotated[int, QueryParameter(ge=1, description="Items per page (at most page_size_max)")]

REGISTER_DESCRIPTION = """\
Either `application/json` `{"name", "path", "ratios"?: {"train", "val", "test"}, "seed"?, "drop_difficult"?}`
for a folder on the server (inside a configured data root), or `multipart/form-data` with `name`, `file`
(.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz; at most `max_upload_mb`), optional `ratios` (JSON), `seed` and
`drop_difficult` (Pascal VOC objects marked difficult are labels unless it is true). The format
(YOLO, COCO, Pascal VOC, classification folders) is recognised, COCO and VOC are converted to YOLO, a dataset
without splits is split by the ratios (seeded, reproducible). Answers with the inspection."""


def _decode(data: bytes | dict[str, Any], type_: type) -> Any:
    try:
        if isinstance(data, bytes):
            return msgspec.json.decode(data, type=type_)
        return msgspec.convert(data, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise Unprocessable("the request body is invalid", errors=validation_errors(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON ({exc})") from None


def _upload_options(fields: dict[str, str]) -> UploadOptions:
    raw: dict[str, Any] = dict(fields)
    if "ratios" in raw:
        try:
            raw["ratios"] = msgspec.json.decode(raw["ratios"])
        except msgspec.DecodeError:
            raise BadRequest('form field "ratios" must be JSON, e.g. {"train": 0.8, "val": 0.2}') from None
    return _decode(raw, UploadOptions)


class DatasetsController(Controller):
    path = "/datasets"
    tags = ["datasets"]

    @post("/", status_code=201, request_max_body_size=None, summary="Register a dataset",
          description=REGISTER_DESCRIPTION)
    async def register(self, gw: Gateway, me: Me, request: Request[Any, Any, Any]) -> DatasetDetail:
        media_type, _ = request.content_type
        settings = gw.settings
        if media_type == "application/json":
            body = _decode(await read_json(request), RegisterByPath)
            row = await service.register_from_path(gw.sessionmaker, settings, body, me)
        elif media_type == "multipart/form-data":
            dest = service.uploads_dir(settings) / f"{new_id()}.upload"
            form = await read_multipart(request, file_field="file", dest=dest,
                                        max_file_bytes=settings.max_upload_mb * MB,
                                        allowed_fields=frozenset({"name", "ratios", "seed", "drop_difficult"}))
            try:
                if form.file is None:
                    raise BadRequest('the form has no "file" part (the dataset archive)')
                service.archive_suffix(form.file.filename)
                if form.file.size == 0:
                    raise BadRequest("the uploaded file is empty")
                options = _upload_options(form.fields)
                row = await service.register_from_archive(gw.sessionmaker, settings, options, form.file.path, me)
            finally:
                form.discard()
        else:
            raise HTTPException(status_code=415, detail="send application/json (a server path) or "
                                                        "multipart/form-data (an archive)")
        return await service.detail(row)

    @get("/", summary="List datasets")
    async def list_datasets(
        self, gw: Gateway, me: Me, offset: Offset = 0, limit: Limit = 50, format: FromQuery[str | None] = None,
        task: FromQuery[str | None] = None,
    ) -> DatasetPage:
        async with gw.sessionmaker() as session:
            return await service.list_datasets(session, me, limit=min(limit, gw.settings.page_size_max),
                                               offset=offset, format=format, task=task)

    @get("/{ref:str}", summary="A dataset with its inspection (by id or name)")
    async def get_dataset(self, gw: Gateway, me: Me, ref: FromPath[str]) -> DatasetDetail:
        async with gw.sessionmaker() as session:
            row = await service.resolve_dataset(session, ref, me, ready=False, read=True)
        return await service.detail(row)

    @get("/{ref:str}/images", summary="A page of a dataset's images with their labels")
    async def list_images(
        self, gw: Gateway, me: Me, ref: FromPath[str], split: FromQuery[str | None] = None, offset: Offset = 0,
        limit: Limit = 50,
    ) -> ImagePage:
        async with gw.sessionmaker() as session:
            row = await service.resolve_dataset(session, ref, me, read=True)
        return await service.images(row, split, offset, min(limit, gw.settings.page_size_max))

    @get("/{ref:str}/images/{split:str}/{index:int}/file", summary="The image file at an index of a split",
         opt={MEDIA_TYPE_OPT: "image/*"})
    async def image_file(self, gw: Gateway, me: Me, ref: FromPath[str], split: FromPath[str],
                         index: FromPath[int]) -> File:
        async with gw.sessionmaker() as session:
            row = await service.resolve_dataset(session, ref, me, read=True)
        path = await service.image_path(row, split, index)
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return File(path=path, filename=path.name, content_disposition_type="inline", media_type=media_type)

    @delete("/{ref:str}", status_code=204, summary="Delete a dataset (409 while an active run uses it)")
    async def delete_dataset(self, gw: Gateway, me: Me, ref: FromPath[str]) -> None:
        await service.delete_dataset(gw.sessionmaker, gw.settings, ref, me)
