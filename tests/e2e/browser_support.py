"""Debian's Chromium for the browser tests: installed with apt when missing (and we are root), driven by
Playwright from PyPI with `executable_path` (`playwright install` cannot download here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.apt_support import AptUnavailable, apt_install

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--headless=new"]


def ensure_chromium() -> Path:
    """The Chromium binary; installs it with apt when missing; skips only when that is impossible."""
    pytest.importorskip("playwright.sync_api", reason="playwright is missing (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        try:
            apt_install(["chromium"])
        except AptUnavailable as exc:
            pytest.skip(str(exc))
    return CHROMIUM
