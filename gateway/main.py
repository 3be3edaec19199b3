"""`trainforge gateway`: serve the app with uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

import uvicorn

from gateway.app import create_app
from shared import logredact
from shared.jobsign import JobSigner, KeyFileError
from shared.settings import Settings


def main(settings: Settings) -> int:
    if settings.job_signing_key_file is not None:
        try:
            JobSigner.from_file(settings.job_signing_key_file)
        except KeyFileError as exc:
            print(f"trainforge gateway: {exc}", file=sys.stderr)
            return 2
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=3,  # open SSE streams must not hold shutdown forever
        lifespan="on",
        proxy_headers=True,
        # JSON lines: uvicorn's loggers (access log included) propagate to the root handler's JSON formatter
        **({"log_config": None} if settings.log_format == "json" else {}),
    )
    logredact.install()  # after uvicorn.Config, which sets up uvicorn's own loggers: no token in the access log
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
