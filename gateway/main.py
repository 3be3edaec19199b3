"""`trainforge gateway`: serve the app with uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import uvicorn

from gateway.app import create_app
from shared.settings import Settings


def main(settings: Settings) -> int:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=3,  # open SSE streams must not hold shutdown forever
        lifespan="on",
        proxy_headers=True,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
