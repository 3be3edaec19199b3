"""Confinement of client-named paths to the configured data roots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gateway.datasets.errors import PathNotAllowed


def confine(path: str | Path, roots: Sequence[Path]) -> Path:
    """The real path of an existing folder `path`, if it lies inside one of `roots`.

    Symlinks are resolved before the check, so a link inside a root that points elsewhere is refused.
    """
    if not roots:
        raise PathNotAllowed("registering datasets by server path is disabled (no data roots are configured)")
    raw = str(path)
    if not raw or "\x00" in raw:
        raise PathNotAllowed("the dataset path is empty or malformed")
    candidate = Path(raw)
    if not candidate.is_absolute():
        raise PathNotAllowed(f"the dataset path must be absolute: {raw!r}")
    real = candidate.resolve()
    if not any(real.is_relative_to(root.resolve()) for root in roots):
        raise PathNotAllowed(f"{raw!r} is not inside a configured data root")
    if not real.is_dir():
        raise PathNotAllowed(f"{raw!r} is not an existing folder")
    return real

