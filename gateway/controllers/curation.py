"""/api/v1/datasets/{ref}/samples, /classes and /versions: curate a dataset's working copy, freeze versions."""

from __future__ import annotations

import mimetypes
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post, put
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery, Parameter, QueryParameter
from litestar.response import File

from gateway.auth.caller import Me
from gateway.controllers.common import Offset
from gateway.errors import BadRequest
from gateway.routeopts import MEDIA_TYPE_OPT
from gateway.services import curation as service
from gateway.services.curation import (
    UPLOAD_FILES_MAX,
    AnnotationsBody,
    ClassesView,
    ClassMerge,
    ClassRename,
    NewClass,
    SamplePage,
    SamplePatch,
    SamplesCreated,
    SampleView,
    VersionPage,
    VersionView,
)
from gateway.state import Gateway
from gateway.uploads import MB, read_multipart
from shared.contracts.common import new_id

Limit = Annotated[int, QueryParameter(ge=1, description="Items per page (at most page_size_max)")]
Number = Annotated[int, Parameter(ge=1, le=2**31 - 1, description="The version number")]
Text = Annotated[str | None, QueryParameter(max_length=128, pattern=r"^[^\x00-\x1f]*$")]

UPLOAD_DESCRIPTION = f"""\
`multipart/form-data`: one or more `file` parts (images; at most {UPLOAD_FILES_MAX}, each at most
`max_upload_mb`), `split` (train, val or test; default train) and optional `annotations` (JSON): a list with
one list of annotations per file, in order, or an object `{{"<file name>": [annotation, ...]}}`. Annotations are
in pixels (see `PUT .../annotations`). All or nothing: one unreadable image or bad annotation is a 422 naming it,
and nothing is added."""

ANNOTATIONS_DESCRIPTION = """\
The image's full set of annotations, in pixels: detect `{"class": "cat", "box": [x_min, y_min, x_max, y_max]}`;
segment `{"class", "polygon": [[x, y], ...]}` (3+ points); obb `{"class", "polygon"}` (4 corners); pose
`{"class", "box", "keypoints": [[x, y, v], ...]}` (the dataset's keypoint count); classify `[{"class": "cat"}]`
(one at most). `class` is a class name of the dataset or its index. A class the dataset does not have or a
point outside the image is a 422 whose `errors` name the field (`annotations[0].box`)."""


