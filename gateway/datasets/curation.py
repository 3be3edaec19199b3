"""A dataset's working copy and its frozen versions, on disk (blocking: call from a worker thread).

    <dataset>/blobs/<sha[:2]>/<sha><ext>      every image once, keyed by its content hash
    <dataset>/manifests/<n>.json             what version n holds: classes and samples with annotations
    <dataset>/versions/<n>/                  version n as Ultralytics trains on it (never written again)
        yolo/images/<split>/<sample id><ext>  hard link to the blob (a copy where links are impossible)
        yolo/labels/<split>/<sample id>.txt
        data.yaml                             (detect, segment, pose, obb)
        classify/<split>/<class>/<sample id><ext>   (classify)

Annotations are kept in pixels, as the API takes them:
`{"class": "cat", "box": [x_min, y_min, x_max, y_max]}` (detect, pose), `"polygon": [[x, y], ...]` (segment:
3 points or more; obb: exactly 4), `"keypoints": [[x, y] or [x, y, visibility], ...]` (pose, as many as the
dataset's `kpt_shape` says); a classify image has at most one annotation, its class.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import yaml
from PIL import Image

from gateway.datasets.errors import DatasetError
from gateway.datasets.layout import read_index
from gateway.datasets.prepare import load_prepared
from gateway.datasets.scan import IMAGE_SUFFIXES, SPLITS
from gateway.datasets.tasks import Task
from shared.dataset_archive import file_sha256

LIST_CAP = 1000
"""Most sample ids a version's `changes` lists per kind (the totals count all)."""


class AnnotationError(DatasetError):
    """Annotations that do not fit the dataset's classes or the image."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


class Annotation(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One object of an image, in pixels."""

    class_: str | int = msgspec.field(name="class")
    """A class name of the dataset, or its index."""
    box: list[float] | None = None
    """`[x_min, y_min, x_max, y_max]` (detect, pose)."""
    polygon: list[list[float]] | None = None
    """`[[x, y], ...]`: 3 points or more (segment), exactly 4 (obb)."""
    keypoints: list[list[float]] | None = None
    """`[[x, y], ...]` or `[[x, y, visibility], ...]` (pose), as many as the dataset's keypoints."""


class SampleRecord(msgspec.Struct, kw_only=True):
    """A sample as versions and the import see it (the database row without its bookkeeping)."""

    id: str
    split: str
    name: str
    sha256: str
    ext: str
    width: int | None
    height: int | None
    annotations: list[dict[str, Any]]
    problems: list[dict[str, Any]] = []


class Manifest(msgspec.Struct, kw_only=True):
    classes: list[str]
    samples: list[SampleRecord]


# -- checking annotations ---------------------------------------------------------------------------------


