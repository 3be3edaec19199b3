"""Dataset statistics and the augmentation preview over the real app (NATS + Postgres), the preview made by
a real runner's YOLO service with Ultralytics' own training transforms."""

from __future__ import annotations

import base64
import io
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from shared.settings import Settings
from tests.dataset_factories import CLASSES, make_yolo_yaml, scene
from tests.integration.rest_helpers import api, problem, yolo_runner_online
from tests.library_support import sql

OFF = {k: 0.0 for k in ("mosaic", "mixup", "cutmix", "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale",
                        "shear", "perspective", "flipud", "fliplr", "copy_paste", "erasing")}


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """shapes: 6 train / 3 val images of the factories; img0 copied into val (a leak), an image without
    labels in train, and a box under 1 px added to img1's labels (tiny)."""
    root = tmp_path / "data"
    make_yolo_yaml(root / "shapes", n_train=6, n_val=3)
    shapes = root / "shapes"
    shutil.copy(shapes / "images/train/img0.jpg", shapes / "images/val/leaked.jpg")
    shutil.copy(shapes / "labels/train/img0.txt", shapes / "labels/val/leaked.txt")
    Image.new("RGB", (80, 60), (9, 9, 9)).save(shapes / "images/train/empty.jpg")
    with (shapes / "labels/train/img1.txt").open("a") as fh:
        fh.write("0 0.5 0.5 0.005 0.005\n")
    return root


@pytest.fixture
async def client(settings: Settings, data_root: Path) -> AsyncIterator[AsyncTestClient]:
    async with api(msgspec.structs.replace(settings, data_roots=[data_root])) as c:
        registered = await c.post("/api/v1/datasets", json={"name": "shapes", "path": str(data_root / "shapes")})
        assert registered.status_code == 201, registered.text
        yield c


def _expected(data_root: Path) -> dict:
    """What the stats must say, counted from the files (not from the gateway)."""
    shapes = data_root / "shapes"
    per_split: dict[str, Counter] = {}
    images: dict[str, int] = {}
    without = Counter()
    sizes = Counter()
    for split in ("train", "val"):
        counts: Counter = Counter()
        files = sorted((shapes / "images" / split).iterdir())
        images[split] = len(files)
        for image in files:
            with Image.open(image) as im:
                sizes[im.size] += 1
            label = shapes / "labels" / split / f"{image.stem}.txt"
            lines = label.read_text().split("\n") if label.exists() else []
            rows = [line.split() for line in lines if line.strip()]
            if not rows:
                without[split] += 1
            for row in rows:
                counts[CLASSES[int(row[0])]] += 1
        per_split[split] = counts
    return {"images": images, "per_split": per_split, "without": without, "sizes": sizes}


async def test_stats_of_a_generated_dataset_match_its_files_and_report_the_leak(
    client: AsyncTestClient, data_root: Path, settings: Settings
) -> None:
    response = await client.get("/api/v1/datasets/shapes/stats")
    assert response.status_code == 200, response.text
    stats = response.json()
    want = _expected(data_root)
    assert stats["version"] == 1 and stats["task"] == "detect" and stats["classes"] == CLASSES
    for split in ("train", "val"):
        got = stats["splits"][split]
        assert got["images"] == want["images"][split], split
        assert got["per_class"] == dict(want["per_split"][split]), split
        assert got["instances"] == sum(want["per_split"][split].values())
        assert got["images_without_labels"] == want["without"][split]
    total = sum((want["per_split"]["train"] + want["per_split"]["val"]).values())
    assert stats["instances"] == total and stats["images"] == sum(want["images"].values())
    assert {b["name"]: b["instances"] for b in stats["class_balance"]} == dict(
        want["per_split"]["train"] + want["per_split"]["val"])
    assert sum(b["share"] for b in stats["class_balance"]) == pytest.approx(1.0, abs=1e-5)
    assert stats["images_without_labels"] == 1
    assert sum(stats["boxes_per_image"]["counts"]) == stats["images"]
    for family in ("boxes_normalised", "boxes_pixels"):
        for histogram in stats[family].values():
            assert sum(histogram["counts"]) == total and len(histogram["edges"]) == len(histogram["counts"]) + 1
    assert stats["image_sizes"]["most_common"][0][2] == want["sizes"].most_common(1)[0][1]
    assert stats["image_sizes"]["max_width"] == max(w for w, _ in want["sizes"])

    assert stats["leaks"] == 1 and stats["duplicate_groups"] == 1 and stats["leaks_by_splits"] == {"train/val": 1}
    leak = stats["duplicates"][0]
    assert leak["leak"] and leak["splits"] == ["train", "val"]
    assert sorted(Path(p).name for p in leak["images"]) == ["img0.jpg", "leaked.jpg"]

    width, height, _ = scene(1)
    tiny = [b for b in stats["tiny_boxes"] if b["image"].endswith("img1.jpg")]
    assert len(tiny) == 1 and tiny[0]["width_px"] == pytest.approx(0.005 * width, abs=0.01)
    assert tiny[0]["class_name"] == "cat" and tiny[0]["line"] == len(scene(1)[2]) + 1
    assert stats["tiny_boxes_total"] >= 1 and stats["near_empty_boxes_total"] >= 1

    # kept: a second request reads the same row (the kept JSON is answered even if the files changed)
    await sql(settings, "update dataset_stats set stats = jsonb_set(stats, '{images}', '999')")
    again = (await client.get("/api/v1/datasets/shapes/stats?version=1")).json()
    assert again["images"] == 999 and again["computed_at"] == stats["computed_at"]
    problem(await client.get("/api/v1/datasets/shapes/stats?version=2"), 404)
    problem(await client.get("/api/v1/datasets/shapes/stats?version=0"), 400)
    problem(await client.get("/api/v1/datasets/nope/stats"), 404)


