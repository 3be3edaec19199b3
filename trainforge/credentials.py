"""API tokens that `trainforge login` keeps for the command line, one per gateway URL.

The file is `$XDG_CONFIG_HOME/trainforge/credentials.json` (else `~/.config/trainforge/credentials.json`),
readable by its owner only. It holds, per gateway URL, the token, its id (to revoke it at logout) and the
username. The commands that call the API take, in this order: `TRAINFORGE_API_TOKEN`, this file's token for
their URL, the token `trainforge up` keeps in its state folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def credentials_file() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "trainforge" / "credentials.json"


def _key(api_url: str) -> str:
    return api_url.rstrip("/")


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it and log in again") from None
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def saved(api_url: str, path: Path | None = None) -> dict[str, Any] | None:
    """The saved login for a gateway URL: {"token", "token_id", "username"}, or None."""
    return _read(path or credentials_file()).get(_key(api_url))


def save(api_url: str, token: str, token_id: str, username: str, path: Path | None = None) -> Path:
    path = path or credentials_file()
    data = _read(path)
    data[_key(api_url)] = {"token": token, "token_id": token_id, "username": username}
    _write(path, data)
    return path


def forget(api_url: str, path: Path | None = None) -> dict[str, Any] | None:
    """Remove the saved login of a gateway URL; the removed entry, or None if there was none."""
    path = path or credentials_file()
    data = _read(path)
    entry = data.pop(_key(api_url), None)
    if entry is not None:
        _write(path, data)
    return entry
