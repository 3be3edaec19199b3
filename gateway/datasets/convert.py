"""From each recognised format to one list of samples: image, split, YOLO label file or class.

COCO goes through Ultralytics' own `convert_coco`, after its JSON is normalised (contiguous class ids,
checked file names, polygon segmentations only). Pascal VOC has no converter in Ultralytics, so it is
converted here. YOLO label files are used as they are; classification folders need no labels.
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path, PurePosixPath

import msgspec
from PIL import Image

from gateway.datasets.coco_labels import write_labels
from gateway.datasets.errors import InvalidDataset
from gateway.datasets.formats import (
    DatasetFormat,
    FormatMatch,
    label_list_names,
    read_coco,
    read_data_yaml,
)
from gateway.datasets.report import Problem, ProblemKind
from gateway.datasets.scan import is_image, label_path, list_files, split_name
from gateway.datasets.tasks import Task


class Sample(msgspec.Struct, kw_only=True):
    key: str
    """The image's path relative to the dataset folder (what people see)."""
    image: Path
    name: str
    """Its path below the split folder of the prepared layout."""
    split: str | None = None
    label: Path | None = None
    """Its YOLO label file, if it has one."""
    class_name: str | None = None
    """Its class, for classification."""


class Converted(msgspec.Struct, kw_only=True):
    task: Task | None
    """None: to be read from the label files."""
    classes: list[str]
    """Empty: to be numbered from the label files."""
    samples: list[Sample]
    problems: list[Problem] = []
    kpt_shape: list[int] | None = None
    flip_idx: list[int] | None = None


def convert(match: FormatMatch, scratch: Path, *, drop_difficult: bool = False) -> Converted:
    """Samples of the dataset `match` found; label files that conversion writes go below `scratch`.

    Pascal VOC objects marked `<difficult>1</difficult>` are labels like any other unless `drop_difficult`
    (Ultralytics' own VOC script drops them; a dataset registered here keeps what its author labelled)."""
    if match.format is DatasetFormat.YOLO:
        return _from_yolo_yaml(match) if match.annotations else _from_yolo_layout(match)
    if match.format is DatasetFormat.COCO:
        return _from_coco(match, scratch)
    if match.format is DatasetFormat.VOC:
        return _from_voc(match, scratch, drop_difficult=drop_difficult)
    return _from_classify(match)


def _label_of(image: Path, root: Path) -> Path | None:
    """The YOLO label file Ultralytics pairs with `image`, if it exists inside `root`."""
    label = label_path(image)
    return label if label.is_file() and label.resolve().is_relative_to(root.resolve()) else None


# -- YOLO ------------------------------------------------------------------------------------------


def _from_yolo_yaml(match: FormatMatch) -> Converted:
    root = match.root
    yaml_path = root / match.annotations[0]
    data = read_data_yaml(yaml_path) or {}
    base = yaml_path.parent
    if declared := data.get("path"):
        candidate = Path(str(declared))
        candidate = candidate if candidate.is_absolute() else yaml_path.parent / candidate
        if candidate.is_dir() and candidate.resolve().is_relative_to(root.resolve()):
            base = candidate  # a `path` from another machine is ignored: the YAML's folder is the root
    if "val" not in data and "validation" in data:
        data["val"] = data["validation"]
    samples: list[Sample] = []
    problems: list[Problem] = []
    for split in ("train", "val", "test"):
        entries = data.get(split) or []
        for entry in [entries] if isinstance(entries, str) else entries:
            samples += _yolo_entry(root, base, split, str(entry), problems)
    if not any(s.split == "val" for s in samples):
        for s in samples:
            s.split = None  # no validation split: split everything by the ratios
    kpt = data.get("kpt_shape")
    flip = data.get("flip_idx")
    return Converted(
        task=Task.POSE if kpt else None,
        classes=_names(data),
        samples=samples,
        problems=problems,
        kpt_shape=[int(v) for v in kpt] if isinstance(kpt, list) else None,
        flip_idx=[int(v) for v in flip] if isinstance(flip, list) else None,
    )


def _names(data: dict) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            return [str(names[k]) for k in sorted(names, key=int)]
        except (TypeError, ValueError) as exc:
            raise InvalidDataset("data YAML 'names' must map class ids 0..n-1 to names") from exc
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(data.get("nc"), int):
        return [f"class_{i}" for i in range(data["nc"])]
    raise InvalidDataset("data YAML has neither 'names' nor 'nc'")


