"""Recognition, conversion to the YOLO layout, seeded split and listing, per format."""

from pathlib import Path

import pytest
import yaml

from gateway.datasets import (
    DatasetFormat,
    SplitRatios,
    UnrecognizedFormat,
    list_images,
    load_prepared,
    prepare_dataset,
)
from gateway.datasets.formats import detect_format
from gateway.datasets.layout import read_index
from tests.dataset_factories import (
    CLASSES,
    make_classify,
    make_coco,
    make_voc,
    make_yolo_flat,
    make_yolo_yaml,
    scene,
)

RATIOS = SplitRatios(train=0.6, val=0.2, test=0.2)


def _labels_by_stem(out: Path) -> dict[str, list[tuple]]:
    prepared = load_prepared(out)
    found = {}
    for split in prepared.splits:
        for entry in read_index(out, split):
            rows = [line.split() for line in entry.label.read_text().splitlines()] if entry.label.exists() else []
            found[entry.path.stem] = sorted((prepared.classes[int(r[0])], *map(float, r[1:])) for r in rows)
    return found


def _assert_same_boxes(found: dict, truth: dict, tol: float = 1e-4) -> None:
    assert found.keys() == truth.keys()
    for stem, boxes in truth.items():
        expected = sorted(boxes)
        assert [b[0] for b in found[stem]] == [b[0] for b in expected], stem
        for got, want in zip(found[stem], expected, strict=True):
            assert got[1:] == pytest.approx(want[1:], abs=tol), stem


@pytest.mark.parametrize(
    ("make", "fmt"),
    [(make_yolo_yaml, DatasetFormat.YOLO), (make_yolo_flat, DatasetFormat.YOLO), (make_coco, DatasetFormat.COCO),
     (make_voc, DatasetFormat.VOC), (make_classify, DatasetFormat.CLASSIFY)],
)
def test_each_format_is_recognised(tmp_path: Path, make, fmt: DatasetFormat) -> None:
    make(tmp_path / "ds")
    assert detect_format(tmp_path / "ds").format is fmt


def test_a_lone_top_folder_is_stepped_into(tmp_path: Path) -> None:
    make_voc(tmp_path / "wrap" / "VOCdevkit", 3)
    match = detect_format(tmp_path / "wrap")
    assert match.format is DatasetFormat.VOC and match.root == tmp_path / "wrap" / "VOCdevkit"


