"""`gateway.datasets.stats` on prepared datasets: histograms, classification folders, duplicates in a split."""

import shutil
from pathlib import Path

from gateway.datasets import prepare_dataset
from gateway.datasets.stats import NORMALISED_EDGES, PIXEL_EDGES, compute_stats, histogram
from tests.dataset_factories import CLASSES, make_classify, make_yolo_yaml


def test_histograms_put_each_value_in_one_bin_the_top_edge_in_the_last() -> None:
    h = histogram([0.0, 0.05, 0.1, 0.95, 1.0, -1.0, 7.0], NORMALISED_EDGES)
    assert h.counts == [3, 1, 0, 0, 0, 0, 0, 0, 0, 3] and h.edges[-1] == 1.0
    px = histogram([3, 4, 5000], PIXEL_EDGES)
    assert px.edges[-1] is None and px.counts[0] == 1 and px.counts[1] == 1 and px.counts[-1] == 1


def test_classification_stats_count_images_per_class_and_have_no_box_histograms(tmp_path: Path) -> None:
    truth = make_classify(tmp_path / "ds", per_class=4, splits=True)
    prepared = prepare_dataset(tmp_path / "ds", tmp_path / "out")
    stats = compute_stats(Path(prepared.root), prepared.classes, prepared.task)
    assert stats.images == sum(len(v) for v in truth.values()) == stats.instances
    assert stats.splits["train"].per_class == {c: 3 for c in CLASSES}
    assert stats.splits["val"].per_class == {c: 1 for c in CLASSES}
    assert stats.boxes_normalised is None and stats.boxes_pixels is None and stats.leaks == 0


def test_a_duplicate_inside_one_split_is_no_leak(tmp_path: Path) -> None:
    make_yolo_yaml(tmp_path / "ds", 4, 2)
    shutil.copy(tmp_path / "ds/images/train/img0.jpg", tmp_path / "ds/images/train/copy.jpg")
    prepared = prepare_dataset(tmp_path / "ds", tmp_path / "out")
    stats = compute_stats(Path(prepared.root), prepared.classes, prepared.task)
    assert stats.duplicate_groups == 1 and stats.leaks == 0 and stats.leaks_by_splits == {}
    assert stats.duplicates[0].splits == ["train"] and not stats.duplicates[0].leak
    assert stats.images_without_labels == 1  # the copy has no label file


def test_a_folder_without_an_index_is_read_from_its_layout(tmp_path: Path) -> None:
    """A frozen dataset version has `yolo/images/<split>/` and `yolo/labels/<split>/` and no `index/`."""
    make_yolo_yaml(tmp_path / "ds", 4, 2)
    prepared = prepare_dataset(tmp_path / "ds", tmp_path / "out")
    indexed = compute_stats(Path(prepared.root), prepared.classes, prepared.task)
    shutil.rmtree(tmp_path / "out" / "index")
    listed = compute_stats(Path(prepared.root), prepared.classes, prepared.task)
    assert (listed.images, listed.instances, listed.splits) == (indexed.images, indexed.instances, indexed.splits)
    assert listed.boxes_pixels == indexed.boxes_pixels
