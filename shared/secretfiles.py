"""Where a deployment's generated secrets live: `<state_dir>/secrets/` (mode 0700, files 0600).

The admin password, the CLI's API token, the JWT secret and the bus credentials are kept apart from every
folder the gateway serves files from or writes client data to (`datasets/`, `artifacts/`, `uploads/`), so that
no path bug in a file route or an archive can reach them. A file of an older layout (`<state_dir>/<name>`) is
moved into the folder the first time it is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

SECRETS_DIR = "secrets"


def secrets_dir(state_dir: Path) -> Path:
    """`<state_dir>/secrets`, created with mode 0700 (and tightened to it if it exists)."""
    folder = Path(state_dir).resolve() / SECRETS_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    return folder


def secret_file(state_dir: Path, name: str) -> Path:
    """The path of secret `name` in the secrets folder; a legacy `<state_dir>/<name>` is moved there."""
    folder = secrets_dir(state_dir)
    path = folder / name
    legacy = folder.parent / name
    if not path.exists() and legacy.is_file() and not legacy.is_symlink():
        os.replace(legacy, path)
        os.chmod(path, 0o600)
    return path
