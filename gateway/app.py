"""The Litestar application: `create_app(settings)`.

The lifespan connects NATS (declaring the JetStream topology) and the database, starts the projector (events
→ Postgres), the event hub (Postgres → SSE clients) and the dispatcher (queued runs → jobs on JetStream), and
stops them in reverse order on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import cast

from litestar import Litestar, Router
from litestar.config.app import AppConfig
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from gateway.apispec import document_responses
from gateway.auth.cache import CallerCache
from gateway.auth.caller import provide_me
from gateway.auth.middleware import jwt_auth
from gateway.auth.ratelimits import rate_limit_stores, rate_limits
from gateway.background import Supervisor
from gateway.bus import load_job_signer
from gateway.controllers.architectures import ArchitecturesController
from gateway.controllers.artifacts import ArtifactsController
from gateway.controllers.auth import AuditController, AuthController, TokensController, UsersController
from gateway.controllers.browser_session import BrowserSessionController
from gateway.controllers.configs import ConfigsController
from gateway.controllers.curation import CurationController
from gateway.controllers.dataset_tools import DatasetToolsController
from gateway.controllers.datasets import DatasetsController
from gateway.controllers.events import EventsController
from gateway.controllers.export_formats import ExportFormatsController
from gateway.controllers.fleet import CatalogController, RunnersController, SystemController
from gateway.controllers.fleet_datasets import FleetDatasetsController
from gateway.controllers.health import HealthController
from gateway.controllers.models import ModelsController
from gateway.controllers.predict import PredictController
from gateway.controllers.project_links import ProjectLinksController
from gateway.controllers.projects import ProjectsController
from gateway.controllers.queue import QueueController
from gateway.controllers.runs import RunsController
from gateway.controllers.sweeps import SweepsController
from gateway.controllers.webhooks import WebhooksController
from gateway.dashboard.routes import dashboard_routes
from gateway.db.session import create_engine, create_sessionmaker
from gateway.dispatcher import Dispatcher
from gateway.errors import problem_details_plugin
from gateway.eventhub import EventHub
from gateway.fleet import FleetService
from gateway.limits import RequestLimitsMiddleware
from gateway.metrics import GatewayMetrics, MetricsController, http_metrics_config
from gateway.projector import Projector
from gateway.registration import WeightsRegistrar
from gateway.requestid import RequestIdMiddleware, add_request_id_header
from gateway.services.accounts import ensure_first_admin
from gateway.state import GatewayState
from gateway.sweeper import Sweeper
from gateway.sweeps_tracker import SweepTracker
from gateway.webhooks.deliverer import WebhookDeliverer
from shared.bus import connect, ensure_topology
from shared.settings import Settings
from shared.subjects import Subjects

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def api_controllers() -> list[type]:
    """Controllers mounted under /api/v1. One per resource."""
    return [AuthController, BrowserSessionController, UsersController, TokensController, AuditController, ProjectsController, RunsController, QueueController, EventsController, DatasetsController,
            CurationController,
            ModelsController, RunnersController, SystemController, CatalogController, ConfigsController,
            DatasetToolsController, ProjectLinksController,
            ArchitecturesController, ArtifactsController, ExportFormatsController, PredictController,
            WebhooksController, SweepsController, FleetDatasetsController]


def create_app(settings: Settings) -> Litestar:
    if not settings.database_url:
        raise ValueError("the gateway needs TRAINFORGE_DATABASE_URL")

    state_holder: dict[str, GatewayState] = {}
    auth = jwt_auth(settings)
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url, timeout_s=settings.database_timeout_s)  # type: ignore[arg-type]
        job_signer = load_job_signer(settings)
        nc = await connect(settings, name="trainforge-gateway")
        js = nc.jetstream()
        await ensure_topology(js, settings)
        gw = GatewayState(settings=settings, engine=engine, sessionmaker=create_sessionmaker(engine), nc=nc, js=js,
                          subjects=Subjects(settings.bus_prefix), jwt_secret=auth.token_secret,
                          job_signer=job_signer, metrics=metrics, callers=CallerCache(settings.auth_cache_s))
        state_holder["gw"] = gw
        app.state.gw = gw
        try:
            await ensure_first_admin(gw)
            build_background_services(gw)
            gw.supervisor = Supervisor(gw.background_services())
            await gw.supervisor.start()
            log.info("gateway ready on http://%s:%s (dashboard at /, OpenAPI at /schema)", settings.host,
                     settings.port)
            yield
        finally:
            if gw.supervisor is not None:
                await gw.supervisor.stop()
            if not nc.is_closed:  # closed already: it gave up reconnecting, nothing left to drain
                await nc.drain()
            await engine.dispose()

    def provide_state() -> GatewayState:
        return state_holder["gw"]

    app = Litestar(
        route_handlers=[HealthController, MetricsController, Router(path=API_PREFIX, route_handlers=api_controllers()),
                        *cast("list[Router]", dashboard_routes())],
        lifespan=[lifespan],
        dependencies={"gw": Provide(provide_state, sync_to_thread=False), "me": provide_me},
        # authentication inserts its middleware first; the limits go in front of it, so a body too large or too
        # deep is refused before a token is looked up; the HTTP metrics around them, so they count every answer;
        # the request id outermost, so every answer carries it and every log line of the request
        on_app_init=[auth.on_app_init, _outermost(RequestLimitsMiddleware(settings.max_json_depth)),
                     _outermost(http_metrics_config().middleware), _outermost(RequestIdMiddleware())],
        state=State({"metrics": metrics}),
        before_send=[add_request_id_header],
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
    document_responses(app)  # the error statuses, event streams and downloads each operation answers
    return app


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
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key", "Range", "X-Request-ID"],
        expose_headers=["Location", "Retry-After", "ETag", "Content-Disposition", "Content-Range",
                        "Accept-Ranges", "X-Request-ID"],
        allow_credentials=False, max_age=600)


def build_background_services(gw: GatewayState) -> None:
    """The long-lived services the lifespan starts (`GatewayState.background_services` gives their order)."""
    gw.registrar = WeightsRegistrar(gw)
    gw.projector = Projector(gw)
    gw.eventhub = EventHub(gw)
    gw.dispatcher = Dispatcher(gw)
    gw.fleet = FleetService(gw)
    gw.sweeper = Sweeper(gw)
    gw.webhooks = WebhookDeliverer(gw)
    gw.sweeps = SweepTracker(gw)