def _yolo_entry(root: Path, base: Path, split: str, entry: str, problems: list[Problem]) -> list[Sample]:
    real_root = root.resolve()
    target = base / entry
    if not target.exists() and entry.startswith("../"):
        target = base / entry[3:]
    if not target.resolve().is_relative_to(real_root):
        raise InvalidDataset(f"data YAML '{split}: {entry}' points outside the dataset folder")
    if not target.exists():
        raise InvalidDataset(f"data YAML '{split}: {entry}' does not exist in the dataset")
    rel_target = target.resolve().relative_to(real_root).as_posix()
    if target.is_dir():
        prefix = "" if rel_target == "." else rel_target + "/"
        return [
            Sample(key=f, image=root / f, name=f[len(prefix):], split=split, label=_label_of(root / f, root))
            for f in list_files(root, "" if rel_target == "." else rel_target)
            if is_image(f)
        ]
    samples = []
    for raw in target.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if not line or not is_image(line):
            continue
        image = Path(line) if line.startswith("/") else target.parent / line
        real = image.resolve()
        if not real.is_relative_to(real_root):
            problems.append(Problem(kind=ProblemKind.OUTSIDE_DATASET, message=f"{entry} lists {line}, which is "
                                    "outside the dataset folder", path=entry, split=split))
            continue
        if not image.is_file():
            problems.append(Problem(kind=ProblemKind.MISSING_IMAGE, message=f"{entry} lists {line}, which does "
                                    "not exist", path=entry, split=split))
            continue
        key = real.relative_to(real_root).as_posix()
        samples.append(Sample(key=key, image=image, name=key, split=split, label=_label_of(image, root)))
    return samples


def _from_yolo_layout(match: FormatMatch) -> Converted:
    root = match.root
    samples = []
    for f in match.files:
        if not is_image(f):
            continue
        parts = f.split("/")
        if parts[0] == "images":
            split = split_name(parts[1]) if len(parts) > 2 else None
            name = "/".join(parts[2:] if split else parts[1:])
        elif len(parts) > 2 and split_name(parts[0]) and parts[1] == "images":
            split, name = split_name(parts[0]), "/".join(parts[2:])
        else:
            continue
        samples.append(Sample(key=f, image=root / f, name=name, split=split, label=_label_of(root / f, root)))
    if not any(s.split == "val" for s in samples):
        for s in samples:
            s.split = None
    return Converted(task=None, classes=label_list_names(root) or [], samples=samples)


# -- classification --------------------------------------------------------------------------------


def _from_classify(match: FormatMatch) -> Converted:
    samples = []
    for f in match.files:
        if not is_image(f):
            continue
        parts = f.split("/")
        split = split_name(parts[0]) if len(parts) >= 3 else None
        if split:
            parts = parts[1:]
        samples.append(Sample(key=f, image=match.root / f, name="/".join(parts), split=split, class_name=parts[0]))
    if not any(s.split == "val" for s in samples) and not any(s.split == "test" for s in samples):
        for s in samples:
            s.split = None
    classes = sorted({s.class_name for s in samples if s.class_name})
    return Converted(task=Task.CLASSIFY, classes=classes, samples=samples)


# -- COCO ------------------------------------------------------------------------------------------