def check_annotations(raw: list[Any], *, task: str, classes: list[str], width: int | None, height: int | None,
                      kpt_shape: list[int] | None = None, prefix: str = "annotations") -> list[dict[str, Any]]:
    """The annotations as stored (class by name, numbers as floats), or AnnotationError naming every bad
    field (`annotations[0].class`, `annotations[1].box`)."""
    errors: list[dict[str, str]] = []

    def bad(name: str, message: str) -> None:
        errors.append({"field": name, "message": message})

    if not isinstance(raw, list):
        raise AnnotationError([{"field": prefix, "message": "must be a list of annotations"}])
    kind = Task(task)
    if kind is Task.CLASSIFY and len(raw) > 1:
        bad(prefix, "a classify image has one class: give at most one annotation")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        at = f"{prefix}[{i}]"
        try:
            ann = msgspec.convert(item, Annotation)
        except msgspec.ValidationError as exc:
            message = str(exc)
            field = message.rsplit("- at `$", 1)[1].rstrip("`") if "- at `$" in message else ""
            if not field and (unknown := re.search(r"unknown field `([^`]+)`", message)):
                field = "." + unknown.group(1)
            bad(at + field, message.split(" - at ")[0])
            continue
        stored: dict[str, Any] = {}
        cls = ann.class_
        if isinstance(cls, int) and not isinstance(cls, bool):
            if not 0 <= cls < len(classes):
                bad(f"{at}.class", f"no class index {cls}; the dataset has {len(classes)} classes")
            else:
                stored["class"] = classes[cls]
        elif cls not in classes:
            bad(f"{at}.class", f"unknown class {cls!r}; the dataset's classes are {classes} (add it first)")
        else:
            stored["class"] = cls
        allowed = {Task.DETECT: {"box"}, Task.POSE: {"box", "keypoints"}, Task.SEGMENT: {"polygon"},
                   Task.OBB: {"polygon"}, Task.CLASSIFY: set()}[kind]
        for name in ("box", "polygon", "keypoints"):
            value = getattr(ann, name)
            if value is not None and name not in allowed:
                bad(f"{at}.{name}", f"a {kind.value} dataset's annotations have no {name}")
            elif value is None and name in allowed:
                bad(f"{at}.{name}", f"required for a {kind.value} dataset")
        if kind is not Task.CLASSIFY and (width is None or height is None):
            bad(at, "the image cannot be read, so it cannot be annotated")
            continue
        w, h = float(width or 0), float(height or 0)
        if ann.box is not None and "box" in allowed:
            box = ann.box
            if len(box) != 4:
                bad(f"{at}.box", "must be [x_min, y_min, x_max, y_max] in pixels")
            elif not (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h):
                bad(f"{at}.box", f"{box} is not a box inside the {width}x{height} image "
                                 "(0 <= x_min < x_max <= width, 0 <= y_min < y_max <= height)")
            else:
                stored["box"] = [float(v) for v in box]
        if ann.polygon is not None and "polygon" in allowed:
            points = ann.polygon
            if kind is Task.OBB and len(points) != 4:
                bad(f"{at}.polygon", "an oriented box has exactly 4 corner points")
            elif len(points) < 3:
                bad(f"{at}.polygon", "a polygon has at least 3 points")
            elif (j := _first_outside(points, w, h, 2)) is not None:
                bad(f"{at}.polygon[{j}]", f"{points[j]} is not a point [x, y] inside the {width}x{height} image")
            else:
                stored["polygon"] = [[float(p[0]), float(p[1])] for p in points]
        if ann.keypoints is not None and "keypoints" in allowed:
            points = ann.keypoints
            count, dims = (kpt_shape or [len(points), 3])[:2]
            if len(points) != count:
                bad(f"{at}.keypoints", f"the dataset has {count} keypoints per object, got {len(points)}")
            elif (j := _first_outside(points, w, h, dims)) is not None:
                bad(f"{at}.keypoints[{j}]", f"{points[j]} is not a keypoint of {dims} values inside the "
                                            f"{width}x{height} image")
            else:
                stored["keypoints"] = [[float(v) for v in p] for p in points]
        out.append(stored)
    if errors:
        raise AnnotationError(errors)
    return out


def _first_outside(points: list[list[float]], w: float, h: float, dims: int) -> int | None:
    for j, p in enumerate(points):
        if len(p) != dims or not (0 <= p[0] <= w and 0 <= p[1] <= h):
            return j
        if dims == 3 and p[2] not in (0, 1, 2):
            return j
    return None


# -- YOLO label lines -------------------------------------------------------------------------------------


