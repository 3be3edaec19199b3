"""Listing the files of a dataset folder, fast and without leaving it."""

from __future__ import annotations

import os
from pathlib import Path

IMG_FORMATS = frozenset({"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff",
                         "webp"})
"""The image formats Ultralytics trains on (its `ultralytics.data.utils.IMG_FORMATS`; a test keeps them equal)."""
IMAGE_SUFFIXES = frozenset("." + s for s in IMG_FORMATS)

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test"}


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def label_path(image: Path | str) -> Path:
    """The YOLO label file Ultralytics pairs with `image` (its `img2label_paths`: the last `/images/` of the
    path becomes `/labels/`, the suffix `.txt`)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(os.fspath(image).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")


def split_name(name: str) -> str | None:
    """The split a folder or file stem names ('train2017' -> 'train', 'valid' -> 'val'), or None."""
    low = name.lower()
    if low in _SPLIT_ALIASES:
        return _SPLIT_ALIASES[low]
    for prefix in ("train", "val", "test"):
        if low.startswith(prefix) and low[len(prefix):].isdigit():
            return prefix
    return None


def list_files(root: Path, sub: str = "") -> list[str]:
    """Sorted posix paths (relative to `root`) of the regular files under `root/sub`.

    Hidden entries (`.x`, `__MACOSX`) are skipped; symlinks are followed only while they stay inside `root`.
    """
    real_root = root.resolve()
    out: list[str] = []
    seen: set[str] = set()

    def walk(folder: str, rel: str) -> None:
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(".") or entry.name == "__MACOSX":
                continue
            name = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_symlink() and not Path(os.path.realpath(entry.path)).is_relative_to(real_root):
                continue
            try:
                if entry.is_dir():
                    walk(entry.path, name)
                elif entry.is_file():
                    out.append(name)
            except OSError:
                continue

    start = root / sub if sub else root
    if start.is_dir():
        walk(str(start), sub.strip("/"))
    out.sort()
    return out