async def test_bad_augmentation_settings_are_a_422_naming_the_field_before_any_runner(
    client: AsyncTestClient,
) -> None:
    for body, field in (({"fliplr": 2.0}, "fliplr"), ({"hsv_h": -0.1}, "hsv_h"), ({"imgsz": 100}, "imgsz"),
                        ({"imgsz": 4096}, "imgsz"), ({"count": 0}, "count"), ({"count": 17}, "count"),
                        ({"count": 16, "imgsz": 640}, "count"), ({"degrees": "a lot"}, "degrees")):
        error = problem(await client.post("/api/v1/datasets/shapes/augment", json=body), 422)
        assert field in error["errors"][0]["field"], (body, error)
    typo = problem(await client.post("/api/v1/datasets/shapes/augment", json={"mosiac": 1.0}), 422)
    assert "mosiac" in typo["errors"][0]["message"], typo
    problem(await client.post("/api/v1/datasets/nope/augment", json={}), 404)
    refused = problem(await client.post("/api/v1/datasets/shapes/augment", json={"count": 1, "imgsz": 64}), 503)
    assert "no runner with Ultralytics is online" in refused["detail"]


@pytest.mark.slow  # the first preview starts the preview process (imports torch and Ultralytics): ~15 s here
async def test_augmentation_previews_are_deterministic_and_a_horizontal_flip_mirrors_the_boxes(
    client: AsyncTestClient, settings: Settings
) -> None:
    async with yolo_runner_online(settings):
        body = {"count": 3, "imgsz": 64, "seed": 11}
        first = await client.post("/api/v1/datasets/shapes/augment", json=body)
        assert first.status_code == 200, first.text
        again = await client.post("/api/v1/datasets/shapes/augment", json=body)
        assert again.status_code == 200, again.text
        preview = first.json()
        assert preview == again.json()  # the same images, byte for byte, and the same boxes
        assert preview["settings"]["mosaic"] == 1.0 and preview["settings"]["fliplr"] == 0.5  # Ultralytics' defaults
        assert len(preview["images"]) == 3 and preview["train_images"] == 7
        for item in preview["images"]:
            with Image.open(io.BytesIO(base64.b64decode(item["image"]))) as im:
                assert im.format == "JPEG" and im.size == (item["width"], item["height"]) == (64, 64)
            assert item["source"].startswith("images/train/")

        plain = await client.post("/api/v1/datasets/shapes/augment", json={**OFF, "count": 4, "imgsz": 64, "seed": 5})
        flipped = await client.post("/api/v1/datasets/shapes/augment",
                                    json={**OFF, "fliplr": 1.0, "count": 4, "imgsz": 64, "seed": 5})
        assert plain.status_code == flipped.status_code == 200, (plain.text, flipped.text)
        pairs = list(zip(plain.json()["images"], flipped.json()["images"], strict=True))
        assert sum(len(a["boxes"]) for a, _ in pairs) > 0
        for a, b in pairs:
            assert a["index"] == b["index"] and len(a["boxes"]) == len(b["boxes"])
            for box, mirrored in zip(a["boxes"], b["boxes"], strict=True):
                assert mirrored["class_id"] == box["class_id"]
                assert mirrored["cx"] == pytest.approx(1 - box["cx"], abs=1e-5)
                assert (mirrored["cy"], mirrored["w"], mirrored["h"]) == pytest.approx(
                    (box["cy"], box["w"], box["h"]), abs=1e-5)
                assert mirrored["x1"] == pytest.approx(64 - box["x2"], abs=0.02)