def _from_coco(match: FormatMatch, scratch: Path) -> Converted:
    root = match.root
    coco_files = [(rel, read_coco(root / rel)) for rel in match.annotations]
    names: list[str] = []
    for _rel, coco in coco_files:
        for cat in sorted(coco.categories, key=lambda c: c.get("id", 0)):
            if str(cat.get("name")) not in names:
                names.append(str(cat.get("name")))
    keypoints = any(a.get("keypoints") for _r, coco in coco_files for a in coco.annotations)
    polygons = any(_polygons(a.get("segmentation")) for _r, coco in coco_files for a in coco.annotations)
    task = Task.POSE if keypoints else Task.SEGMENT if polygons else Task.DETECT
    kpt_shape = None
    if keypoints:
        kpt_counts = {len(a["keypoints"]) // 3 for _r, coco in coco_files for a in coco.annotations if a.get("keypoints")}
        if len(kpt_counts) != 1:
            raise InvalidDataset("COCO keypoint annotations have differing numbers of keypoints")
        kpt_shape = [kpt_counts.pop(), 3]

    by_name = _image_index(match.files)
    samples: list[Sample] = []
    problems: list[Problem] = []
    for n, (rel, coco) in enumerate(coco_files):
        split = _coco_split(rel)
        cat_index = {c.get("id"): names.index(str(c.get("name"))) for c in coco.categories}
        images: list[dict] = []
        taken: set[str] = set()
        image_ids: dict[object, int] = {}
        for img in coco.images:
            found = _find_coco_image(root, rel, str(img.get("file_name", "")), split, by_name)
            if found is None:
                problems.append(Problem(kind=ProblemKind.MISSING_IMAGE, message=f"{rel} names image "
                                        f"{img.get('file_name')!r}, which is not in the dataset", path=rel, split=split))
                continue
            width, height = img.get("width"), img.get("height")
            if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
                try:
                    with Image.open(root / found) as im:
                        width, height = im.size
                except OSError:
                    width = height = 0  # the inspection reports the unreadable image
            image_ids[img.get("id")] = len(images)
            name = _unique(posixpath.basename(found), taken)
            taken.add(name)
            images.append({"id": len(images), "file_name": name, "width": width, "height": height, "_key": found})
        annotations = []
        for ann in coco.annotations:
            idx = image_ids.get(ann.get("image_id"))
            if idx is None or ann.get("category_id") not in cat_index or not _valid_bbox(ann.get("bbox")):
                if idx is not None:
                    problems.append(Problem(kind=ProblemKind.BAD_ANNOTATION, message=f"annotation {ann.get('id')} "
                                            "has no valid bbox or an unknown category", path=images[idx]["_key"],
                                            split=split))
                continue
            if images[idx]["width"] <= 0:
                continue
            clean = {
                "image_id": idx,
                "category_id": cat_index[ann["category_id"]] + 1,
                "bbox": ann["bbox"],
                "iscrowd": ann.get("iscrowd", 0),
                "segmentation": _polygons(ann.get("segmentation")),
            }
            if ann.get("keypoints"):
                clean["keypoints"] = ann["keypoints"]
            annotations.append(clean)
        folder = scratch / f"coco{n}" / "labels"
        folder.mkdir(parents=True)
        write_labels(images, annotations, folder, use_segments=task is Task.SEGMENT, use_keypoints=task is Task.POSE)
        for img in images:
            label = (folder / img["file_name"]).with_suffix(".txt")
            samples.append(Sample(key=img["_key"], image=root / img["_key"], name=img["file_name"], split=split,
                                  label=label if label.is_file() else None))
    if not any(s.split == "val" for s in samples):
        for s in samples:
            s.split = None
    return Converted(task=task, classes=names, samples=samples, problems=problems, kpt_shape=kpt_shape)


def _polygons(seg: object) -> list[list[float]]:
    if not isinstance(seg, list):
        return []
    return [p for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
            and all(isinstance(c, int | float) for c in p)]


def _valid_bbox(bbox: object) -> bool:
    return (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)
            and bbox[2] > 0 and bbox[3] > 0)


def _coco_split(rel: str) -> str | None:
    path = PurePosixPath(rel)
    tokens = path.stem.replace(".", "_").replace("-", "_").split("_")
    for candidate in [*tokens, *reversed(path.parent.parts)]:
        if split := split_name(candidate):
            return split
    return None