def yolo_lines(annotations: list[dict[str, Any]], classes: list[str], width: int, height: int) -> list[str]:
    """The normalised YOLO label lines of stored annotations."""
    lines = []
    for ann in annotations:
        values: list[float] = []
        if (box := ann.get("box")) is not None:
            values += [(box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height,
                       (box[2] - box[0]) / width, (box[3] - box[1]) / height]
        for p in ann.get("polygon") or []:
            values += [p[0] / width, p[1] / height]
        for p in ann.get("keypoints") or []:
            values += [p[0] / width, p[1] / height, *p[2:]]
        lines.append(" ".join([str(classes.index(ann["class"])), *(f"{v:.6g}" for v in values)]))
    return lines


def parse_yolo_line(values: list[float], task: Task, classes: list[str], width: int, height: int,
                    kpt_shape: list[int] | None) -> dict[str, Any] | None:
    """A stored annotation from a normalised YOLO line, or None when it does not fit."""
    if not values or values[0] != int(values[0]) or not 0 <= values[0] < len(classes):
        return None
    ann: dict[str, Any] = {"class": classes[int(values[0])]}
    rest = values[1:]
    if task in (Task.DETECT, Task.POSE):
        if len(rest) < 4:
            return None
        cx, cy, bw, bh = rest[:4]
        ann["box"] = [_clip((cx - bw / 2) * width, width), _clip((cy - bh / 2) * height, height),
                      _clip((cx + bw / 2) * width, width), _clip((cy + bh / 2) * height, height)]
        if task is Task.POSE:
            dims = (kpt_shape or [0, 3])[1]
            kp = rest[4:]
            if dims not in (2, 3) or len(kp) % dims:
                return None
            ann["keypoints"] = [[_clip(kp[k] * width, width), _clip(kp[k + 1] * height, height), *kp[k + 2:k + dims]]
                                for k in range(0, len(kp), dims)]
        elif len(rest) != 4:
            return None
    else:
        if len(rest) < 6 or len(rest) % 2:
            return None
        ann["polygon"] = [[_clip(rest[k] * width, width), _clip(rest[k + 1] * height, height)]
                          for k in range(0, len(rest), 2)]
    return ann


def _clip(v: float, hi: float) -> float:
    return round(min(max(v, 0.0), float(hi)), 3)


# -- images and blobs -------------------------------------------------------------------------------------


def image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any decoder error means "not an image we can read"
        return None


def image_suffix(filename: str) -> str | None:
    suffix = os.path.splitext(filename)[1].lower()
    return suffix if suffix in IMAGE_SUFFIXES else None


def blob_path(dataset_dir: Path, sha256: str, ext: str) -> Path:
    return dataset_dir / "blobs" / sha256[:2] / f"{sha256}{ext}"


def store_blob(dataset_dir: Path, source: Path, sha256: str, ext: str, *, move: bool = False,
               link: bool = False) -> Path:
    """The blob of an image, stored once: an existing blob is kept; else the file is moved (an upload) or hard
    linked (an image the gateway extracted), copied where neither works."""
    blob = blob_path(dataset_dir, sha256, ext)
    if blob.exists():
        if move:
            source.unlink(missing_ok=True)
        return blob
    blob.parent.mkdir(parents=True, exist_ok=True)
    tmp = blob.with_name(f".{blob.name}.{os.getpid()}.tmp")
    try:
        if move:
            shutil.move(source, tmp)
        elif link:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        else:
            shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o444)
        os.replace(tmp, blob)
    finally:
        tmp.unlink(missing_ok=True)
    return blob


# -- the working copy from a prepared (registered) dataset ------------------------------------------------


