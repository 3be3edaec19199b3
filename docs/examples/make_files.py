"""Write the files the walkthroughs in README.md and docs/*.md use, into the current folder (or the one given):

    rects.zip          a YOLO detection dataset without splits (images/, labels/, classes.txt): coloured
                       rectangles on grey, classes red and green; the docs split it with `ratios`
    data/rects-folder/ the same kind of dataset as a folder, to register by path (TRAINFORGE_DATA_ROOTS=./data)
    my-net.yaml        a small custom detection architecture (Ultralytics YAML)
    bus.jpg            a photo to predict on (the one Ultralytics ships)

    python docs/examples/make_files.py [FOLDER]

Deterministic, a few hundred KB, under a second. Needs only Pillow (installed with Ultralytics).
"""

from __future__ import annotations

import random
import shutil
import sys
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ("red", "green")
COLOURS = ((230, 40, 40), (40, 200, 60))
IMGSZ = 128

MY_NET = """\
# A small detector: five strided convolutions, detecting at strides 8, 16 and 32.
nc: 2
backbone:
  - [-1, 1, Conv, [16, 3, 2]]  # 0: 1/2
  - [-1, 1, Conv, [32, 3, 2]]  # 1: 1/4
  - [-1, 1, Conv, [32, 3, 2]]  # 2: 1/8
  - [-1, 1, Conv, [64, 3, 2]]  # 3: 1/16
  - [-1, 1, Conv, [64, 3, 2]]  # 4: 1/32
head:
  - [[2, 3, 4], 1, Detect, [nc]]
"""


def write_rects(root: Path, count: int, seed: int) -> None:
    """images/NNNN.jpg with labels/NNNN.txt (YOLO boxes) and classes.txt."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        grey = rng.randint(90, 160)
        image = Image.new("RGB", (IMGSZ, IMGSZ), (grey, grey, grey))
        draw = ImageDraw.Draw(image)
        lines = []
        for _ in range(rng.randint(1, 3)):
            cls = rng.randrange(len(CLASSES))
            w, h = rng.randint(IMGSZ // 6, IMGSZ // 2), rng.randint(IMGSZ // 6, IMGSZ // 2)
            x0, y0 = rng.randint(0, IMGSZ - w - 1), rng.randint(0, IMGSZ - h - 1)
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=COLOURS[cls])
            lines.append(f"{cls} {(x0 + w / 2) / IMGSZ:.6f} {(y0 + h / 2) / IMGSZ:.6f} {w / IMGSZ:.6f} {h / IMGSZ:.6f}")
        image.save(root / "images" / f"{i:04d}.jpg", quality=90)
        (root / "labels" / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")


def bus_photo() -> Path | None:
    try:
        import ultralytics
    except ImportError:
        return None
    path = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
    return path if path.exists() else None


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / "rects"
    shutil.rmtree(staging, ignore_errors=True)
    write_rects(staging, count=40, seed=0)
    with zipfile.ZipFile(folder / "rects.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder))
    shutil.rmtree(staging)
    target = folder / "data" / "rects-folder"
    shutil.rmtree(target, ignore_errors=True)
    write_rects(target, count=20, seed=1)
    (folder / "my-net.yaml").write_text(MY_NET)
    if (photo := bus_photo()) is not None:
        shutil.copyfile(photo, folder / "bus.jpg")
    else:
        Image.new("RGB", (640, 480), (120, 140, 160)).save(folder / "bus.jpg")
    print(f"wrote {folder / 'rects.zip'}, {target}/, {folder / 'my-net.yaml'}, {folder / 'bus.jpg'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
