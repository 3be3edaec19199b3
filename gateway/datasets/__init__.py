"""Dataset handling for YOLO jobs: confine, extract, recognise, convert, split, inspect, list.

A pure, blocking library: the gateway calls it from a worker thread. The entry points are
`prepare_from_path`, `prepare_from_archive` (or `prepare_dataset` for a folder already in place),
`load_prepared` and `list_images`.
"""

from gateway.datasets.errors import (
    ArchiveError,
    DatasetError,
    InvalidDataset,
    PathNotAllowed,
    UnrecognizedFormat,
)
from gateway.datasets.formats import DatasetFormat
from gateway.datasets.listing import ImageItem, ImagePage, list_images
from gateway.datasets.prepare import (
    PreparedDataset,
    load_prepared,
    prepare_dataset,
    prepare_from_archive,
    prepare_from_path,
)
from gateway.datasets.report import InspectionReport, Problem, ProblemKind
from gateway.datasets.split import SplitRatios
from gateway.datasets.tasks import Task

__all__ = [
    "ArchiveError",
    "DatasetError",
    "DatasetFormat",
    "ImageItem",
    "ImagePage",
    "InspectionReport",
    "InvalidDataset",
    "PathNotAllowed",
    "PreparedDataset",
    "Problem",
    "ProblemKind",
    "SplitRatios",
    "Task",
    "UnrecognizedFormat",
    "list_images",
    "load_prepared",
    "prepare_dataset",
    "prepare_from_archive",
    "prepare_from_path",
]
