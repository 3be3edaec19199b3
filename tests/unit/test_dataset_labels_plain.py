"""The gateway's dataset helpers match Ultralytics without importing it: the image formats, the label path of
an image, and the YOLO labels written from COCO annotations (boxes, polygons joined from several parts,
keypoints), compared here with Ultralytics' own `convert_coco` on the same annotations."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from gateway.datasets.coco_labels import write_labels
from gateway.datasets.scan import IMG_FORMATS, label_path


@pytest.fixture(scope="module")
def ultralytics_data(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from runner.yolo.offline import prepare_ultralytics

    prepare_ultralytics(tmp_path_factory.mktemp("state"))
    from ultralytics.data import converter, utils

    return converter, utils


def test_image_formats_and_label_paths_are_those_of_ultralytics(ultralytics_data) -> None:  # noqa: ANN001
    _, utils = ultralytics_data
    assert IMG_FORMATS == frozenset(utils.IMG_FORMATS)
    for image in ("/d/images/train/a.jpg", "/d/images/x/images/b.png", "/d/train/c.jpeg", "rel/images/d.e.jpg"):
        assert str(label_path(image)) == utils.img2label_paths([image])[0]


def _annotations(rng: random.Random, task: str) -> tuple[list[dict], list[dict]]:
    images = [{"id": i, "file_name": f"im{i}.jpg", "width": rng.randint(20, 640), "height": rng.randint(20, 480)}
              for i in range(12)]
    annotations = []
    for n in range(60):
        img = images[rng.randrange(len(images) - 2)]  # the last two have no annotation
        w, h = img["width"], img["height"]
        x, y = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
        bw, bh = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
        parts = [[c for _ in range(rng.randint(3, 7)) for c in (rng.uniform(0, w), rng.randint(0, h))]
                 for _ in range(rng.choice([0, 1, 1, 2, 3]))]
        ann = {"id": n, "image_id": img["id"], "category_id": rng.randint(1, 3), "bbox": [x, y, bw, bh],
               "iscrowd": int(rng.random() < 0.1), "segmentation": parts}
        if task == "pose":
            ann["keypoints"] = [v for _ in range(4) for v in (rng.uniform(0, w), rng.uniform(0, h),
                                                              rng.choice([0, 1, 2]))]
        annotations.append(ann)
    annotations.append(dict(annotations[0], id=999))  # a duplicate row is written once
    return images, annotations


@pytest.mark.parametrize("task", ["detect", "segment", "pose"])
def test_coco_labels_are_those_convert_coco_writes(tmp_path: Path, ultralytics_data, task: str) -> None:  # noqa: ANN001
    converter, _ = ultralytics_data
    images, annotations = _annotations(random.Random(task), task)
    segments, keypoints = task == "segment", task == "pose"
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "part.json").write_text(json.dumps({
        "images": images, "annotations": annotations, "categories": [{"id": i, "name": str(i)} for i in (1, 2, 3)]}))
    converter.convert_coco(str(tmp_path / "json"), str(tmp_path / "theirs"), use_segments=segments,
                           use_keypoints=keypoints, cls91to80=False)
    write_labels(images, annotations, tmp_path / "ours", use_segments=segments, use_keypoints=keypoints)

    theirs = {p.name: p.read_text() for p in (tmp_path / "theirs" / "labels" / "part").glob("*.txt")}
    ours = {p.name: p.read_text() for p in (tmp_path / "ours").glob("*.txt")}
    assert len(ours) == 10 and ours == theirs
