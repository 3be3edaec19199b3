"""Confinement of the files the gateway serves from disk: defence in depth behind the checks that decided
where those files were written (safe archive extraction, the artifact store's keys).

Every route that answers a file's bytes asks `servable_file` first and answers 404, as for a missing file,
when it says no: a symlink planted in a dataset or artifact folder (pointing at the state folder's tokens,
say) is never followed, whatever wrote it.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from pathlib import Path

from shared.artifacts import ArtifactStore, LocalArtifactStore


def servable_file(path: Path, root: Path) -> Path | None:
    """The real path of `path` when it is a regular file, is itself no symlink, and really lies inside
    `root` (symlinks in either resolved first); None otherwise."""
    try:
        if os.path.islink(path):
            return None
        real = Path(path).resolve(strict=True)
        real_root = Path(root).resolve(strict=True)
        mode = os.stat(real).st_mode
    except (OSError, RuntimeError, ValueError):
        return None
    if not stat.S_ISREG(mode) or real == real_root or not real.is_relative_to(real_root):
        return None
    return real


def servable_artifact(store: ArtifactStore, uri: str) -> bool:
    """Whether a local artifact store may serve `uri` (see `servable_file`; the path is taken from the URI
    as written, before the store resolves it). Stores that are not on this disk are not asked."""
    if not isinstance(store, LocalArtifactStore):
        return True
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
    elif parsed.scheme == "local":
        path = store.root / urllib.parse.unquote(parsed.path).lstrip("/")
    else:
        return False
    return servable_file(path, store.root) is not None
