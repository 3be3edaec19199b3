"""What the gateway holds while it runs, built by the lifespan and handed to controllers via DI."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from litestar.di import NamedDependency
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.auth.cache import CallerCache
from gateway.metrics import GatewayMetrics
from shared.jobsign import JobSigner
from shared.settings import Settings
from shared.subjects import Subjects

if TYPE_CHECKING:  # the services import this module; they are built by the lifespan (gateway.app)
    from gateway.background import BackgroundService, Supervisor
    from gateway.controllers.export_formats import ExportFormatsCache
    from gateway.dispatcher import Dispatcher
    from gateway.eventhub import EventHub
    from gateway.fleet import FleetService
    from gateway.projector import Projector
    from gateway.registration import WeightsRegistrar
    from gateway.sweeper import Sweeper
    from gateway.sweeps_tracker import SweepTracker
    from gateway.webhooks.deliverer import WebhookDeliverer
else:  # at run time Litestar (msgspec) reads these annotations when it injects the state: the types are mypy's
    BackgroundService = Supervisor = ExportFormatsCache = Dispatcher = EventHub = FleetService = Projector = Any
    WeightsRegistrar = Sweeper = SweepTracker = WebhookDeliverer = Any


@dataclass
class GatewayState:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    nc: NATS
    js: JetStreamContext
    subjects: Subjects
    jwt_secret: str = ""
    """Signs and checks access tokens (`gateway.auth`)."""
    job_signer: JobSigner | None = None
    """Signs every job published (`gateway.bus.load_job_signer`); None: jobs go out unsigned."""
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    """This app's Prometheus metrics (`gateway.metrics`)."""
    callers: CallerCache = field(default_factory=lambda: CallerCache(5.0))
    """Who a token is, for a few seconds (`gateway.auth.cache`); built from `Settings.auth_cache_s`."""
    # The background services, built and started by the lifespan in this order (None until then, and in
    # tests that build a state by hand); `background_services()` lists them, `supervisor` watches them.
    registrar: WeightsRegistrar | None = None
    projector: Projector | None = None
    eventhub: EventHub | None = None
    dispatcher: Dispatcher | None = None
    fleet: FleetService | None = None
    sweeper: Sweeper | None = None
    webhooks: WebhookDeliverer | None = None
    sweeps: SweepTracker | None = None
    supervisor: Supervisor | None = None
    export_formats: ExportFormatsCache | None = None
    """A runner's list of export formats, kept a few minutes (`gateway.controllers.export_formats`)."""

    @functools.cached_property
    def autocommit(self) -> async_sessionmaker[AsyncSession]:
        """Sessions whose every statement commits on its own: no BEGIN and COMMIT round trips, for work whose
        one write is a single statement (`services.runs.create_run`: reads, then one CTE)."""
        return async_sessionmaker(self.engine.execution_options(isolation_level="AUTOCOMMIT"),
                                  expire_on_commit=False)

    def background_services(self) -> list[tuple[str, BackgroundService]]:
        """(name, service) of the services built so far, in start order."""
        named: list[tuple[str, BackgroundService | None]] = [
            ("registrar", self.registrar), ("projector", self.projector), ("eventhub", self.eventhub),
            ("dispatcher", self.dispatcher), ("fleet", self.fleet), ("sweeper", self.sweeper),
            ("webhooks", self.webhooks), ("sweeps", self.sweeps)]
        return [(name, service) for name, service in named if service is not None]


Gateway = NamedDependency[GatewayState]
"""How a route handler asks for the gateway's state: `async def handler(self, gw: Gateway) -> ...`."""
