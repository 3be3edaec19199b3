"""Errors of the dataset library. All derive from `DatasetError`; the message says what to fix.

The gateway maps `PathNotAllowed` and `ArchiveError` to 400, the others to 422.
"""

from __future__ import annotations


class DatasetError(Exception):
    """The dataset cannot be used."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class PathNotAllowed(DatasetError):
    """The path is not inside a configured data root."""


class ArchiveError(DatasetError):
    """The archive cannot be extracted safely."""


class UnrecognizedFormat(DatasetError):
    """No known dataset format (YOLO, COCO, Pascal VOC, classification folders) was recognised."""


class InvalidDataset(DatasetError):
    """The dataset was recognised but cannot be prepared for training."""