def import_prepared(prepared_dir: Path, dataset_dir: Path, new_id: Any, *, link: bool = False) -> Manifest:
    """Every image of a registered dataset's prepared folder as samples (their images stored as blobs), with
    its labels in pixels. Label lines that cannot be read stay out, and the sample keeps its problems.
    `link`: hard link the images into the blob store (an upload's extracted files, which only the gateway
    writes) instead of copying them (a server folder, which its owner may change)."""
    prepared = load_prepared(prepared_dir)
    task = Task(prepared.task)
    problems: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in prepared.report.problems:
        problems[p.path].append(msgspec.to_builtins(p))
    samples: list[SampleRecord] = []
    for split in SPLITS:
        for entry in read_index(prepared_dir, split):
            real = entry.path.resolve()
            if not real.is_file():
                continue
            ext = image_suffix(real.name) or image_suffix(entry.path.name) or ".jpg"
            sha = file_sha256(real)
            store_blob(dataset_dir, real, sha, ext, link=link)
            size = image_size(real)
            width, height = size if size else (None, None)
            annotations: list[dict[str, Any]] = []
            if task is Task.CLASSIFY:
                name = entry.path.relative_to(prepared_dir / "classify" / split).parts[0]
                annotations = [{"class": name}] if name in prepared.classes else []
            elif width and height:
                try:
                    lines = entry.label.read_text(encoding="utf-8").splitlines()
                except (OSError, UnicodeDecodeError):
                    lines = []
                for line in lines:
                    try:
                        values = [float(v) for v in line.split()]
                    except ValueError:
                        continue
                    if (ann := parse_yolo_line(values, task, prepared.classes, width, height,
                                               prepared.kpt_shape)) is not None:
                        annotations.append(ann)
            samples.append(SampleRecord(id=new_id(), split=split, name=entry.path.name, sha256=sha, ext=ext,
                                        width=width, height=height, annotations=annotations,
                                        problems=problems.get(entry.key, [])))
    return Manifest(classes=list(prepared.classes), samples=samples)


def pose_keys(data_yaml: str | Path) -> dict[str, Any]:
    """`kpt_shape` and `flip_idx` of a version's data YAML (empty for other tasks)."""
    try:
        data = yaml.safe_load(Path(data_yaml).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: data[k] for k in ("kpt_shape", "flip_idx") if k in data}


# -- versions ---------------------------------------------------------------------------------------------


def manifest_path(dataset_dir: Path, number: int) -> Path:
    return dataset_dir / "manifests" / f"{number}.json"


def write_manifest(dataset_dir: Path, number: int, manifest: Manifest) -> None:
    path = manifest_path(dataset_dir, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(manifest))
    os.replace(tmp, path)


def read_manifest(dataset_dir: Path, number: int) -> Manifest | None:
    try:
        return msgspec.json.decode(manifest_path(dataset_dir, number).read_bytes(), type=Manifest)
    except (OSError, msgspec.DecodeError):
        return None


def usable(sample: SampleRecord, task: Task) -> bool:
    """Whether a sample goes into a version: a readable image (and, for classify, a class)."""
    if sample.width is None or sample.height is None:
        return False
    return not (task is Task.CLASSIFY and not sample.annotations)


