"""`POST /api/v1/datasets/{ref}/augment`: what Ultralytics' training augmentation makes of a dataset's
training images, asked of a runner with Ultralytics (`runner.yolo.augment`; the gateway never imports it).

The settings are Ultralytics' training arguments of the same names (a setting left out is Ultralytics'
default, and the answer's `settings` says which value was used); their ranges are checked here, so a bad one
is a 422 naming it before any runner is asked. Bounded: `count` images of `imgsz` pixels, at most
`MAX_PIXELS` pixels in all (4 at 640, 16 at 320), JPEG in the JSON answer. No runner online: 503.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from gateway.auth.caller import Caller
from gateway.errors import Unprocessable
from gateway.services import curation
from gateway.services.datasets import Seed, resolve_dataset
from gateway.state import GatewayState
from gateway.yolo_service import ask_runner
from shared.contracts.yolo_service import AUGMENT, AugmentPreview

MAX_COUNT = 16
MAX_IMGSZ = 1024
MAX_PIXELS = 4 * 640 * 640
"""count × imgsz² of one preview (the answer is one bus message)."""


Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None
Degrees = Annotated[float, msgspec.Meta(ge=0.0, le=180.0)] | None
ScaleGain = Annotated[float, msgspec.Meta(ge=0.0, le=0.99)] | None
Perspective = Annotated[float, msgspec.Meta(ge=0.0, le=0.01)] | None
Erasing = Annotated[float, msgspec.Meta(ge=0.0, le=0.9)] | None


class AugmentRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Ultralytics' augmentation arguments (None or left out: Ultralytics' default), a seed and a count."""

    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT, description="Images to make, 1 to 16")] = 4
    seed: Seed = 0
    """The same seed (and settings, and dataset) gives the same images, byte for byte."""
    imgsz: Annotated[int, msgspec.Meta(ge=32, le=MAX_IMGSZ, multiple_of=32,
                                       description="Training image size, a multiple of 32 up to 1024")] = 640
    version: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """The dataset version to preview (default: the latest)."""
    draw_boxes: bool = True
    """Draw the transformed boxes on the images (they are in `boxes` either way)."""
    mosaic: Fraction = None
    """Mosaic probability (Ultralytics default 1.0)."""
    mixup: Fraction = None
    """MixUp probability (default 0.0)."""
    cutmix: Fraction = None
    """CutMix probability (default 0.0)."""
    hsv_h: Fraction = None
    """Hue gain fraction (default 0.015)."""
    hsv_s: Fraction = None
    """Saturation gain fraction (default 0.7)."""
    hsv_v: Fraction = None
    """Value (brightness) gain fraction (default 0.4)."""
    degrees: Degrees = None
    """Rotation, +/- degrees (default 0.0)."""
    translate: Fraction = None
    """Translation, +/- fraction (default 0.1)."""
    scale: ScaleGain = None
    """Scale gain, +/- (default 0.5)."""
    shear: Degrees = None
    """Shear, +/- degrees (default 0.0)."""
    perspective: Perspective = None
    """Perspective fraction (default 0.0; 0-0.001 is typical)."""
    flipud: Fraction = None
    """Vertical flip probability (default 0.0)."""
    fliplr: Fraction = None
    """Horizontal flip probability (default 0.5)."""
    copy_paste: Fraction = None
    """Copy-paste fraction, segment datasets (default 0.0)."""
    erasing: Erasing = None
    """Random erasing probability, classification only (default 0.4)."""


class AugmentedBox(msgspec.Struct, kw_only=True):
    class_id: int
    class_name: str
    cx: float
    cy: float
    w: float
    h: float
    """Normalised centre and size (YOLO), as the training batch holds them."""
    x1: float
    y1: float
    x2: float
    y2: float
    """Corners in pixels of the augmented image."""


class AugmentedImage(msgspec.Struct, kw_only=True):
    index: int
    """The training image the item was made from (its index in the train split; a mosaic adds three more)."""
    source: str
    """Its path in the prepared layout (`images/train/...`)."""
    width: int
    height: int
    media_type: str
    image: str
    """The augmented image, base64 (JPEG), with the boxes drawn unless `draw_boxes` was false."""
    boxes: list[AugmentedBox]


class AugmentPreviewView(msgspec.Struct, kw_only=True):
    dataset_id: str
    dataset_name: str
    version: int
    seed: int
    imgsz: int
    settings: dict[str, float]
    """Every augmentation setting as Ultralytics used it (the defaults filled in)."""
    jpeg_quality: int
    train_images: int
    images: list[AugmentedImage]


async def preview(gw: GatewayState, ref: str, body: AugmentRequest, caller: Caller) -> AugmentPreviewView:
    if body.count * body.imgsz**2 > MAX_PIXELS:
        raise Unprocessable("the preview is too large", errors=[{
            "field": "count", "message": f"{body.count} images at imgsz {body.imgsz} are more than "
                                         f"{MAX_PIXELS:,} pixels in all; ask for fewer or smaller ones"}])
    async with gw.sessionmaker() as session:
        row = await resolve_dataset(session, ref, caller, read=True)
        frozen = await curation.dataset_version(session, row, body.version)
    version = frozen.number
    if row.task == "classify":
        raise Unprocessable("the augmentation preview is for datasets with boxes", errors=[{
            "field": "dataset", "message": "a classify dataset has no boxes to preview"}])
    settings = {k: v for k, v in msgspec.structs.asdict(body).items()
                if v is not None and k not in ("count", "seed", "imgsz", "draw_boxes")}
    request = AugmentPreview(data=str(frozen.data_yaml), task=str(row.task), imgsz=body.imgsz, seed=body.seed,
                             count=body.count, settings=settings, draw_boxes=body.draw_boxes,
                             memory_mb=gw.settings.architecture_validate_memory_mb,
                             timeout_s=gw.settings.architecture_validate_timeout_s)
    result = await ask_runner(gw.nc, gw.settings, AUGMENT, request, what="the augmentation preview",
                              timeout_s=gw.settings.architecture_validate_timeout_s)
    if not result.get("ok"):
        field = result.get("field") or "$"
        raise Unprocessable(result.get("error") or "the settings cannot be previewed",
                            errors=[{"field": field, "message": result.get("error") or "invalid"}])
    return msgspec.convert({**result["result"], "dataset_id": row.id, "dataset_name": row.name, "version": version},
                           AugmentPreviewView)
