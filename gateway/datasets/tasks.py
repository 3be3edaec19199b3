"""The YOLO task a dataset is annotated for."""

from __future__ import annotations

import enum


class Task(enum.StrEnum):
    DETECT = "detect"
    SEGMENT = "segment"
    POSE = "pose"
    OBB = "obb"
    CLASSIFY = "classify"
