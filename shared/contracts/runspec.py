"""The base of every run kind (`shared.contracts.commands.RunSpec`), in a module of its own so that the
container spec (`commands`) and the YOLO specs (`yolo`) both build on it without importing each other."""

from __future__ import annotations

import msgspec


class RunSpecBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Base of every run kind. Subclasses set an explicit `tag` so renaming a class never changes the wire."""
