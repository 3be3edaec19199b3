"""Result types of dataset inspection, returned by the gateway as JSON."""

from __future__ import annotations

import enum

import msgspec


class ProblemKind(enum.StrEnum):
    UNREADABLE_IMAGE = "unreadable_image"
    IMAGE_TOO_SMALL = "image_too_small"
    MISSING_IMAGE = "missing_image"
    """An annotation names an image that is not in the dataset."""
    OUTSIDE_DATASET = "outside_dataset"
    """A list file or annotation names a file outside the dataset folder."""
    UNREADABLE_LABEL = "unreadable_label"
    NOT_A_NUMBER = "not_a_number"
    WRONG_FIELD_COUNT = "wrong_field_count"
    BAD_CLASS_ID = "bad_class_id"
    COORDINATES_OUT_OF_RANGE = "coordinates_out_of_range"
    DUPLICATE_LABEL = "duplicate_label"
    BAD_ANNOTATION = "bad_annotation"
    """A COCO or VOC annotation that cannot be converted (no box, degenerate box, unknown image)."""


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    kind: ProblemKind
    message: str
    path: str
    """The image (or annotation file) concerned, relative to the dataset folder."""
    split: str | None = None
    line: int | None = None
    """1-based line of the label file."""


class ClassStats(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    images: int
    instances: int


class SplitStats(msgspec.Struct, frozen=True, kw_only=True):
    images: int
    instances: int
    images_without_labels: int
    broken_images: int
    """Images that cannot be read, or whose label file has a bad line (Ultralytics skips them)."""
    classes: list[ClassStats]


class InspectionReport(msgspec.Struct, frozen=True, kw_only=True):
    format: str
    task: str
    classes: list[str]
    splits: dict[str, SplitStats]
    images: int
    instances: int
    images_without_labels: int
    broken_images: int
    problems: list[Problem]
    """At most `MAX_PROBLEMS` of them; `problems_total` counts all."""
    problems_total: int
    problem_counts: dict[str, int]
    """Problems by kind."""


MAX_PROBLEMS = 1000
