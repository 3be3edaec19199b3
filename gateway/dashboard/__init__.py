"""The web dashboard, served by the gateway at `/` from the built files in `static/` (built from `dashboard/`
in the repository; see docs/dashboard.md). The page shell and its assets are public; every piece of data the
page shows comes from the API, with the caller's cookie session (`gateway.auth.browser`)."""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).with_name("static")
"""index.html, assets/ (app.js, app.css) and build.json (hashes of the sources the build came from)."""

PAGE_PREFIXES = ("login", "projects", "runs", "compare", "datasets", "models", "fleet", "admin")
"""First path segments that are pages of the dashboard (the single-page app routes them in the browser)."""

DASHBOARD_PATHS = rf"^/$|^/({'|'.join(PAGE_PREFIXES)})(/.*)?$|^/assets/"
"""The dashboard's paths (a regular expression): public, like the shell of any login page."""
