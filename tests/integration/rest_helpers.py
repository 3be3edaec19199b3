"""Helpers for the REST API tests: a client on a real gateway, direct access to its database and NATS."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats
import uvicorn
from httpx import Response
from litestar.testing import AsyncTestClient
from nats.aio.client import Client as NATS
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from gateway.app import create_app
from gateway.db.models import Checkpoint, Run
from runner.executors.registry import executor_table
from shared.bus import ensure_topology
from shared.contracts import RunnerHeartbeat
from shared.contracts.common import new_id
from shared.contracts.events import DeviceInfo
from shared.settings import Settings
from shared.subjects import Subjects
from tests.auth_support import authorize
from trainforge.embedded import EmbeddedPostgres

CONTAINER = {"kind": "container", "start_command": "echo hello"}


@asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """A test client on a real gateway, logged in as its first admin."""
    async with AsyncTestClient(create_app(settings)) as client:
        yield await authorize(client)


def in_app(client: AsyncTestClient, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:  # type: ignore[type-arg]
    """Run `fn` on the app's event loop: the test client runs the app (its NATS connection, its database
    pool) on a loop of its own, in another thread."""
    return client.blocking_portal.call(functools.partial(fn, *args, **kwargs))


@asynccontextmanager
async def served_gateway(settings: Settings) -> AsyncIterator[str]:
    """A real gateway (uvicorn, on a free loopback port) for tests that need HTTP itself; yields its base URL."""
    async with served_uvicorn(settings) as (url, _):
        yield url


@asynccontextmanager
async def served_uvicorn(settings: Settings) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """`served_gateway`, with its uvicorn server too (its app, or `should_exit` to stop it early)."""
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, lifespan="on", log_level="warning",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(settings.database_url)  # type: ignore[arg-type]
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


@asynccontextmanager
async def postgres_of_own(folder: Path) -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    """A Postgres of one test's own (never the session's, which other tests share), migrated: (server, URL)."""
    from migrations import upgrade

    server = EmbeddedPostgres(folder / "data")
    url = await anyio.to_thread.run_sync(server.start)
    try:
        await anyio.to_thread.run_sync(upgrade, url)
        yield server, url
    finally:
        await anyio.to_thread.run_sync(server.stop)


def postgres_pids(data_dir: Path) -> list[int]:
    """The postmaster and every process it started (backends, checkpointer, ...)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    children = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rpartition(")")[2].split()[1]) == postmaster:
                children.append(int(proc.name))
        except (OSError, IndexError, ValueError):
            pass  # ended while we looked
    return [postmaster, *children]


@contextmanager
def frozen(data_dir: Path) -> Iterator[None]:
    """Every Postgres process stopped with SIGSTOP, continued on the way out whatever happens."""
    pids = postgres_pids(data_dir)
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


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


async def settled(client: AsyncTestClient, run_id: str, timeout: float = 20.0) -> dict[str, Any]:  # type: ignore[type-arg]
    """The run's detail once the dispatcher has looked at it (its job published, or its place in line and
    the reason noted): the POST answers as soon as the run is saved, before that."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        detail = (await client.get(f"/api/v1/runs/{run_id}")).json()
        queue = detail.get("queue")
        if detail["enqueued_at"] or detail["status"] != "queued" or (queue and queue.get("reason")):
            return detail
        assert asyncio.get_running_loop().time() < deadline, f"the dispatcher did not look at run {run_id}"
        await asyncio.sleep(0.1)


async def waits_because(client: AsyncTestClient, run_id: str, reason: str, timeout: float = 30.0) -> dict[str, Any]:  # type: ignore[type-arg]
    """The run's detail once it waits in line for `reason`. Another reason may show first on a loaded machine
    (the runner's first heartbeat not yet seen: "no runner ... is online"); the dispatcher looks again."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        detail = (await client.get(f"/api/v1/runs/{run_id}")).json()
        if (detail.get("queue") or {}).get("reason") == reason or detail["status"] != "queued":
            return detail
        assert asyncio.get_running_loop().time() < deadline, f"run {run_id} waits for {detail.get('queue')}"
        await asyncio.sleep(0.1)


async def enqueued(client: AsyncTestClient, run_id: str, timeout: float = 30.0) -> dict[str, Any]:  # type: ignore[type-arg]
    """The run's detail once its job is published. A reason to wait may show first (e.g. the runner's first
    heartbeat not yet seen on a loaded machine): the dispatcher looks again."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        detail = (await client.get(f"/api/v1/runs/{run_id}")).json()
        if detail["enqueued_at"]:
            return detail
        assert asyncio.get_running_loop().time() < deadline, f"run {run_id} not enqueued: {detail.get('queue')}"
        await asyncio.sleep(0.1)


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


@asynccontextmanager
async def runner_online(settings: Settings, pool: str = "cpu", *, slots: int = 100,
                        devices: list[DeviceInfo] | None = None) -> AsyncIterator[str]:
    """Heartbeats of a runner of `pool` with free slots (no runner behind them), so that the gateway's
    dispatcher publishes the jobs of that pool; yields the runner id."""
    runner_id = f"hb-{new_id()[:8]}"
    names = Subjects(settings.bus_prefix)
    kinds = sorted(executor_table())
    devices = devices or [DeviceInfo(name="test cpu", kind="cpu")]

    async def beat(nc: NATS, seq: int) -> None:
        heartbeat = RunnerHeartbeat(runner_id=runner_id, seq=seq, pool=pool, slots=slots, devices=devices,
                                    kinds=kinds)
        await nc.jetstream().publish(names.runner_heartbeat(runner_id), msgspec.json.encode(heartbeat))

    async def beating(nc: NATS) -> None:
        for seq in itertools.count(2):
            await asyncio.sleep(settings.runner_heartbeat_s / 2)
            await beat(nc, seq)

    async with bus(settings) as nc:
        await ensure_topology(nc.jetstream(), settings)
        await beat(nc, 1)
        task = asyncio.create_task(beating(nc))
        try:
            yield runner_id
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def yolo_runner_online(settings: Settings) -> AsyncIterator[str]:
    """A runner's YOLO services (architecture validation, export formats: `runner.yolo.service`) answering
    the gateway's requests on the bus, without the rest of a runner; yields its runner id. They run on an
    event loop of their own, in a thread, like a runner process: the test client's requests block the test's
    loop while the app handles them."""
    from runner.yolo.service import YoloService

    runner_id = f"yolo-{new_id()[:8]}"
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"yolo-service {runner_id}", daemon=True)
    thread.start()

    async def start() -> tuple[NATS, YoloService]:
        nc = await nats.connect(settings.effective_nats_url)
        service = YoloService(nc, settings, runner_id)
        await service.start()
        return nc, service

    async def stop(nc: NATS, service: YoloService) -> None:
        await service.stop()
        await nc.close()

    nc, service = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(start(), loop))
    try:
        yield runner_id
    finally:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(stop(nc, service), loop))
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
