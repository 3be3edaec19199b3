"""Routes of the dashboard: its pages (every one answers the single-page app's `index.html`, which routes in
the browser) and its assets. Not in the OpenAPI schema: they are not the API."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import CacheControlHeader
from litestar.response import File
from litestar.static_files import create_static_files_router

from gateway.dashboard import PAGE_PREFIXES, STATIC_DIR

CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' blob: data:; connect-src 'self'; font-src 'self'; "
                           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
"""Only the gateway's own scripts, styles and images; never in a frame."""

PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin", "Cache-Control": "no-cache"}

PAGE_PATHS = ["/", *(f"/{p}" for p in PAGE_PREFIXES), *(f"/{p}/{{rest:path}}" for p in PAGE_PREFIXES)]


@get(PAGE_PATHS, include_in_schema=False, media_type="text/html", sync_to_thread=False)
def page() -> Response[bytes]:
    """The app shell for every dashboard path (the browser's router shows the page)."""
    return File(STATIC_DIR / "index.html", content_disposition_type="inline", media_type="text/html",
                headers=PAGE_HEADERS)  # type: ignore[return-value]


def _nosniff(response: Response) -> Response:  # type: ignore[type-arg]
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def dashboard_routes() -> list[object]:
    assets = create_static_files_router(
        path="/assets", directories=[STATIC_DIR / "assets"], include_in_schema=False, name="dashboard-assets",
        cache_control=CacheControlHeader(no_cache=True), after_request=_nosniff)
    return [page, assets]

