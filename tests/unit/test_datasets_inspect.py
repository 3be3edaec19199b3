"""Inspection counts and the reasons it gives for broken images and label lines."""

from pathlib import Path

import pytest

from gateway.datasets import ProblemKind, SplitRatios, prepare_dataset, prepare_from_archive, prepare_from_path
from gateway.datasets.errors import ArchiveError, PathNotAllowed
from shared.settings import Settings
from tests.dataset_factories import corrupt_image, draw, make_coco, make_yolo_yaml, zip_folder, zip_with


def test_counts_per_split_and_class(tmp_path: Path) -> None:
    truth = make_yolo_yaml(tmp_path / "ds", 6, 3)
    report = prepare_dataset(tmp_path / "ds", tmp_path / "out").report
    assert (report.images, report.instances, report.problems_total) == (9, sum(map(len, truth.values())), 0)
    val = report.splits["val"]
    expected = {name: sum(1 for k in ("img6", "img7", "img8") for b in truth[k] if b[0] == name)
                for name in ("cat", "dog", "bird")}
    assert {c.name: c.instances for c in val.classes} == expected
    assert val.images == 3 and val.images_without_labels == 0


def test_broken_images_and_label_lines_are_reported_with_their_reason(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    make_yolo_yaml(ds, 6, 3)
    corrupt_image(ds / "images" / "train" / "img0.jpg")
    draw(ds / "images" / "train" / "tiny.jpg", 8, 8, [])
    (ds / "labels" / "train" / "img1.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n"
        "7 0.5 0.5 0.2 0.2\n"     # class 7 of 3
        "1 0.5 0.5 0.2\n"         # 4 fields
        "2 0.5 1.5 0.2 0.2\n"     # y out of range
        "x 0.5 0.5 0.2 0.2\n"     # not a number
    )
    (ds / "labels" / "train" / "img2.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")
    (ds / "labels" / "train" / "img3.txt").unlink()
    report = prepare_dataset(ds, tmp_path / "out").report

    by_path = {}
    for p in report.problems:
        by_path.setdefault(p.path, []).append((p.kind, p.line))
    assert by_path["images/train/img0.jpg"] == [(ProblemKind.UNREADABLE_IMAGE, None)]
    assert by_path["images/train/tiny.jpg"] == [(ProblemKind.IMAGE_TOO_SMALL, None)]
    assert by_path["images/train/img1.jpg"] == [
        (ProblemKind.BAD_CLASS_ID, 2), (ProblemKind.WRONG_FIELD_COUNT, 3),
        (ProblemKind.COORDINATES_OUT_OF_RANGE, 4), (ProblemKind.NOT_A_NUMBER, 5)]
    assert by_path["images/train/img2.jpg"] == [(ProblemKind.DUPLICATE_LABEL, 2)]
    message = next(p.message for p in report.problems if p.kind is ProblemKind.BAD_CLASS_ID)
    assert message == "class id 7 is not one of 0..2"
    train = report.splits["train"]
    assert (train.images, train.broken_images, train.images_without_labels) == (7, 3, 2)  # img3, tiny
    assert report.problem_counts["wrong_field_count"] == 1


def test_coco_annotations_naming_missing_images_are_reported(tmp_path: Path) -> None:
    make_coco(tmp_path / "ds", 6)
    (tmp_path / "ds" / "images" / "train" / "img0.jpg").unlink()
    report = prepare_dataset(tmp_path / "ds", tmp_path / "out").report
    assert [(p.kind, p.path) for p in report.problems] == [
        (ProblemKind.MISSING_IMAGE, "annotations/instances_train.json")]
    assert "'img0.jpg'" in report.problems[0].message


def test_an_upload_is_extracted_and_prepared(tmp_path: Path) -> None:
    make_coco(tmp_path / "ds", 6)
    settings = Settings(state_dir=tmp_path / "state")
    prepared = prepare_from_archive(zip_folder(tmp_path / "ds", tmp_path / "up.zip", "mydata/"), settings, "d1",
                                    SplitRatios(), seed=0)
    assert prepared.format == "coco"
    assert Path(prepared.root) == settings.datasets_dir / "d1" / "prepared"
    assert Path(prepared.source) == settings.datasets_dir / "d1" / "source" / "mydata"


def test_a_refused_upload_leaves_nothing_behind(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    with pytest.raises(ArchiveError):
        prepare_from_archive(zip_with(tmp_path / "bad.zip", {"../evil": b"x"}), settings, "d2")
    assert not (settings.datasets_dir / "d2").exists()


def test_server_side_paths_must_lie_in_a_data_root(tmp_path: Path) -> None:
    make_yolo_yaml(tmp_path / "roots" / "ds", 2, 1)
    make_yolo_yaml(tmp_path / "elsewhere", 2, 1)
    settings = Settings(state_dir=tmp_path / "state", data_roots=[tmp_path / "roots"])
    assert prepare_from_path(tmp_path / "roots" / "ds", settings, "d3").splits == {"train": 2, "val": 1}
    with pytest.raises(PathNotAllowed):
        prepare_from_path(tmp_path / "elsewhere", settings, "d4")
    with pytest.raises(Exception, match="invalid dataset id"):
        prepare_from_path(tmp_path / "roots" / "ds", settings, "../x")
