"""Where the client connects and with which token, read the way the command line reads them."""

from __future__ import annotations

import logging
import os

from shared.secretfiles import secret_file
from shared.settings import Settings, SettingsError
from trainforge import credentials

DEFAULT_URL = "http://127.0.0.1:8000"
log = logging.getLogger(__name__)


def _settings() -> Settings | None:
    try:
        return Settings.from_env()
    except (SettingsError, ValueError):
        return None


def default_url() -> str:
    """TRAINFORGE_API_URL, else http://127.0.0.1:8000."""
    settings = _settings()
    return settings.api_url if settings else os.environ.get("TRAINFORGE_API_URL", DEFAULT_URL)


def default_token(api_url: str) -> str | None:
    """In this order: TRAINFORGE_API_TOKEN, the token `trainforge login` kept for `api_url`, the admin token
    `trainforge up` keeps in its state folder (a stack on this machine)."""
    settings = _settings()
    if settings is None:
        return os.environ.get("TRAINFORGE_API_TOKEN") or _saved_token(api_url)
    return token_for(api_url, settings)


def token_for(api_url: str, settings: Settings) -> str | None:
    """`default_token` with the given settings (the command line's, which its options may have changed)."""
    token = settings.api_token or _saved_token(api_url)
    if token:
        return token
    path = secret_file(settings.state_dir, "cli-token")
    if path.exists():
        return path.read_text().strip() or None
    return None


def _saved_token(api_url: str) -> str | None:
    try:
        entry = credentials.saved(api_url)
    except ValueError as exc:  # an unreadable credentials file: said, then ignored
        log.warning("%s", exc)
        return None
    return str(entry["token"]) if entry else None
