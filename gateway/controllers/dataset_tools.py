"""/api/v1/datasets/{ref}/augment and /stats: what augmentation makes of a dataset, and its statistics."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import FromPath, QueryParameter

from gateway.auth.caller import Me
from gateway.routeopts import ERRORS_OPT
from gateway.services import augment, dataset_stats
from gateway.services.augment import AugmentPreviewView, AugmentRequest
from gateway.services.dataset_stats import DatasetStatsView
from gateway.state import Gateway

AUGMENT_DESCRIPTION = """\
Builds the dataset's training split with Ultralytics' own training transforms (as a training does: mosaic,
random perspective, MixUp, CutMix, HSV, flips) for the settings given (Ultralytics' argument names; one left
out is Ultralytics' default) and answers `count` augmented images (base64 JPEG, boxes drawn unless
`draw_boxes` is false) with their transformed boxes as JSON. The same seed, settings and dataset give the
same images. Bounded: `count` 1-16, `imgsz` 32-1024 (multiple of 32), `count × imgsz²` at most 4 × 640²;
beyond is a 422 naming the field, like a setting out of its range. Runs on a runner with Ultralytics, in a
process of its own: 503 when none is online (or it failed). Detection-family datasets only (not classify)."""

STATS_DESCRIPTION = """\
Images and instances per split and class, class balance, histograms of box width, height, area and aspect
ratio (normalised and in pixels), boxes per image, image sizes, duplicate images (same SHA-256; `leak`: in
more than one split, e.g. train and val), tiny (< 4 px) and nearly empty (< 0.01 % of the image) boxes,
images without labels. Computed on the first request for a dataset version and kept (a version never
changes). `version`: 1 or left out (the latest); any other is a 404."""

Version = Annotated[int | None, QueryParameter(ge=1, description="Dataset version (default: the latest)")]


class DatasetToolsController(Controller):
    path = "/datasets"
    tags = ["datasets"]

    @post("/{ref:str}/augment", status_code=200, summary="Preview the training augmentation of a dataset",
          description=AUGMENT_DESCRIPTION)
    async def augment(self, gw: Gateway, me: Me, ref: FromPath[str], data: AugmentRequest) -> AugmentPreviewView:
        return await augment.preview(gw, ref, data, me)

    @get("/{ref:str}/stats", summary="A dataset's statistics (computed once per version, then kept)",
         description=STATS_DESCRIPTION, opt={ERRORS_OPT: {409}})
    async def stats(self, gw: Gateway, me: Me, ref: FromPath[str], version: Version = None) -> DatasetStatsView:
        return await dataset_stats.dataset_stats(gw, ref, me, version)
