"""COCO annotations to YOLO label files, in plain Python: the same rows Ultralytics' `convert_coco` writes
(`cls91to80=False`, polygon segments; multi-part polygons joined at their closest points like its
`merge_multi_segment`), without importing Ultralytics (and torch) into the gateway.

Input is what `convert._from_coco` cleaned: 0-based image ids, 1-based category ids, polygon lists only.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

Point = tuple[float, float]


def write_labels(images: list[dict[str, Any]], annotations: list[dict[str, Any]], folder: Path, *,
                 use_segments: bool, use_keypoints: bool) -> None:
    """One `<file_name>.txt` under `folder` per image that has annotations (empty when all are crowds)."""
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in annotations:
        by_image[ann["image_id"]].append(ann)
    for image_id, anns in by_image.items():
        img = images[image_id]
        rows = _rows(anns, float(img["width"]), float(img["height"]), use_segments, use_keypoints)
        label = (folder / img["file_name"]).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        with label.open("a", encoding="utf-8") as fh:
            fh.writelines(("%g " * len(row)).rstrip() % row + "\n" for row in dict.fromkeys(map(tuple, rows)))


def _rows(anns: list[dict[str, Any]], w: float, h: float, use_segments: bool,
          use_keypoints: bool) -> list[list[float]]:
    bboxes: list[list[float]] = []
    segments: list[list[float]] = []
    keypoints: list[list[float]] = []
    for ann in anns:
        if ann.get("iscrowd", False):
            continue
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        box = [(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h]
        if box[2] <= 0 or box[3] <= 0:
            continue
        row = [ann["category_id"] - 1, *box]
        if use_keypoints:
            kpts = ann.get("keypoints") or []
            if not any(kpts[2::3]):  # no labeled keypoint: COCO's evaluation ignores it
                continue
            scale = (w, h, 1.0)
            keypoints.append(row + [v / scale[i % 3] for i, v in enumerate(kpts[: len(kpts) // 3 * 3])])
        bboxes.append(row)
        if use_segments:
            polygons = ann.get("segmentation") or []
            if not polygons:
                cx, cy, sw, sh = box
                x1, y1, x2, y2 = cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2
                segments.append([row[0], x1, y1, x2, y1, x2, y2, x1, y2])
                continue
            points = (merge_multi_segment(polygons) if len(polygons) > 1
                      else _points([c for p in polygons for c in p]))
            segments.append([row[0], *(v for px, py in points for v in (px / w, py / h))])
    return keypoints if use_keypoints else segments if use_segments else bboxes


def _points(flat: list[float]) -> list[Point]:
    return [(float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]


def _closest(a: list[Point], b: list[Point]) -> tuple[int, int]:
    """The first pair (i, j), in row-major order, of the points of `a` and `b` closest to each other."""
    best, pair = None, (0, 0)
    for i, (ax, ay) in enumerate(a):
        for j, (bx, by) in enumerate(b):
            d = (ax - bx) ** 2 + (ay - by) ** 2
            if best is None or d < best:
                best, pair = d, (i, j)
    return pair


def merge_multi_segment(polygons: list[list[float]]) -> list[Point]:
    """The polygons as one outline, each joined to the next at their closest points (a thin seam)."""
    segments = [_points(p) for p in polygons]
    idx_list: list[list[int]] = [[] for _ in segments]
    for i in range(1, len(segments)):
        i1, i2 = _closest(segments[i - 1], segments[i])
        idx_list[i - 1].append(i1)
        idx_list[i].append(i2)
    out: list[Point] = []
    last = len(idx_list) - 1
    for i, idx in enumerate(idx_list):  # forward
        if len(idx) == 2 and idx[0] > idx[1]:
            idx = [len(segments[i]) - 1 - x for x in idx]
            segments[i] = segments[i][::-1]
        k = idx[0] % len(segments[i])
        segments[i] = segments[i][k:] + segments[i][:k]
        segments[i] = segments[i] + segments[i][:1]
        if i in (0, last):
            out.extend(segments[i])
        else:
            out.extend(segments[i][0: idx[1] - idx[0] + 1])
    for i in range(last, -1, -1):  # backward
        if i not in (0, last):
            idx = idx_list[i]
            out.extend(segments[i][abs(idx[1] - idx[0]):])
    return out
