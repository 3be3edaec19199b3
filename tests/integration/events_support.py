"""Helpers for the projection and SSE tests: a GatewayState on real NATS and Postgres, rows, events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from sqlalchemy import func, select

from gateway.bus import load_job_signer
from gateway.db.models import EventRecord, Project, Run
from gateway.db.session import create_engine, create_sessionmaker
from gateway.state import GatewayState
from shared.bus import connect, ensure_topology
from shared.contracts import EventBase
from shared.contracts.common import new_id
from shared.settings import Settings
from shared.subjects import Subjects


@asynccontextmanager
async def gateway_state(settings: Settings) -> AsyncIterator[GatewayState]:
    engine = create_engine(settings.database_url)  # type: ignore[arg-type]
    nc = await connect(settings, name="test")
    js = nc.jetstream()
    await ensure_topology(js, settings)
    try:
        yield GatewayState(settings=settings, engine=engine, sessionmaker=create_sessionmaker(engine), nc=nc,
                           js=js, subjects=Subjects(settings.bus_prefix),
                           job_signer=load_job_signer(settings))
    finally:
        await nc.drain()
        await engine.dispose()


async def add_project_and_runs(
    gw: GatewayState, runs: int = 1, name: str | None = None
) -> tuple[str, list[str]]:
    project_id = new_id()
    run_ids = [new_id() for _ in range(runs)]
    async with gw.sessionmaker.begin() as session:
        session.add(Project(id=project_id, name=name or f"p-{project_id[:8]}"))
        await session.flush()
        for run_id in run_ids:
            session.add(Run(id=run_id, project_id=project_id, kind="container", pool="cpu", spec={}))
    return project_id, run_ids


async def publish(
    gw: GatewayState, *events: EventBase, msg_id: Callable[[EventBase], str] | None = None
) -> None:
    """Publish events to the events stream (all at once, then wait for every ack)."""
    acks = [
        await gw.js.publish_async(gw.subjects.run_event(e.project_id, e.run_id, e.type),
                                  msgspec.json.encode(e),
                                  headers={"Nats-Msg-Id": msg_id(e) if msg_id else e.msg_id})
        for e in events
    ]
    await asyncio.gather(*acks)


async def event_count(gw: GatewayState, run_id: str | None = None) -> int:
    query = select(func.count()).select_from(EventRecord)
    if run_id:
        query = query.where(EventRecord.run_id == run_id)
    async with gw.sessionmaker() as session:
        return (await session.execute(query)).scalar_one()


async def run_row(gw: GatewayState, run_id: str) -> Run:
    async with gw.sessionmaker() as session:
        return (await session.execute(select(Run).where(Run.id == run_id))).scalar_one()


async def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
