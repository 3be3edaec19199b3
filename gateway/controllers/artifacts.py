"""Artifacts and uploads: `/api/v1/artifacts/{id}` (metadata, download with HTTP ranges) and
`/api/v1/uploads` (images for `yolo.predict`)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.exceptions import HTTPException
from litestar.response import Stream

from gateway.auth.caller import Me
from gateway.errors import BadRequest
from gateway.schemas import ArtifactView, from_row
from gateway.services import artifacts as service
from gateway.state import Gateway, GatewayState
from gateway.uploads import MB, incoming_dir, read_multipart
from shared.contracts.common import new_id

UPLOAD_DESCRIPTION = """\
`multipart/form-data` with one `file`: an image (JPEG, PNG, BMP, WEBP, TIFF; at most `max_image_upload_mb`).
Answers the stored upload; its `id` goes in the `images` of a `yolo.predict` run. Uploads are deleted
`upload_ttl_h` hours later (default 24) unless a queued or running run reads them."""


class ArtifactsController(Controller):
    tags = ["artifacts"]

    @get("/artifacts/{artifact_id:str}", summary="An artifact: a run's file, or an uploaded image")
    async def read(self, gw: Gateway, me: Me, artifact_id: str) -> ArtifactView:
        async with gw.sessionmaker() as session:
            return from_row(ArtifactView, await service.get_artifact(session, artifact_id, me))

    @get("/artifacts/{artifact_id:str}/download", summary="An artifact's bytes (supports Range requests)",
         media_type="application/octet-stream")
    async def download(self, gw: Gateway, me: Me, request: Request[Any, Any, Any], artifact_id: str) -> Stream:
        async with gw.sessionmaker() as session:
            row = await service.get_artifact(session, artifact_id, me)
        return await service.download(gw, row, request.headers.get("range"))

    @post("/uploads", status_code=201, request_max_body_size=None, summary="Upload an image for predictions",
          description=UPLOAD_DESCRIPTION)
    async def upload(self, gw: Gateway, me: Me, request: Request[Any, Any, Any]) -> ArtifactView:
        form = await read_image_form(gw, request, frozenset())
        try:
            row = await service.store_upload(gw, form.file, me)  # type: ignore[arg-type]
        finally:
            form.discard()
        return from_row(ArtifactView, row)

    @delete("/uploads/{upload_id:str}", summary="Delete an uploaded image (409 while a queued or running run "
            "reads it)", status_code=204)
    async def delete_upload(self, gw: Gateway, me: Me, upload_id: str) -> None:
        await service.delete_upload(gw, upload_id, me)


async def read_image_form(gw: GatewayState, request: Request[Any, Any, Any], fields: frozenset[str]) -> Any:
    """A multipart form with one image `file` (required) and the text `fields`."""
    if request.content_type[0] != "multipart/form-data":
        raise HTTPException(status_code=415, detail="send multipart/form-data with an image `file`")
    form = await read_multipart(request, file_field="file",
                                dest=incoming_dir(gw.settings) / f"{new_id()}.image",
                                max_file_bytes=gw.settings.max_image_upload_mb * MB, allowed_fields=fields)
    if form.file is None or form.file.size == 0:
        form.discard()
        raise BadRequest('the form has no "file" part (an image), or it is empty')
    return form