def test_unknown_content_is_refused_with_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("hello")
    with pytest.raises(UnrecognizedFormat, match="expected a YOLO data.yaml"):
        prepare_dataset(tmp_path / "ds", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_yolo_with_data_yaml_keeps_its_splits_and_drops_its_download_script(tmp_path: Path) -> None:
    truth = make_yolo_yaml(tmp_path / "ds", 6, 3, download="bash evil.sh")
    prepared = prepare_dataset(tmp_path / "ds", tmp_path / "out")
    assert (prepared.format, prepared.task, prepared.classes) == ("yolo", "detect", CLASSES)
    assert prepared.splits == {"train": 6, "val": 3} and prepared.split_by == "source"
    data = yaml.safe_load(Path(prepared.data).read_text())
    assert "download" not in data and data["path"] == str(tmp_path / "out" / "yolo")
    assert data["names"] == dict(enumerate(CLASSES))
    _assert_same_boxes(_labels_by_stem(tmp_path / "out"), truth)
    assert not list((tmp_path / "ds").rglob("*.cache")) and sorted(p.name for p in (tmp_path / "ds").iterdir()) == [
        "data.yaml", "images", "labels"]


def test_yolo_layout_without_yaml_is_split_by_the_ratios_reproducibly(tmp_path: Path) -> None:
    truth = make_yolo_flat(tmp_path / "ds", 10)
    first = prepare_dataset(tmp_path / "ds", tmp_path / "out1", RATIOS, seed=7)
    _again = prepare_dataset(tmp_path / "ds", tmp_path / "out2", RATIOS, seed=7)
    _other = prepare_dataset(tmp_path / "ds", tmp_path / "out3", RATIOS, seed=8)
    assert first.split_by == "ratios" and first.splits == {"train": 6, "val": 2, "test": 2}

    def keys(out: Path) -> dict[str, list[str]]:
        return {s: [e.key for e in read_index(out, s)] for s in ("train", "val", "test")}

    assert keys(tmp_path / "out1") == keys(tmp_path / "out2") != keys(tmp_path / "out3")
    assert first.classes == ["class_0", "class_1", "class_2"]  # numbered: no names anywhere
    numbered = {k: [(f"class_{CLASSES.index(b[0])}", *b[1:]) for b in v] for k, v in truth.items()}
    _assert_same_boxes(_labels_by_stem(tmp_path / "out1"), numbered)
    data = yaml.safe_load(Path(first.data).read_text())
    assert (data["train"], data["val"], data["test"]) == ("images/train", "images/val", "images/test")


def test_coco_is_converted_with_its_category_ids_made_contiguous(tmp_path: Path) -> None:
    truth = make_coco(tmp_path / "ds", 9)
    prepared = prepare_dataset(tmp_path / "ds", tmp_path / "out")
    assert (prepared.format, prepared.task, prepared.classes) == ("coco", "detect", CLASSES)
    assert prepared.splits == {"train": 6, "val": 3}
    _assert_same_boxes(_labels_by_stem(tmp_path / "out"), truth)
    assert prepared.report.problems_total == 0


def test_coco_with_polygons_becomes_a_segment_dataset(tmp_path: Path) -> None:
    make_coco(tmp_path / "ds", 4, splits=False, polygons=True)
    prepared = prepare_dataset(tmp_path / "ds", tmp_path / "out", RATIOS, seed=1)
    assert prepared.task == "segment" and prepared.split_by == "ratios"
    page = list_images(tmp_path / "out", limit=10)
    assert all(len(label.values) == 8 for item in page.items for label in item.labels)


def test_voc_is_converted_from_one_based_corners(tmp_path: Path) -> None:
    truth = make_voc(tmp_path / "ds", 8)
    prepared = prepare_dataset(tmp_path / "ds", tmp_path / "out", RATIOS, seed=0)
    assert (prepared.format, prepared.task, prepared.classes) == ("voc", "detect", sorted(CLASSES))
    _assert_same_boxes(_labels_by_stem(tmp_path / "out"), truth, tol=1e-6)


def test_voc_objects_marked_difficult_are_kept_unless_registration_drops_them(tmp_path: Path) -> None:
    truth = make_voc(tmp_path / "ds", 6)
    marked = {}
    for xml in sorted((tmp_path / "ds" / "Annotations").glob("*.xml")):
        text = xml.read_text()
        xml.write_text(text.replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
        marked[xml.stem] = text.count("<object>")
    kept = prepare_dataset(tmp_path / "ds", tmp_path / "kept", RATIOS, seed=0)
    _assert_same_boxes(_labels_by_stem(tmp_path / "kept"), truth, tol=1e-6)
    assert kept.report.instances == sum(len(v) for v in truth.values())

    dropped = prepare_dataset(tmp_path / "ds", tmp_path / "dropped", RATIOS, seed=0, drop_difficult=True)
    found = _labels_by_stem(tmp_path / "dropped")
    assert {k: len(v) for k, v in found.items()} == {k: n - 1 for k, n in marked.items()}  # the first of each
    assert dropped.report.instances == kept.report.instances - len(marked)


def test_a_flat_yolo_archive_whose_yaml_only_names_the_classes_gets_those_names(tmp_path: Path) -> None:
    truth = make_yolo_flat(tmp_path / "ds", 6)
    (tmp_path / "ds" / "data.yaml").write_text("names:\n  0: cat\n  1: dog\n  2: bird\n")
    match = detect_format(tmp_path / "ds")
    assert match.format is DatasetFormat.YOLO and "no data YAML" not in match.reason
    assert "class names from data.yaml" in match.reason
    prepared = prepare_dataset(tmp_path / "ds", tmp_path / "out", RATIOS, seed=3)
    assert prepared.classes == CLASSES and "no data YAML" not in prepared.format_reason
    _assert_same_boxes(_labels_by_stem(tmp_path / "out"), truth)
    (tmp_path / "ds" / "data.yaml").write_text("names: [cat, dog, bird]\n")  # the list form too
    assert prepare_dataset(tmp_path / "ds", tmp_path / "out2", RATIOS, seed=3).classes == CLASSES


def test_classification_folders_are_split_per_class(tmp_path: Path) -> None:
    make_classify(tmp_path / "ds", per_class=5)
    prepared = prepare_dataset(tmp_path / "ds", tmp_path / "out", RATIOS, seed=0)
    assert (prepared.task, prepared.classes) == ("classify", sorted(CLASSES))
    assert prepared.data == str(tmp_path / "out" / "classify")
    for split in ("train", "val", "test"):
        assert {c.name: c.images > 0 for c in prepared.report.splits[split].classes} == dict.fromkeys(sorted(CLASSES), True)
    assert sorted(p.name for p in (tmp_path / "out" / "classify").iterdir()) == ["test", "train", "val"]


def test_classification_with_splits_keeps_them(tmp_path: Path) -> None:
    make_classify(tmp_path / "ds", per_class=3, splits=True)
    prepared = prepare_dataset(tmp_path / "ds", tmp_path / "out")
    assert prepared.splits == {"train": 6, "val": 3} and prepared.split_by == "source"


def test_listing_pages_through_images_with_their_labels(tmp_path: Path) -> None:
    truth = make_yolo_yaml(tmp_path / "ds", 6, 3)
    prepare_dataset(tmp_path / "ds", tmp_path / "out")
    first, second = list_images(tmp_path / "out", offset=0, limit=5), list_images(tmp_path / "out", offset=5, limit=5)
    assert (first.total, len(first.items), len(second.items)) == (9, 5, 4)
    items = first.items + second.items  # an image's index is its place in its split (what the file route takes)
    assert [(i.split, i.index) for i in items] == [("train", n) for n in range(6)] + [("val", n) for n in range(3)]
    item = list_images(tmp_path / "out", split="val", limit=1).items[0]
    assert item.split == "val" and item.path == "images/val/img6.jpg"
    assert (item.width, item.height) == scene(6)[:2]
    assert sorted(lb.class_name for lb in item.labels) == sorted(b[0] for b in truth["img6"])
