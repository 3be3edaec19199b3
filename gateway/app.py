"""The Litestar application: `create_app(settings)`.

The lifespan connects NATS (declaring the JetStream topology) and the database, starts the projector (events
→ Postgres), the event hub (Postgres → SSE clients) and the dispatcher (queued runs → jobs on JetStream), and
stops them in reverse order on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.config.app import AppConfig
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from gateway.auth.caller import provide_me
from gateway.auth.middleware import jwt_auth
from gateway.auth.ratelimits import rate_limit_stores, rate_limits
from gateway.bus import load_job_signer
from gateway.controllers.architectures import ArchitecturesController
from gateway.controllers.artifacts import ArtifactsController
from gateway.controllers.auth import AuditController, AuthController, TokensController, UsersController
from gateway.controllers.configs import ConfigsController
from gateway.controllers.datasets import DatasetsController
from gateway.controllers.events import EventsController
from gateway.controllers.fleet import CatalogController, RunnersController, SystemController
from gateway.controllers.health import HealthController
from gateway.controllers.export_formats import ExportFormatsController
from gateway.controllers.models import ModelsController
from gateway.controllers.predict import PredictController
from gateway.controllers.projects import ProjectsController
from gateway.controllers.queue import QueueController
from gateway.controllers.runs import RunsController
from gateway.db.session import create_engine, create_sessionmaker
from gateway.dispatcher import Dispatcher
from gateway.errors import problem_details_plugin
from gateway.eventhub import EventHub
from gateway.fleet import FleetService
from gateway.limits import RequestLimitsMiddleware
from gateway.projector import Projector
from gateway.registration import WeightsRegistrar
from gateway.services.accounts import ensure_first_admin
from gateway.state import GatewayState
from gateway.sweeper import Sweeper
from shared.bus import connect, ensure_topology
from shared.settings import Settings
from shared.subjects import Subjects

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def api_controllers() -> list[type]:
    """Controllers mounted under /api/v1. One per resource."""
    return [AuthController, UsersController, TokensController, AuditController, ProjectsController, RunsController, QueueController, EventsController, DatasetsController,
            ModelsController, RunnersController, SystemController, CatalogController, ConfigsController,
            ArchitecturesController, ArtifactsController, ExportFormatsController, PredictController]


def create_app(settings: Settings) -> Litestar:
    if not settings.database_url:
        raise ValueError("the gateway needs TRAINFORGE_DATABASE_URL")

    state_holder: dict[str, GatewayState] = {}
    auth = jwt_auth(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url, timeout_s=settings.database_timeout_s)  # type: ignore[arg-type]
        job_signer = load_job_signer(settings)
        nc = await connect(settings, name="trainforge-gateway")
        js = nc.jetstream()
        await ensure_topology(js, settings)
        gw = GatewayState(settings=settings, engine=engine, sessionmaker=create_sessionmaker(engine), nc=nc, js=js,
                          subjects=Subjects(settings.bus_prefix), jwt_secret=auth.token_secret,
                          job_signer=job_signer)
        state_holder["gw"] = gw
        app.state.gw = gw
        started: list[object] = []
        try:
            await ensure_first_admin(gw)
            for name, factory in background_services():
                service = factory(gw)
                await service.start()  # type: ignore[attr-defined]
                gw.extras[name] = service
                started.append(service)
            log.info("gateway ready on http://%s:%s (OpenAPI at /schema)", settings.host, settings.port)
            yield
        finally:
            for service in reversed(started):
                try:
                    await service.stop()  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001 - keep stopping the rest
                    log.exception("stopping %s failed", service)
            await nc.drain()
            await engine.dispose()

    def provide_state() -> GatewayState:
        return state_holder["gw"]

    return Litestar(
        route_handlers=[HealthController, Router(path=API_PREFIX, route_handlers=api_controllers())],
        lifespan=[lifespan],
        dependencies={"gw": Provide(provide_state, sync_to_thread=False), "me": provide_me},
        # authentication inserts its middleware first; the limits go in front of it, so a body too large or too
        # deep is refused before a token is looked up
        on_app_init=[auth.on_app_init, _outermost(RequestLimitsMiddleware(settings.max_json_depth))],
        middleware=rate_limits(settings),
        request_max_body_size=settings.max_json_kb * 1024,
        stores=rate_limit_stores(provide_state),
        plugins=[problem_details_plugin()],
        cors_config=cors_config(settings),
        openapi_config=OpenAPIConfig(
            title="Trainforge",
            version="0.1.0",
            description="Train, validate, export and serve YOLO models; drive LLM fine-tuning runs.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        debug=False,
        logging_config=None,  # the process configures logging (trainforge.cli); one format for every line
    )


def _outermost(middleware: object) -> Callable[[AppConfig], AppConfig]:
    def insert(app_config: AppConfig) -> AppConfig:
        app_config.middleware.insert(0, middleware)  # type: ignore[arg-type]
        return app_config

    return insert


def cors_config(settings: Settings) -> CORSConfig | None:
    """CORS for the pages of `settings.cors_origins` (none: no CORS headers at all), API and event streams
    alike: bearer tokens (`Authorization`), `Last-Event-ID` and `Idempotency-Key` may be sent, no cookies."""
    if not settings.cors_origins:
        return None
    return CORSConfig(
        allow_origins=list(settings.cors_origins), allow_methods=["*"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key", "Range"],
        expose_headers=["Location", "Retry-After", "ETag", "Content-Disposition", "Content-Range",
                        "Accept-Ranges"],
        allow_credentials=False, max_age=600)


def background_services() -> list[tuple[str, object]]:
    """(name, factory(gw)) of the long-lived services the lifespan starts, in start order."""
    return [("registrar", WeightsRegistrar), ("projector", Projector), ("eventhub", EventHub),
            ("dispatcher", Dispatcher), ("fleet", FleetService), ("sweeper", Sweeper)]
