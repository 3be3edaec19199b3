"""Recognising a dataset's annotation format from its files."""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import msgspec
import yaml

from gateway.datasets.errors import UnrecognizedFormat
from gateway.datasets.scan import SPLITS, is_image, list_files, split_name

_LABEL_LISTS = ("classes.txt", "obj.names", "classes.names", "labels.txt")


class DatasetFormat(enum.StrEnum):
    YOLO = "yolo"
    """data.yaml, or an images/ + labels/ layout of .txt label files."""
    COCO = "coco"
    """COCO JSON (images, annotations, categories)."""
    VOC = "voc"
    """Pascal VOC XML, one file per image."""
    CLASSIFY = "classify"
    """One folder of images per class, optionally below train/ val/ test/."""


class FormatMatch(msgspec.Struct, frozen=True, kw_only=True):
    format: DatasetFormat
    reason: str
    """Why this format was recognised, for people."""
    root: Path
    """The dataset folder (a lone top-level folder of an archive is stepped into)."""
    files: list[str] = []
    """Relative paths of every file in `root`."""
    annotations: list[str] = []
    """The files that carry the annotations: the data YAML, COCO JSON files or VOC XML files."""


def detect_format(source: Path) -> FormatMatch:
    """Recognise the dataset in `source`; raises `UnrecognizedFormat` saying what was looked for."""
    root = _unwrap(source)
    files = list_files(root)
    if not files:
        raise UnrecognizedFormat("the dataset folder is empty")
    for detector in (_yolo_yaml, _coco, _voc, _yolo_layout, _classify):
        if found := detector(root, files):
            fmt, reason, annotations = found
            return FormatMatch(format=fmt, reason=reason, root=root, files=files, annotations=annotations)
    images = sum(1 for f in files if is_image(f))
    raise UnrecognizedFormat(
        f"no known dataset format in {len(files)} files ({images} images): expected a YOLO data.yaml or "
        "images/ + labels/ folders, a COCO JSON file (images, annotations, categories), Pascal VOC XML files, "
        "or one folder of images per class (at least two classes)"
    )


def _unwrap(folder: Path) -> Path:
    """Step into a lone top-level folder, as archives often have one."""
    while True:
        entries = [e for e in folder.iterdir() if not e.name.startswith(".") and e.name != "__MACOSX"]
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].is_symlink():
            return folder
        if split_name(entries[0].name) or entries[0].name in ("images", "labels"):
            return folder
        folder = entries[0]


def _depth(rel: str) -> int:
    return rel.count("/")


def read_data_yaml(path: Path) -> dict | None:
    """The YAML mapping at `path` if it looks like a YOLO data YAML (names or nc, and train)."""
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if isinstance(data, dict) and "train" in data and ("names" in data or "nc" in data):
        return data
    return None


def _yolo_yaml(root: Path, files: list[str]):
    candidates = [f for f in files if _depth(f) <= 1 and f.lower().endswith((".yaml", ".yml"))]
    candidates.sort(key=lambda f: (_depth(f), PurePosixPath(f).name != "data.yaml", f))
    for rel in candidates:
        if read_data_yaml(root / rel) is not None:
            return DatasetFormat.YOLO, f"YOLO data YAML {rel}", [rel]
    return None


class _CocoHead(msgspec.Struct):
    images: list[dict]
    annotations: list[dict]
    categories: list[dict]


def read_coco(path: Path) -> _CocoHead | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=_CocoHead)
    except (OSError, msgspec.DecodeError):
        return None


def _coco(root: Path, files: list[str]):
    found = [f for f in files if _depth(f) <= 2 and f.lower().endswith(".json") and _looks_like_coco(root / f)]
    if found:
        return DatasetFormat.COCO, f"COCO JSON {', '.join(found)}", found
    return None


def _looks_like_coco(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(1 << 16)
    if not head.lstrip().startswith(b"{") or b'"categories"' not in head and b'"images"' not in head:
        # Big COCO files put "images" near the top; tiny ones have everything in the first 64 KiB.
        return False
    return read_coco(path) is not None


def _voc(root: Path, files: list[str]):
    xmls = [f for f in files if f.lower().endswith(".xml")]
    voc = [f for f in xmls if _is_voc(root / f)]
    if voc:
        return DatasetFormat.VOC, f"Pascal VOC XML ({len(voc)} annotation files)", voc
    return None


def _is_voc(path: Path) -> bool:
    try:
        for _event, elem in ET.iterparse(path, events=("start",)):
            return elem.tag == "annotation"
    except (ET.ParseError, OSError):
        return False
    return False


def _yolo_layout(root: Path, files: list[str]):
    top = {f.split("/", 1)[0] for f in files if "/" in f}
    labels = [f for f in files if f.endswith(".txt") and "/labels/" in f"/{f}" and f.split("/")[-1] not in _LABEL_LISTS]
    if not labels:
        return None
    names_yaml = names_yaml_of(root)
    what = f"class names from {names_yaml[0]}" if names_yaml else "no data YAML"
    if {"images", "labels"} <= top:
        return DatasetFormat.YOLO, f"YOLO layout images/ + labels/ ({what})", []
    split_dirs = sorted(d for d in top if split_name(d))
    if split_dirs and any(f.startswith(f"{d}/images/") for d in split_dirs for f in files):
        return DatasetFormat.YOLO, f"YOLO layout {'/, '.join(split_dirs)}/ with images/ + labels/ ({what})", []
    return None


def _classify(root: Path, files: list[str]):
    images = [f for f in files if is_image(f)]
    if not images:
        return None
    parts = [f.split("/") for f in images]
    if all(len(p) >= 3 and split_name(p[0]) for p in parts):
        classes = {p[1] for p in parts}
        splits = sorted({split_name(p[0]) for p in parts}, key=SPLITS.index)
        if len(classes) >= 2:
            return DatasetFormat.CLASSIFY, f"classification folders below {', '.join(splits)}, {len(classes)} classes", []
    if all(len(p) >= 2 for p in parts):
        classes = {p[0] for p in parts}
        if len(classes) >= 2 and not any(split_name(c) for c in classes) and "images" not in classes:
            return DatasetFormat.CLASSIFY, f"classification folders, {len(classes)} classes", []
    return None


def names_yaml_of(root: Path) -> tuple[str, list[str]] | None:
    """(file name, class names) of a YAML at the top of `root` that only names the classes (a data YAML
    without `train`, as a flat YOLO export often carries: `names: [cat, dog]` or `names: {0: cat}`)."""
    candidates = sorted((p for p in root.iterdir() if p.suffix.lower() in (".yaml", ".yml") and p.is_file()
                         and not p.is_symlink()), key=lambda p: (p.name != "data.yaml", p.name))
    for path in candidates:
        try:
            with path.open(encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            try:
                names = [names[k] for k in sorted(names, key=int)]
            except (TypeError, ValueError):
                continue
        if isinstance(names, list) and names and all(isinstance(n, str | int) for n in names):
            return path.name, [str(n) for n in names]
    return None


def label_list_names(root: Path) -> list[str] | None:
    """Class names next to a YOLO layout, if any: a YAML with only `names` (`names_yaml_of`), else a
    classes.txt / obj.names file (one per line)."""
    if found := names_yaml_of(root):
        return found[1]
    for folder in (root, root / "labels"):
        for name in _LABEL_LISTS:
            path = folder / name
            if path.is_file():
                lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
                names = [ln for ln in lines if ln]
                if names:
                    return names
    return None

