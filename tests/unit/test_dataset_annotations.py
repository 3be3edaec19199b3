"""Annotations of a dataset's working copy (`gateway.datasets.curation`): checked against the task, the classes
and the image size, and written as the YOLO label lines Ultralytics reads (and read back)."""

from __future__ import annotations

import pytest

from gateway.datasets.curation import (
    AnnotationError,
    Manifest,
    SampleRecord,
    changes_between,
    check_annotations,
    parse_yolo_line,
    yolo_lines,
)
from gateway.datasets.tasks import Task

CLASSES = ["cat", "dog"]


def _fields(exc: pytest.ExceptionInfo[AnnotationError]) -> set[str]:
    return {e["field"] for e in exc.value.errors}


def test_each_task_takes_its_own_geometry_and_names_every_bad_field() -> None:
    ok = dict(classes=CLASSES, width=100, height=50)
    assert check_annotations([{"class": 1, "box": [0, 0, 100, 50]}], task="detect", **ok) == [
        {"class": "dog", "box": [0.0, 0.0, 100.0, 50.0]}]
    assert check_annotations([{"class": "cat", "polygon": [[0, 0], [10, 0], [10, 10]]}], task="segment", **ok)
    assert check_annotations([{"class": "cat", "polygon": [[0, 0], [10, 0], [10, 10], [0, 10]]}], task="obb", **ok)
    assert check_annotations([{"class": "cat"}], task="classify", **ok) == [{"class": "cat"}]
    pose = check_annotations([{"class": "cat", "box": [1, 1, 20, 20], "keypoints": [[2, 2, 2], [3, 3, 0]]}],
                             task="pose", kpt_shape=[2, 3], **ok)
    assert pose[0]["keypoints"] == [[2.0, 2.0, 2.0], [3.0, 3.0, 0.0]]

    with pytest.raises(AnnotationError) as bad:
        check_annotations([{"class": "cat", "polygon": [[0, 0], [10, 0]]},
                           {"class": "cat", "polygon": [[0, 0], [10, 0], [101, 10]]},
                           {"class": "cat", "box": [1, 1, 2, 2]}], task="segment", **ok)
    assert _fields(bad) == {"annotations[0].polygon", "annotations[1].polygon[2]", "annotations[2].box",
                            "annotations[2].polygon"}
    with pytest.raises(AnnotationError) as bad:
        check_annotations([{"class": "cat", "polygon": [[0, 0], [10, 0], [10, 10]]}], task="obb", **ok)
    assert _fields(bad) == {"annotations[0].polygon"}
    with pytest.raises(AnnotationError) as bad:
        check_annotations([{"class": "cat", "box": [1, 1, 20, 20], "keypoints": [[2, 2, 5]]},
                           {"class": "cat", "box": [1, 1, 20, 20], "keypoints": [[2, 2, 1], [300, 2, 1]]}],
                          task="pose", kpt_shape=[2, 3], **ok)
    assert _fields(bad) == {"annotations[0].keypoints", "annotations[1].keypoints[1]"}
    with pytest.raises(AnnotationError) as bad:
        check_annotations([{"class": "cat"}, {"class": "dog"}], task="classify", **ok)
    assert _fields(bad) == {"annotations"}
    with pytest.raises(AnnotationError) as bad:
        check_annotations([{"class": "cat", "box": [5, 5, 4, 9]}, {"class": True, "box": [1, 1, 2, 2]}],
                          task="detect", **ok)
    assert _fields(bad) == {"annotations[0].box", "annotations[1].class"}
    with pytest.raises(AnnotationError) as bad:
        check_annotations([{"class": "cat", "box": [1, 1, 2, 2]}], task="detect", classes=CLASSES, width=None,
                          height=None)
    assert _fields(bad) == {"annotations[0]"}


@pytest.mark.parametrize(("task", "annotation", "kpt_shape"), [
    (Task.DETECT, {"class": "dog", "box": [10.0, 5.0, 60.0, 45.0]}, None),
    (Task.SEGMENT, {"class": "cat", "polygon": [[10.0, 5.0], [60.0, 5.0], [35.0, 45.0]]}, None),
    (Task.OBB, {"class": "cat", "polygon": [[10.0, 5.0], [60.0, 5.0], [60.0, 45.0], [10.0, 45.0]]}, None),
    (Task.POSE, {"class": "cat", "box": [10.0, 5.0, 60.0, 45.0], "keypoints": [[20.0, 10.0, 2.0], [30.0, 20.0, 1.0]]},
     [2, 3]),
])
def test_label_lines_round_trip_through_yolos_normalised_form(task: Task, annotation: dict, kpt_shape: list[int] | None
                                                             ) -> None:
    (line,) = yolo_lines([annotation], CLASSES, 100, 50)
    values = [float(v) for v in line.split()]
    assert values[0] == CLASSES.index(annotation["class"]) and all(0 <= v <= 2 for v in values[1:])
    assert parse_yolo_line(values, task, CLASSES, 100, 50, kpt_shape) == annotation


def test_changes_name_added_removed_relabelled_and_moved_samples() -> None:
    def sample(i: str, split: str = "train", cls: str = "cat") -> SampleRecord:
        return SampleRecord(id=i, split=split, name=f"{i}.jpg", sha256=i * 8, ext=".jpg", width=10, height=10,
                            annotations=[{"class": cls, "box": [1.0, 1.0, 5.0, 5.0]}])

    before = Manifest(classes=["cat", "dog"], samples=[sample("a"), sample("b"), sample("c")])
    after = Manifest(classes=["cat", "bird"], samples=[sample("a"), sample("b", cls="dog"), sample("d"),
                                                       sample("a2", "val")])
    after.samples[0] = sample("a", "val")
    changes = changes_between(before, 1, after)
    assert changes["totals"] == {"added": 2, "removed": 1, "relabelled": 1, "moved": 1}
    assert (changes["added"], changes["removed"], changes["relabelled"], changes["moved"]) == (
        ["d", "a2"], ["c"], ["b"], ["a"])
    assert (changes["classes_added"], changes["classes_removed"]) == (["bird"], ["dog"])
    assert changes_between(None, None, after)["totals"]["added"] == 4
