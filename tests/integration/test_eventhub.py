"""The event hub fans new projected events out to subscribers, one query for all of them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sqlalchemy import text

from gateway.eventhub import QUEUE_MAX, EventHub, HubEvent, Subscription
from gateway.projector import Projector
from gateway.state import GatewayState
from shared.contracts import RunProgress
from shared.settings import Settings
from tests.integration.events_support import add_project_and_runs, gateway_state, publish


@contextlib.asynccontextmanager
async def running_hub(gw: GatewayState, *, wired: bool = False) -> AsyncIterator[EventHub]:
    """An event hub and a projector running. `wired`: the hub is the gateway's, as the lifespan makes it, so
    the projector hands it what it commits."""
    projector, hub = Projector(gw), EventHub(gw)
    if wired:
        gw.eventhub = hub
    await hub.start()
    await projector.start()
    try:
        yield hub
    finally:
        await projector.stop()
        await hub.stop()


async def drain(sub: Subscription, count: int, timeout: float = 10) -> list[HubEvent]:
    got: list[HubEvent] = []
    while len(got) < count:
        event = await sub.next(timeout=timeout)
        if event is None:
            break
        got.append(event)
    return got


async def test_two_hundred_subscribers_each_get_their_events_in_order(settings: Settings) -> None:
    async with gateway_state(settings) as gw:
        project_id, run_ids = await add_project_and_runs(gw, runs=4)
        async with running_hub(gw) as hub:
            run_subs = [hub.subscribe(run_id=run_ids[i % 4]) for i in range(150)]
            project_subs = [hub.subscribe(project_id=project_id) for _ in range(50)]
            assert hub.subscribers == 200
            events = [RunProgress(run_id=r, project_id=project_id, attempt=1, runner_id="w", seq=s,
                                  progress=0.1) for s in range(1, 26) for r in run_ids]
            await publish(gw, *events)
            for i, sub in enumerate(run_subs):
                got = await drain(sub, 25)
                assert [e.run_id for e in got] == [run_ids[i % 4]] * 25
                assert [e.position for e in got] == sorted({e.position for e in got})
            for sub in project_subs:
                assert len(await drain(sub, 100)) == 100
            for sub in run_subs + project_subs:
                sub.close()
            assert hub.subscribers == 0


async def test_a_subscriber_that_falls_too_far_behind_is_dropped_after_what_it_holds(
    settings: Settings,
) -> None:
    async with gateway_state(settings) as gw:
        project_id, (run_id,) = await add_project_and_runs(gw)
        async with running_hub(gw) as hub:
            slow = hub.subscribe(run_id=run_id)
            fast = hub.subscribe(run_id=run_id)
            reader = asyncio.create_task(drain(fast, QUEUE_MAX + 100))
            await publish(gw, *[RunProgress(run_id=run_id, project_id=project_id, attempt=1, runner_id="w",
                                            seq=s, progress=0.5) for s in range(1, QUEUE_MAX + 101)])
            assert len(await asyncio.wait_for(reader, 20)) == QUEUE_MAX + 100
            kept = await drain(slow, QUEUE_MAX + 100)
            assert len(kept) == QUEUE_MAX and slow.ended and await slow.next() is None
            assert hub.subscribers == 1
        assert await fast.next() is None  # the hub stopped: every stream ends


async def test_what_this_gateways_projector_commits_reaches_its_streams_without_a_read_and_reads_as_stored(
    settings: Settings,
) -> None:
    async with gateway_state(settings) as gw:
        project_id, (run_id,) = await add_project_and_runs(gw)

        async def no_read() -> None:  # the NOTIFY path brings nothing: only the projector's handoff can
            return None

        async with running_hub(gw, wired=True) as hub:
            hub._read_new = no_read  # type: ignore[method-assign]
            sub = hub.subscribe(run_id=run_id)
            await publish(gw, *[RunProgress(run_id=run_id, project_id=project_id, attempt=1, runner_id="w", seq=s,
                                            progress=s / 10, message="époque  spaced") for s in range(1, 6)])
            got = await drain(sub, 5)
            async with gw.engine.connect() as conn:
                stored = (await conn.execute(text(
                    "SELECT position, type, body::text FROM events WHERE run_id = :run ORDER BY position"),
                    {"run": run_id})).all()
            assert [(e.position, e.type, e.data) for e in got] == [tuple(row) for row in stored]
