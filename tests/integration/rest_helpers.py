"""Helpers for the REST API tests: a client on a real gateway, direct access to its database and NATS."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import nats
from httpx import Response
from litestar.testing import AsyncTestClient
from nats.aio.client import Client as NATS
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from gateway.app import create_app
from gateway.db.models import Checkpoint, Run
from shared.contracts.common import new_id
from shared.settings import Settings

CONTAINER = {"kind": "container", "start_command": "echo hello"}


@asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


def in_app(client: AsyncTestClient, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:  # type: ignore[type-arg]
    """Run `fn` on the app's event loop: the test client runs the app (its NATS connection, its database
    pool) on a loop of its own, in another thread."""
    return client.blocking_portal.call(functools.partial(fn, *args, **kwargs))


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(settings.database_url)  # type: ignore[arg-type]
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


@asynccontextmanager
async def bus(settings: Settings) -> AsyncIterator[NATS]:
    nc = await nats.connect(settings.effective_nats_url)
    try:
        yield nc
    finally:
        await nc.close()


async def new_project(client: AsyncTestClient, name: str = "demo", **fields: Any) -> dict[str, Any]:  # type: ignore[type-arg]
    response = await client.post("/api/v1/projects", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def start_run(client: AsyncTestClient, ref: str, body: dict[str, Any] | None = None,  # type: ignore[type-arg]
                    headers: dict[str, str] | None = None) -> Response:
    return await client.post(f"/api/v1/projects/{ref}/runs", json=body or CONTAINER, headers=headers or {})


async def set_run(settings: Settings, run_id: str, **values: Any) -> None:
    """Change a run's row as the projector would (status, attempt, ...)."""
    async with database(settings) as sessions, sessions() as session, session.begin():
        await session.execute(update(Run).where(Run.id == run_id).values(**values))


async def add_checkpoint(settings: Settings, run_id: str, *, step: int, resumable: bool = True,
                         created_at: datetime | None = None) -> str:
    checkpoint_id = new_id()
    async with database(settings) as sessions, sessions() as session, session.begin():
        session.add(Checkpoint(id=checkpoint_id, run_id=run_id, attempt=1, uri=f"/ckpt/{run_id}/{step}.pt",
                               step=step, epoch=step // 10, resumable=resumable, meta={},
                               created_at=created_at or datetime.now(UTC)))
    return checkpoint_id


def problem(response: Response, status: int) -> dict[str, Any]:
    """The problem-details body of an error response, after checking its status and shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status and body["code"] and body["title"] and "detail" in body
    return body
