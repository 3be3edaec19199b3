"""Preview what Ultralytics' training augmentation does to a dataset's images, before a long training.

`preview(request)` builds the training dataset of a prepared data YAML exactly as Ultralytics' detection
trainer does (`get_cfg` of the settings over Ultralytics' defaults, `check_det_dataset`, `build_yolo_dataset`
in `train` mode at stride 32: `YOLODataset.build_transforms` with mosaic, random perspective, MixUp, CutMix,
HSV, flips, `Format`), seeds every generator the way a training does (`init_seeds(seed)`), and takes
`count` items of it: each is the image a training batch would hold, with its transformed boxes.

Which images are shown: a permutation of the training split drawn from `seed` (repeated when `count` is
larger: each repeat is augmented anew). The same request gives the same bytes (one process per request:
`runner.yolo.augment_child`, so a training running beside it neither moves nor is moved by its random state).

Blocking and heavy (imports torch and Ultralytics): run it in the child process.
"""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path
from typing import Any

AUGMENT_KEYS = ("mosaic", "mixup", "cutmix", "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear",
                "perspective", "flipud", "fliplr", "copy_paste", "erasing")
"""The Ultralytics training arguments a preview takes (`erasing` only acts on classification datasets)."""
QUALITIES = (90, 75, 60, 45, 30)
BOX_COLOURS = [(255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49), (72, 249, 10),
               (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187), (44, 153, 168), (0, 194, 255),
               (52, 69, 147), (100, 115, 255), (0, 24, 236), (132, 56, 255), (82, 0, 133), (203, 56, 255),
               (255, 149, 200), (255, 55, 199)]
"""Ultralytics' own plotting palette."""


class PreviewError(ValueError):
    """The request cannot be previewed (`field` names the setting at fault, if one is)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def preview(request: dict[str, Any]) -> dict[str, Any]:
    """`{"images": [...], "settings": {...}, ...}`; raises PreviewError for what the request got wrong."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.utils import DEFAULT_CFG
    from ultralytics.utils.torch_utils import init_seeds

    task = request["task"]
    if task == "classify":
        raise PreviewError("the augmentation preview shows boxes: it is for detect, segment, pose and obb "
                           "datasets, not classify", field="dataset")
    settings = {k: v for k, v in (request.get("settings") or {}).items() if k in AUGMENT_KEYS}
    seed = int(request["seed"])
    overrides = {"task": task, "mode": "train", "data": request["data"], "imgsz": int(request["imgsz"]),
                 "seed": seed, "workers": 0, "cache": False, "rect": False, **settings}
    try:
        cfg = get_cfg(DEFAULT_CFG, overrides)
    except (TypeError, ValueError, SyntaxError) as exc:
        raise PreviewError(f"Ultralytics refused the settings: {exc}",
                           field=next((k for k in settings if k in str(exc)), None)) from None
    init_seeds(seed)
    data = check_det_dataset(request["data"], autodownload=False)
    dataset: Any = build_yolo_dataset(cfg, data["train"], 16, data, mode="train", stride=32)  # type: ignore[arg-type]
    n = len(dataset)
    if n == 0:
        raise PreviewError("the dataset has no training images", field="dataset")
    count = int(request["count"])
    order: list[int] = []
    picker = random.Random(seed)
    while len(order) < count:
        order += picker.sample(range(n), n)
    names = data.get("names") or {}
    root = Path(str(data.get("path") or "/"))
    items = []
    for index in order[:count]:
        item = dataset[index]
        items.append(_item(item, index, dataset.im_files[index], root, names))
    shown = {k: _plain(getattr(cfg, k, None)) for k in AUGMENT_KEYS}
    max_bytes = int(request.get("max_bytes") or 1_000_000)
    for quality in QUALITIES:
        images = [_encoded(it, quality, bool(request.get("draw_boxes", True)), names) for it in items]
        if sum(len(im["image"]) for im in images) + 4096 * len(images) < max_bytes:
            return {"images": images, "settings": shown, "imgsz": int(cfg.imgsz), "seed": seed, "jpeg_quality": quality,
                    "train_images": n}
    raise PreviewError(f"{count} images at imgsz {cfg.imgsz} do not fit in one answer ({max_bytes:,} bytes) even "
                       "as JPEG of low quality; ask for fewer images or a smaller imgsz", field="count")


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _item(item: dict[str, Any], index: int, im_file: str, root: Path, names: Any) -> dict[str, Any]:
    img = item["img"]  # torch uint8 (C, H, W), RGB: what the training batch holds
    array = img.permute(1, 2, 0).contiguous().numpy()
    height, width = array.shape[:2]
    boxes = []
    for (cx, cy, w, h), cls in zip(item["bboxes"].tolist(), item["cls"].view(-1).tolist(), strict=True):
        c = int(cls)
        boxes.append({"class_id": c, "class_name": str(names.get(c, c)) if isinstance(names, dict) else str(c),
                      "cx": round(cx, 6), "cy": round(cy, 6), "w": round(w, 6), "h": round(h, 6),
                      "x1": round((cx - w / 2) * width, 2), "y1": round((cy - h / 2) * height, 2),
                      "x2": round((cx + w / 2) * width, 2), "y2": round((cy + h / 2) * height, 2)})
    try:
        source = Path(im_file).relative_to(root).as_posix()
    except ValueError:
        source = Path(im_file).name
    return {"index": index, "source": source, "width": width, "height": height, "boxes": boxes, "array": array}


def _encoded(item: dict[str, Any], quality: int, draw_boxes: bool, names: Any) -> dict[str, Any]:
    from PIL import Image, ImageDraw

    im = Image.fromarray(item["array"], mode="RGB")
    if draw_boxes:
        pen = ImageDraw.Draw(im)
        for box in item["boxes"]:
            colour = BOX_COLOURS[box["class_id"] % len(BOX_COLOURS)]
            pen.rectangle([box["x1"], box["y1"], box["x2"], box["y2"]], outline=colour, width=2)
            pen.text((box["x1"] + 3, box["y1"] + 1), box["class_name"], fill=colour)
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=quality)
    return {k: v for k, v in item.items() if k != "array"} | {
        "media_type": "image/jpeg", "image": base64.b64encode(buffer.getvalue()).decode("ascii")}