def _image_index(files: list[str]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = defaultdict(list)
    for f in files:
        if is_image(f):
            index[posixpath.basename(f)].append(f)
    return index


def _find_coco_image(root: Path, json_rel: str, file_name: str, split: str | None,
                     by_name: dict[str, list[str]]) -> str | None:
    """The dataset-relative path of a COCO `file_name`, looked up the usual places."""
    name = posixpath.normpath(file_name.replace("\\", "/")).lstrip("/")
    if not name or name.startswith("..") or name == ".":
        return None
    json_dir = posixpath.dirname(json_rel)
    bases = [json_dir, posixpath.dirname(json_dir), "", "images"]
    stem_split = PurePosixPath(json_rel).stem.split("_")[-1]
    bases += [f"images/{stem_split}", stem_split]
    candidates = by_name.get(posixpath.basename(name), [])
    for base in bases:
        rel = posixpath.normpath(posixpath.join(base, name)) if base else name
        if rel in candidates:
            return rel
    if len(candidates) == 1:
        return candidates[0]
    if split:
        for c in candidates:
            if any(split_name(part) == split for part in c.split("/")[:-1]):
                return c
    return None


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    stem, dot, suffix = name.rpartition(".")
    n = 1
    while f"{stem}_{n}{dot}{suffix}" in taken:
        n += 1
    return f"{stem}_{n}{dot}{suffix}"


# -- Pascal VOC ------------------------------------------------------------------------------------


class _VocObject(msgspec.Struct):
    name: str
    box: tuple[float, float, float, float]


def _from_voc(match: FormatMatch, scratch: Path, *, drop_difficult: bool = False) -> Converted:
    root = match.root
    by_name = _image_index(match.files)
    by_stem: dict[str, list[str]] = defaultdict(list)
    for f in match.files:
        if is_image(f):
            by_stem[PurePosixPath(f).stem].append(f)
    set_splits = _voc_image_sets(root)
    parsed: list[tuple[str, str, int, int, list[_VocObject]]] = []
    problems: list[Problem] = []
    for rel in match.annotations:
        try:
            tree = ET.parse(root / rel).getroot()
        except (ET.ParseError, OSError) as exc:
            problems.append(Problem(kind=ProblemKind.BAD_ANNOTATION, message=f"unreadable XML: {exc}", path=rel))
            continue
        image = _find_voc_image(rel, tree.findtext("filename") or "", by_name, by_stem)
        if image is None:
            problems.append(Problem(kind=ProblemKind.MISSING_IMAGE, message=f"{rel} names image "
                                    f"{tree.findtext('filename')!r}, which is not in the dataset", path=rel))
            continue
        width, height = _int(tree.findtext("size/width")), _int(tree.findtext("size/height"))
        if not width or not height:
            try:
                with Image.open(root / image) as im:
                    width, height = im.size
            except OSError:
                width = height = 0
        objects = []
        for obj in tree.iter("object"):
            box = [_float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            name = (obj.findtext("name") or "").strip()
            if not name or None in box or box[2] < box[0] or box[3] < box[1]:
                problems.append(Problem(kind=ProblemKind.BAD_ANNOTATION, message=f"object {name or '?'!r} in {rel} "
                                        "has no valid bndbox", path=image))
                continue
            if drop_difficult and (obj.findtext("difficult") or "").strip() in ("1", "true"):
                continue
            objects.append(_VocObject(name=name, box=tuple(box)))  # type: ignore[arg-type]
        parsed.append((rel, image, width, height, objects))

    classes = sorted({o.name for *_rest, objects in parsed for o in objects})
    index = {c: i for i, c in enumerate(classes)}
    labels_dir = scratch / "voc"
    samples = []
    seen: set[str] = set()
    for rel, image, width, height, objects in parsed:
        stem = PurePosixPath(image).stem
        split = set_splits.get(stem) if set_splits else _split_of_path(rel)
        name = _unique(posixpath.basename(image), seen)
        seen.add(name)
        label = None
        if width and height:
            label = labels_dir / f"{len(samples)}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(f"{index[o.name]} {_voc_to_yolo(o.box, width, height)}\n" for o in objects))
        samples.append(Sample(key=image, image=root / image, name=name, split=split, label=label))
    if set_splits:
        samples = [s for s in samples if s.split]
    if not any(s.split == "val" for s in samples):
        for s in samples:
            s.split = None
    return Converted(task=Task.DETECT, classes=classes, samples=samples, problems=problems)


def voc_box_to_yolo(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, ...]:
    """A VOC box (1-based, inclusive pixel corners) as YOLO (cx, cy, w, h), normalised and clipped."""
    x1, y1 = max(box[0] - 1, 0.0), max(box[1] - 1, 0.0)
    x2, y2 = min(box[2], float(width)), min(box[3], float(height))
    return ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)


def _voc_to_yolo(box: tuple[float, float, float, float], width: int, height: int) -> str:
    return " ".join(f"{v:.6f}" for v in voc_box_to_yolo(box, width, height))


def _voc_image_sets(root: Path) -> dict[str, str]:
    """Image stem -> split from ImageSets/Main/{train,val,test}.txt, when train and val lists exist."""
    main = root / "ImageSets" / "Main"
    if not ((main / "train.txt").is_file() and (main / "val.txt").is_file()):
        return {}
    splits: dict[str, str] = {}
    for split in ("train", "val", "test"):
        path = main / f"{split}.txt"
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").split():
                splits.setdefault(line.strip(), split)
    return splits


def _split_of_path(rel: str) -> str | None:
    for part in rel.split("/")[:-1]:
        if split := split_name(part):
            return split
    return None


def _find_voc_image(xml_rel: str, filename: str, by_name: dict[str, list[str]],
                    by_stem: dict[str, list[str]]) -> str | None:
    xml_dir = posixpath.dirname(xml_rel)
    preferred = [posixpath.normpath(posixpath.join(d, "JPEGImages")) for d in (xml_dir, posixpath.dirname(xml_dir))]
    preferred += [xml_dir, ""]
    base = posixpath.basename(filename.replace("\\", "/"))
    candidates = by_name.get(base, []) if base else []
    if not candidates:
        candidates = by_stem.get(PurePosixPath(xml_rel).stem, [])
    for folder in preferred:
        folder = "" if folder in ("", ".") else folder
        for c in candidates:
            if posixpath.dirname(c) == folder:
                return c
    return candidates[0] if len(candidates) == 1 else None


def _int(text: str | None) -> int:
    try:
        return int(float(text or 0))
    except ValueError:
        return 0


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
