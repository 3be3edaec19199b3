"""What the gateway holds while it runs, built by the lifespan and handed to controllers via DI."""

from __future__ import annotations

from dataclasses import dataclass, field

from litestar.di import NamedDependency
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.jobsign import JobSigner
from shared.settings import Settings
from shared.subjects import Subjects


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
    extras: dict[str, object] = field(default_factory=dict)
    """Long-lived helpers started by the lifespan (projector, event hub), by name."""


Gateway = NamedDependency[GatewayState]
"""How a route handler asks for the gateway's state: `async def handler(self, gw: Gateway) -> ...`."""
