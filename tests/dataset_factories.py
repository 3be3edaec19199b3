"""Tiny synthetic datasets in every supported format: coloured rectangles on 64-128 px images.

Every generator returns the ground truth it drew: image name (file stem) -> [(class name, cx, cy, w, h)]
with normalised YOLO values, so conversions can be compared against it.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ["cat", "dog", "bird"]
COLOURS = [(220, 40, 40), (40, 200, 60), (40, 80, 220)]
Truth = dict[str, list[tuple[str, float, float, float, float]]]


def scene(i: int) -> tuple[int, int, list[tuple[int, int, int, int, int]]]:
    """Image i: (width, height, [(class id, x1, y1, x2, y2)]) in pixels, x2/y2 exclusive."""
    rng = random.Random(i)
    width, height = rng.randint(64, 128), rng.randint(64, 128)
    boxes = []
    for _ in range(rng.randint(1, 3)):
        w, h = rng.randint(12, width // 2), rng.randint(12, height // 2)
        x1, y1 = rng.randint(0, width - w), rng.randint(0, height - h)
        boxes.append((rng.randrange(len(CLASSES)), x1, y1, x1 + w, y1 + h))
    return width, height, boxes


def draw(path: Path, width: int, height: int, boxes, colour_of=lambda c: COLOURS[c]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (width, height), (235, 235, 235))
    d = ImageDraw.Draw(im)
    for c, x1, y1, x2, y2 in boxes:
        d.rectangle([x1, y1, x2 - 1, y2 - 1], fill=colour_of(c))
    im.save(path, quality=90)


def _yolo(boxes, width, height) -> list[tuple[int, float, float, float, float]]:
    return [(c, (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
            for c, x1, y1, x2, y2 in boxes]


def _truth(truth: Truth, name: str, width: int, height: int, boxes) -> None:
    truth[name] = [(CLASSES[c], *v) for c, *v in _yolo(boxes, width, height)]


def _yolo_label(path: Path, width: int, height: int, boxes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in _yolo(boxes, width, height)))


def make_yolo_yaml(root: Path, n_train: int = 6, n_val: int = 3, download: str | None = None) -> Truth:
    """YOLO with data.yaml and images/{train,val} + labels/{train,val}."""
    truth: Truth = {}
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        width, height, boxes = scene(i)
        draw(root / "images" / split / f"img{i}.jpg", width, height, boxes)
        _yolo_label(root / "labels" / split / f"img{i}.txt", width, height, boxes)
        _truth(truth, f"img{i}", width, height, boxes)
    text = "path: /somewhere/else\ntrain: images/train\nval: images/val\nnames:\n" + "".join(
        f"  {i}: {n}\n" for i, n in enumerate(CLASSES))
    if download:
        text += f"download: {download}\n"
    (root / "data.yaml").write_text(text)
    return truth


def make_yolo_flat(root: Path, n: int = 10) -> Truth:
    """YOLO images/ + labels/ without data.yaml and without splits."""
    truth: Truth = {}
    for i in range(n):
        width, height, boxes = scene(i)
        draw(root / "images" / f"img{i}.png", width, height, boxes)
        _yolo_label(root / "labels" / f"img{i}.txt", width, height, boxes)
        _truth(truth, f"img{i}", width, height, boxes)
    return truth


CATEGORY_IDS = [3, 7, 11]  # not contiguous and not from 1, as real exports often are


def make_coco(root: Path, n: int = 8, splits: bool = True, polygons: bool = False) -> Truth:
    """COCO: images/<split>/*.jpg and annotations/instances_<split>.json (or one annotations.json)."""
    truth: Truth = {}
    parts: dict[str, list[int]] = {"train": [], "val": []} if splits else {"": []}
    for i in range(n):
        parts["val" if splits and i % 3 == 2 else "train" if splits else ""].append(i)
    for split, ids in parts.items():
        images, annotations = [], []
        for i in ids:
            width, height, boxes = scene(i)
            rel = f"{split}/img{i}.jpg" if split else f"img{i}.jpg"
            draw(root / "images" / rel, width, height, boxes)
            _truth(truth, f"img{i}", width, height, boxes)
            images.append({"id": 1000 + i, "file_name": f"img{i}.jpg", "width": width, "height": height})
            for c, x1, y1, x2, y2 in boxes:
                ann = {"id": len(annotations) + 1, "image_id": 1000 + i, "category_id": CATEGORY_IDS[c],
                       "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
                ann["segmentation"] = [[x1, y1, x2, y1, x2, y2, x1, y2]] if polygons else []
                annotations.append(ann)
        doc = {"images": images, "annotations": annotations,
               "categories": [{"id": cid, "name": name} for cid, name in zip(CATEGORY_IDS, CLASSES, strict=True)]}
        name = f"instances_{split}.json" if split else "annotations.json"
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / name).write_text(json.dumps(doc))
    return truth


def make_voc(root: Path, n: int = 8) -> Truth:
    """Pascal VOC: Annotations/*.xml and JPEGImages/*.jpg (1-based inclusive corners), no ImageSets."""
    truth: Truth = {}
    for i in range(n):
        width, height, boxes = scene(i)
        draw(root / "JPEGImages" / f"img{i}.jpg", width, height, boxes)
        _truth(truth, f"img{i}", width, height, boxes)
        objects = "".join(
            f"<object><name>{CLASSES[c]}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin>"
            f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for c, x1, y1, x2, y2 in boxes
        )
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"img{i}.xml").write_text(
            f"<annotation><folder>VOC</folder><filename>img{i}.jpg</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>{objects}</annotation>"
        )
    return truth


def make_classify(root: Path, per_class: int = 5, splits: bool = False) -> dict[str, list[str]]:
    """One folder per class (optionally below train/ and val/); returns class -> image names."""
    out: dict[str, list[str]] = {c: [] for c in CLASSES}
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            folder = root / ("train" if i < per_class - 1 else "val") / name if splits else root / name
            draw(folder / f"{name}{i}.jpg", 64 + i, 64, [(c, 8, 8, 56, 56)])
            out[name].append(f"{name}{i}.jpg")
    return out


def corrupt_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")


# -- archives --------------------------------------------------------------------------------------


def zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def tar_folder(folder: Path, archive: Path, mode: str = "w:gz") -> Path:
    with tarfile.open(archive, mode) as tf:
        tf.add(folder, arcname="dataset")
    return archive


def zip_with(archive: Path, members: dict[str, bytes]) -> Path:
    """A zip whose member names are written exactly as given (e.g. '../evil', '/abs')."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo("placeholder")
            info.filename = name
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return archive


def tar_with(archive: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    data = data or {}
    with tarfile.open(archive, "w") as tf:
        for info in members:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return archive


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info
