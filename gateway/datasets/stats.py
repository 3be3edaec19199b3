"""Statistics of a prepared dataset, for people deciding whether it is fit to train on.

    stats = compute_stats(prepared_root, classes, task)

Images and instances per split and class, class balance, histograms of box width, height, area and aspect
ratio (normalised to the image and in pixels), boxes per image, image sizes, duplicate images (the same
bytes, by SHA-256; the same image in train and val is a leak that inflates validation metrics), boxes that
are nearly empty or tiny, and images without labels.

Pure and blocking (PIL reads only an image's header for its size; every file is read once for its hash):
call it from a worker thread. No torch, no Ultralytics.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from pathlib import Path

import msgspec
from PIL import Image

from gateway.datasets.layout import Entry, read_index
from gateway.datasets.scan import SPLITS
from shared.dataset_archive import file_sha256

TINY_BOX_PX = 4.0
"""A box narrower or lower than this many pixels is tiny (too small for any YOLO stride to learn)."""
NEAR_EMPTY_AREA = 1e-4
"""A box covering less than this fraction of its image (0.01 %) is nearly empty."""
MAX_LISTED = 100
"""At most this many duplicate groups and tiny boxes are listed (all are counted)."""
NORMALISED_EDGES = [i / 10 for i in range(11)]
PIXEL_EDGES = [0, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, math.inf]
AREA_NORMALISED_EDGES = [0, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0]
AREA_PIXEL_EDGES = [0, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, math.inf]
ASPECT_EDGES = [0, 0.25, 0.5, 0.75, 1.0, 1.333, 2.0, 4.0, math.inf]
"""Aspect ratio is width / height."""
BOXES_PER_IMAGE_EDGES = [0, 1, 2, 3, 5, 10, 20, 50, 100, math.inf]


class Histogram(msgspec.Struct, kw_only=True):
    """`counts[i]` values fell in `[edges[i], edges[i+1])` (the last bin also holds its upper edge; `null`
    as the last edge is unbounded)."""

    edges: list[float | None]
    counts: list[int]


class SplitCounts(msgspec.Struct, kw_only=True):
    images: int = 0
    instances: int = 0
    images_without_labels: int = 0
    per_class: dict[str, int] = {}
    """Instances per class name (for classify: images per class)."""
    images_per_class: dict[str, int] = {}
    """Images with at least one instance of the class."""


class ClassBalance(msgspec.Struct, kw_only=True):
    name: str
    instances: int
    share: float
    """Of all instances."""
    images: int


class BoxHistograms(msgspec.Struct, kw_only=True):
    width: Histogram
    height: Histogram
    area: Histogram
    aspect_ratio: Histogram


class Duplicate(msgspec.Struct, kw_only=True):
    sha256: str
    images: list[str]
    """`split/path` of each copy, in the prepared layout."""
    splits: list[str]
    leak: bool
    """The same image is in more than one split."""


class SmallBox(msgspec.Struct, kw_only=True):
    image: str
    line: int
    """1-based line of the label file."""
    class_name: str
    width_px: float
    height_px: float
    area: float
    """Fraction of the image."""


class ImageSizes(msgspec.Struct, kw_only=True):
    min_width: int
    max_width: int
    min_height: int
    max_height: int
    most_common: list[list[int]]
    """Up to ten `[width, height, images]`, most frequent first."""
    unreadable: int


class DatasetStats(msgspec.Struct, kw_only=True):
    task: str
    classes: list[str]
    images: int
    instances: int
    splits: dict[str, SplitCounts]
    class_balance: list[ClassBalance]
    imbalance_ratio: float | None
    """Instances of the most frequent class over those of the rarest one present (None: no instances)."""
    boxes_normalised: BoxHistograms | None
    """Box sizes as fractions of their image (detection family only)."""
    boxes_pixels: BoxHistograms | None
    boxes_per_image: Histogram
    image_sizes: ImageSizes
    images_without_labels: int
    duplicates: list[Duplicate]
    duplicate_groups: int
    leaks: int
    """Images present in more than one split (groups of identical bytes that span splits)."""
    leaks_by_splits: dict[str, int]
    """`train/val`: how many duplicate groups span exactly those splits."""
    tiny_boxes: list[SmallBox]
    tiny_boxes_total: int
    near_empty_boxes_total: int
    tiny_box_px: float = TINY_BOX_PX
    near_empty_area: float = NEAR_EMPTY_AREA


def histogram(values: list[float], edges: list[float]) -> Histogram:
    counts = [0] * (len(edges) - 1)
    for v in values:
        counts[min(max(bisect.bisect_right(edges, v) - 1, 0), len(counts) - 1)] += 1
    return Histogram(edges=[None if math.isinf(e) else e for e in edges], counts=counts)


def _sha256(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def _size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:  # the header only: no pixels are decoded
            return im.size
    except Exception:  # noqa: BLE001 - PIL raises many types for damaged files
        return None


def _boxes(label: Path, task: str) -> list[tuple[int, int, float, float]]:
    """(line, class id, w, h) normalised, of each usable label line; a polygon's or OBB's enclosing box."""
    try:
        text = label.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            continue
        if values[0] != int(values[0]):
            continue
        if task in ("segment", "obb") and len(values) >= 7:
            xs, ys = values[1::2], values[2::2]
            rows.append((n, int(values[0]), max(xs) - min(xs), max(ys) - min(ys)))
        elif len(values) >= 5:
            rows.append((n, int(values[0]), values[3], values[4]))
    return rows


def entries_of(root: Path, split: str) -> list[Entry]:
    """The images of a split: the prepared layout's index (`index/<split>.txt`) where there is one, else the
    files below `yolo/images/<split>/` (or `classify/<split>/<class>/`), sorted, as a frozen dataset version
    lays them out."""
    if (root / "index" / f"{split}.txt").is_file():
        return read_index(root, split)
    for pattern in (f"yolo/images/{split}/*", f"classify/{split}/*/*"):
        files = sorted(p for p in root.glob(pattern) if p.is_file())
        if files:
            return [Entry(p, p.relative_to(root).as_posix()) for p in files]
    return []


def compute_stats(root: Path, classes: list[str], task: str) -> DatasetStats:
    """The statistics of the prepared dataset (or frozen dataset version) at `root`: `PreparedDataset.root`."""
    name_of = {i: c for i, c in enumerate(classes)}
    splits: dict[str, SplitCounts] = {}
    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)
    sizes: Counter[tuple[int, int]] = Counter()
    unreadable = 0
    totals: Counter[str] = Counter()
    images_with: Counter[str] = Counter()
    widths_n: list[float] = []
    heights_n: list[float] = []
    areas_n: list[float] = []
    widths_px: list[float] = []
    heights_px: list[float] = []
    areas_px: list[float] = []
    aspects: list[float] = []
    per_image: list[float] = []
    tiny: list[SmallBox] = []
    tiny_total = near_empty_total = 0
    detection = task != "classify"
    for split in SPLITS:
        entries = entries_of(root, split)
        if not entries:
            continue
        counts = SplitCounts(per_class={}, images_per_class={})
        splits[split] = counts
        for entry in entries:
            shown = entry.path.relative_to(root).as_posix()
            counts.images += 1
            if digest := _sha256(entry.path):
                by_hash[digest].append((split, shown))
            size = _size(entry.path)
            if size is None:
                unreadable += 1
            else:
                sizes[size] += 1
            if not detection:
                cls = entry.path.parent.name
                counts.per_class[cls] = counts.per_class.get(cls, 0) + 1
                counts.images_per_class[cls] = counts.per_class[cls]
                counts.instances += 1
                totals[cls] += 1
                images_with[cls] += 1
                continue
            boxes = _boxes(entry.label, task)
            per_image.append(len(boxes))
            if not boxes:
                counts.images_without_labels += 1
            seen: set[str] = set()
            for line, cls_id, w, h in boxes:
                cls = name_of.get(cls_id, str(cls_id))
                counts.instances += 1
                counts.per_class[cls] = counts.per_class.get(cls, 0) + 1
                totals[cls] += 1
                seen.add(cls)
                widths_n.append(w)
                heights_n.append(h)
                areas_n.append(w * h)
                aspects.append(w / h if h > 0 else math.inf)
                if size is not None:
                    wp, hp = w * size[0], h * size[1]
                    widths_px.append(wp)
                    heights_px.append(hp)
                    areas_px.append(wp * hp)
                    if wp < TINY_BOX_PX or hp < TINY_BOX_PX:
                        tiny_total += 1
                        if len(tiny) < MAX_LISTED:
                            tiny.append(SmallBox(image=shown, line=line, class_name=cls, width_px=round(wp, 3),
                                                 height_px=round(hp, 3), area=w * h))
                if w * h < NEAR_EMPTY_AREA:
                    near_empty_total += 1
            for cls in seen:
                counts.images_per_class[cls] = counts.images_per_class.get(cls, 0) + 1
                images_with[cls] += 1
    instances = sum(totals.values())
    balance = [ClassBalance(name=c, instances=totals.get(c, 0), share=round(totals.get(c, 0) / instances, 6)
                            if instances else 0.0, images=images_with.get(c, 0)) for c in classes]
    present = [b.instances for b in balance if b.instances]
    duplicates: list[Duplicate] = []
    groups = leaks = 0
    leaks_by: Counter[str] = Counter()
    for digest, copies in sorted(by_hash.items(), key=lambda kv: kv[1][0][1]):
        if len(copies) < 2:
            continue
        groups += 1
        in_splits = sorted({s for s, _ in copies}, key=SPLITS.index)
        leak = len(in_splits) > 1
        if leak:
            leaks += 1
            leaks_by["/".join(in_splits)] += 1
        if len(duplicates) < MAX_LISTED:
            duplicates.append(Duplicate(sha256=digest, images=[p for _, p in copies], splits=in_splits, leak=leak))
    duplicates.sort(key=lambda d: (not d.leak, d.images[0]))
    w_all = [w for w, _ in sizes.elements()] if sizes else []
    h_all = [h for _, h in sizes.elements()] if sizes else []
    image_sizes = ImageSizes(
        min_width=min(w_all, default=0), max_width=max(w_all, default=0), min_height=min(h_all, default=0),
        max_height=max(h_all, default=0), most_common=[[w, h, n] for (w, h), n in sizes.most_common(10)],
        unreadable=unreadable)
    return DatasetStats(
        task=task, classes=list(classes), images=sum(s.images for s in splits.values()), instances=instances,
        splits=splits, class_balance=balance,
        imbalance_ratio=round(max(present) / min(present), 6) if present else None,
        boxes_normalised=BoxHistograms(
            width=histogram(widths_n, NORMALISED_EDGES), height=histogram(heights_n, NORMALISED_EDGES),
            area=histogram(areas_n, AREA_NORMALISED_EDGES), aspect_ratio=histogram(aspects, ASPECT_EDGES),
        ) if detection else None,
        boxes_pixels=BoxHistograms(
            width=histogram(widths_px, PIXEL_EDGES), height=histogram(heights_px, PIXEL_EDGES),
            area=histogram(areas_px, AREA_PIXEL_EDGES), aspect_ratio=histogram(aspects, ASPECT_EDGES),
        ) if detection else None,
        boxes_per_image=histogram(per_image, BOXES_PER_IMAGE_EDGES),
        image_sizes=image_sizes,
        images_without_labels=sum(s.images_without_labels for s in splits.values()),
        duplicates=duplicates, duplicate_groups=groups, leaks=leaks, leaks_by_splits=dict(leaks_by),
        tiny_boxes=tiny, tiny_boxes_total=tiny_total, near_empty_boxes_total=near_empty_total,
    )