def materialise_version(dataset_dir: Path, number: int, manifest: Manifest, task: str,
                        extra_yaml: dict[str, Any]) -> tuple[Path, Path]:
    """Write version `number` (its folder, then its manifest); returns (folder, what `data=` gets)."""
    kind = Task(task)
    folder = dataset_dir / "versions" / str(number)
    tmp = dataset_dir / "versions" / f".{number}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    samples = [s for s in manifest.samples if usable(s, kind)]
    splits = [s for s in SPLITS if any(x.split == s for x in samples)]
    if "train" not in splits or "val" not in splits:
        raise DatasetError("a version needs train and val images (with a class, for classify)")
    try:
        for s in samples:
            blob = blob_path(dataset_dir, s.sha256, s.ext)
            if kind is Task.CLASSIFY:
                image = tmp / "classify" / s.split / s.annotations[0]["class"] / f"{s.id}{s.ext}"
            else:
                image = tmp / "yolo" / "images" / s.split / f"{s.id}{s.ext}"
            image.parent.mkdir(parents=True, exist_ok=True)
            _link(blob, image)
            if kind is not Task.CLASSIFY:
                label = tmp / "yolo" / "labels" / s.split / f"{s.id}.txt"
                label.parent.mkdir(parents=True, exist_ok=True)
                lines = yolo_lines(s.annotations, manifest.classes, s.width or 1, s.height or 1)
                label.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        if kind is Task.CLASSIFY:
            for split in splits:
                for cls in manifest.classes:
                    (tmp / "classify" / split / cls).mkdir(parents=True, exist_ok=True)
        else:
            data: dict[str, Any] = {"path": str((folder / "yolo").resolve())}
            data.update({split: f"images/{split}" for split in splits})
            data["nc"] = len(manifest.classes)
            data["names"] = dict(enumerate(manifest.classes))
            if kind is Task.POSE:
                data.update(extra_yaml)
            (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                                           encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_manifest(dataset_dir, number, manifest)
    data_path = folder / "classify" if kind is Task.CLASSIFY else folder / "data.yaml"
    return folder, data_path


def _link(blob: Path, dest: Path) -> None:
    try:
        os.link(blob, dest)
    except OSError:
        shutil.copyfile(blob, dest)


def remove_version(dataset_dir: Path, number: int) -> None:
    shutil.rmtree(dataset_dir / "versions" / str(number), ignore_errors=True)
    manifest_path(dataset_dir, number).unlink(missing_ok=True)


def counts_of(manifest: Manifest, task: str) -> dict[str, Any]:
    """Images and instances per split and class (what a version holds)."""
    kind = Task(task)
    splits: dict[str, Any] = {}
    for s in manifest.samples:
        if not usable(s, kind):
            continue
        split = splits.setdefault(s.split, {"images": 0, "instances": 0, "images_without_labels": 0,
                                            "classes": {}})
        split["images"] += 1
        if not s.annotations:
            split["images_without_labels"] += 1
        seen: set[str] = set()
        for ann in s.annotations:
            cls = split["classes"].setdefault(ann["class"], {"images": 0, "instances": 0})
            cls["instances"] += 1
            split["instances"] += 1
            if ann["class"] not in seen:
                cls["images"] += 1
                seen.add(ann["class"])
    return {"images": sum(s["images"] for s in splits.values()),
            "instances": sum(s["instances"] for s in splits.values()), "splits": splits}


def counts_from_report(report: dict[str, Any]) -> dict[str, Any]:
    """The same counts from a registration's inspection report (a version 1 never curated)."""
    splits = {}
    for name, s in (report.get("splits") or {}).items():
        splits[name] = {"images": s.get("images", 0), "instances": s.get("instances", 0),
                        "images_without_labels": s.get("images_without_labels", 0),
                        "classes": {c["name"]: {"images": c.get("images", 0), "instances": c.get("instances", 0)}
                                    for c in s.get("classes", [])}}
    return {"images": report.get("images", 0), "instances": report.get("instances", 0), "splits": splits}


def changes_between(previous: Manifest | None, since: int | None, current: Manifest) -> dict[str, Any]:
    """Samples added, removed, relabelled (other annotations or class names) and moved (other split)."""
    before = {s.id: s for s in (previous.samples if previous else [])}
    after = {s.id: s for s in current.samples}
    prev_classes = previous.classes if previous else []
    added = [i for i in after if i not in before]
    removed = [i for i in before if i not in after]
    relabelled, moved = [], []
    for i, s in after.items():
        old = before.get(i)
        if old is None:
            continue
        if _named(old.annotations) != _named(s.annotations) or old.sha256 != s.sha256:
            relabelled.append(i)
        if old.split != s.split:
            moved.append(i)
    lists = {"added": added, "removed": removed, "relabelled": relabelled, "moved": moved}
    return {"since": since, "totals": {k: len(v) for k, v in lists.items()},
            **{k: v[:LIST_CAP] for k, v in lists.items()},
            "classes_added": [c for c in current.classes if c not in prev_classes],
            "classes_removed": [c for c in prev_classes if c not in current.classes]}


def _named(annotations: list[dict[str, Any]]) -> list[str]:
    return sorted(msgspec.json.encode(a, order="sorted").decode() for a in annotations)