class CurationController(Controller):
    path = "/datasets/{ref:str}"
    tags = ["datasets"]

    # -- samples --------------------------------------------------------------------------------------------

    @get("/samples", summary="A page of the working copy's samples")
    async def list_samples(
        self, gw: Gateway, me: Me, ref: FromPath[str], offset: Offset = 0, limit: Limit = 50,
        split: FromQuery[str | None] = None,
        class_name: Annotated[str | None, QueryParameter(
            name="class", max_length=128, pattern=r"^[^\x00-\x1f]*$",
            description="Samples with an annotation of this class")] = None,
        no_labels: Annotated[bool | None, QueryParameter(description="true: only samples "
                                                    "without annotations; false: only those with")] = None,
        has_problems: Annotated[bool | None, QueryParameter(description="true: only samples "
                                                       "with problems found at registration")] = None,
        tag: Text = None,
    ) -> SamplePage:
        return await service.list_samples(
            gw.sessionmaker, gw.settings, ref, me, split=split, class_name=class_name, no_labels=no_labels,
            has_problems=has_problems, tag=tag, limit=min(limit, gw.settings.page_size_max), offset=offset)

    @post("/samples", status_code=201, request_max_body_size=None, summary="Upload images into a split",
          description=UPLOAD_DESCRIPTION)
    async def add_samples(self, gw: Gateway, me: Me, ref: FromPath[str],
                          request: Request[Any, Any, Any]) -> SamplesCreated:
        media_type, _ = request.content_type
        if media_type != "multipart/form-data":
            raise HTTPException(status_code=415, detail="send multipart/form-data with one or more `file` parts")
        settings = gw.settings
        form = await read_multipart(
            request, file_field="file", dest=settings.datasets_dir / ".uploads" / f"{new_id()}.sample",
            max_file_bytes=settings.max_upload_mb * MB, allowed_fields=frozenset({"split", "annotations"}),
            max_files=UPLOAD_FILES_MAX)
        try:
            annotations = None
            if "annotations" in form.fields:
                try:
                    annotations = msgspec.json.decode(form.fields["annotations"])
                except msgspec.DecodeError:
                    raise BadRequest('form field "annotations" must be JSON') from None
            return await service.add_samples(gw.sessionmaker, settings, ref, me, form.files,
                                             form.fields.get("split", "train"), annotations)
        finally:
            form.discard()

    @get("/samples/{sample_id:str}", summary="A sample with its annotations")
    async def get_sample(self, gw: Gateway, me: Me, ref: FromPath[str], sample_id: FromPath[str]) -> SampleView:
        return await service.get_sample(gw.sessionmaker, ref, sample_id, me)

    @get("/samples/{sample_id:str}/file", summary="A sample's image", opt={MEDIA_TYPE_OPT: "image/*"})
    async def sample_file(self, gw: Gateway, me: Me, ref: FromPath[str], sample_id: FromPath[str]) -> File:
        path, name = await service.sample_file(gw.sessionmaker, gw.settings, ref, sample_id, me)
        media_type = mimetypes.guess_type(name)[0] or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return File(path=path, filename=name, content_disposition_type="inline", media_type=media_type)

    @patch("/samples/{sample_id:str}", summary="Move a sample to another split, set its tags or name")
    async def patch_sample(self, gw: Gateway, me: Me, ref: FromPath[str], sample_id: FromPath[str],
                           data: SamplePatch) -> SampleView:
        return await service.patch_sample(gw.sessionmaker, gw.settings, ref, sample_id, data, me)

    @delete("/samples/{sample_id:str}", status_code=204, summary="Remove a sample from the working copy")
    async def delete_sample(self, gw: Gateway, me: Me, ref: FromPath[str], sample_id: FromPath[str]) -> None:
        await service.delete_sample(gw.sessionmaker, gw.settings, ref, sample_id, me)

    @put("/samples/{sample_id:str}/annotations", summary="Replace a sample's annotations",
         description=ANNOTATIONS_DESCRIPTION)
    async def put_annotations(self, gw: Gateway, me: Me, ref: FromPath[str], sample_id: FromPath[str],
                              data: AnnotationsBody) -> SampleView:
        return await service.put_annotations(gw.sessionmaker, gw.settings, ref, sample_id, data, me)

    # -- classes --------------------------------------------------------------------------------------------

    @post("/classes", status_code=200, summary="Add a class (at the end of the list; no label changes)")
    async def add_class(self, gw: Gateway, me: Me, ref: FromPath[str], data: NewClass) -> ClassesView:
        return await service.edit_classes(gw.sessionmaker, gw.settings, ref, me, "add", data.name)

    @patch("/classes/{name:str}", summary="Rename a class (its annotations follow; 409 if the name is taken)")
    async def rename_class(self, gw: Gateway, me: Me, ref: FromPath[str], name: FromPath[str],
                           data: ClassRename) -> ClassesView:
        return await service.edit_classes(gw.sessionmaker, gw.settings, ref, me, "rename", name, data.name)

    @post("/classes/{name:str}/merge", status_code=200,
          summary="Merge a class into another (its annotations become the other class; it leaves the list)")
    async def merge_class(self, gw: Gateway, me: Me, ref: FromPath[str], name: FromPath[str],
                          data: ClassMerge) -> ClassesView:
        return await service.edit_classes(gw.sessionmaker, gw.settings, ref, me, "merge", name, data.into)

    @delete("/classes/{name:str}", status_code=200,
            summary="Delete a class and every annotation of it (classify images of it lose their class)")
    async def delete_class(self, gw: Gateway, me: Me, ref: FromPath[str], name: FromPath[str]) -> ClassesView:
        return await service.edit_classes(gw.sessionmaker, gw.settings, ref, me, "delete", name)

    # -- versions -------------------------------------------------------------------------------------------

    @post("/versions", status_code=201, summary="Freeze the working copy as the next version")
    async def create_version(self, gw: Gateway, me: Me, ref: FromPath[str]) -> VersionView:
        return await service.create_version(gw.sessionmaker, gw.settings, ref, me)

    @get("/versions", summary="The dataset's versions, newest first")
    async def list_versions(self, gw: Gateway, me: Me, ref: FromPath[str], offset: Offset = 0,
                            limit: Limit = 50) -> VersionPage:
        return await service.list_versions(gw.sessionmaker, ref, me, limit=min(limit, gw.settings.page_size_max),
                                           offset=offset)

    @get("/versions/{number:int}", summary="A version: counts per split and class, changes since the previous")
    async def get_version(self, gw: Gateway, me: Me, ref: FromPath[str], number: Number) -> VersionView:
        return await service.get_version(gw.sessionmaker, ref, number, me)

    @delete("/versions/{number:int}", status_code=204,
            summary="Delete a version (409 while a model version or an unfinished run uses it)")
    async def delete_version(self, gw: Gateway, me: Me, ref: FromPath[str], number: Number) -> None:
        await service.delete_version(gw.sessionmaker, gw.settings, ref, number, me)
