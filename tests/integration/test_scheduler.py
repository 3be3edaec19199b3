"""Fair GPU scheduling against real NATS and Postgres: limits (dispatcher and leases), fair share, priorities,
the line with its reasons, capability matching. Runners run in this process (`RunnerAgent`) or, to be killed
with -9, in a child process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from nats.js.errors import NoKeysError
from sqlalchemy import select

from gateway.auth.caller import Caller
from gateway.db.models import EventRecord, Run
from gateway.services.runs import create_run
from runner.leases import LeaseRecord
from shared.bus import ensure_topology
from shared.contracts import ContainerSpec, Limits, Requirements, RunCompleted, event_decoder
from shared.contracts.events import DeviceInfo
from shared.settings import Settings
from shared.subjects import Subjects
from tests.integration.rest_helpers import (
    api,
    bus,
    database,
    enqueued,
    in_app,
    new_project,
    runner_online,
    settled,
    waits_because,
)
from tests.integration.runner_support import (
    RunEvents,
    container_job,
    publish_job,
    running_agent,
    start_runner_process,
)

TERMINAL = {"completed", "failed", "canceled"}
TERMINAL_TYPES = ("run.completed", "run.failed", "run.canceled")


def _with(settings: Settings, **values: Any) -> Settings:
    return msgspec.structs.replace(settings, **values)


def submit(client: AsyncTestClient, project: str, command: str, *, owner: str | None = None,  # type: ignore[type-arg]
           priority: int = 50, requirements: Requirements | None = None) -> str:
    """Create a run as user `owner` (an admin, so any project will do), on the app's own loop."""
    gw = client.app.state.gw
    spec = ContainerSpec(start_command=command)
    caller = Caller(user_id=owner or "nobody", username=owner or "nobody", is_admin=True)
    run = in_app(client, create_run, gw, project, spec, caller=caller, pool="cpu", priority=priority,
                 requirements=requirements, settle=True)
    return run.id


async def runs(settings: Settings) -> list[Run]:
    async with database(settings) as sessions, sessions() as session:
        return list((await session.execute(select(Run))).scalars())


async def wait_until(check, timeout: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def all_finished(settings: Settings, n: int) -> bool:
    rows = await runs(settings)
    return len(rows) == n and all(r.status in TERMINAL for r in rows)


async def intervals(settings: Settings) -> dict[str, tuple[datetime, datetime]]:
    """run id → (first claim, terminal event) from the projected events."""
    async with database(settings) as sessions, sessions() as session:
        events = (await session.execute(
            select(EventRecord).where(EventRecord.attempt > 0).order_by(EventRecord.position))).scalars()
        spans: dict[str, list[datetime]] = {}
        for e in events:
            if e.type == "run.claimed":
                spans.setdefault(e.run_id, [e.ts, e.ts])
            elif e.type in ("run.completed", "run.failed", "run.canceled") and e.run_id in spans:
                spans[e.run_id][1] = e.ts
    return {run_id: (a, b) for run_id, (a, b) in spans.items()}


def most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


async def runner_seen(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    """Wait until the gateway's dispatcher has the heartbeat of a runner."""
    dispatcher = client.app.state.gw.dispatcher

    async def seen() -> bool:
        return bool(dispatcher.runners)

    await wait_until(seen, timeout=10, what="a runner heartbeat")


@asynccontextmanager
async def jetstream(settings: Settings) -> AsyncIterator[Any]:
    async with bus(settings) as nc:
        js = nc.jetstream()
        await ensure_topology(js, settings)
        yield js


@asynccontextmanager
async def agents(settings: Settings, n: int) -> AsyncIterator[list[Any]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running_agent(settings)) for _ in range(n)]


# -- limits ------------------------------------------------------------------------------------------------


async def test_three_runners_two_users_never_run_more_than_the_limits_and_all_runs_finish(settings: Settings) -> None:
    settings = _with(settings, max_running_global=2, max_running_per_user=1)
    async with agents(settings, 3), api(settings) as client:
        await new_project(client, "lim")
        owners = {submit(client, "lim", "sleep 0.4", owner=owner): owner
                  for owner in ["alice", "bob"] * 3}
        await wait_until(lambda: all_finished(settings, 6), timeout=40, what="all runs to finish")
    assert all(r.status == "completed" for r in await runs(settings))
    spans = await intervals(settings)
    assert set(spans) == set(owners)
    assert most_at_once(list(spans.values())) == 2
    for user in ("alice", "bob"):
        assert most_at_once([s for run_id, s in spans.items() if owners[run_id] == user]) == 1


async def test_runners_hold_the_limits_with_leases_even_for_jobs_published_past_the_dispatcher(
    settings: Settings,
) -> None:
    settings = _with(settings, max_running_global=1)
    async with jetstream(settings) as js, agents(settings, 3):
        jobs = [msgspec.structs.replace(container_job("sleep 0.3"), limits=Limits(total=1)) for _ in range(3)]
        async with AsyncExitStack() as stack:
            watches = [await stack.enter_async_context(RunEvents(js, settings, job)) for job in jobs]
            for job in jobs:
                await publish_job(js, settings, job)
            ends = [await w.wait_for_type("run.completed", "run.failed", timeout=30) for w in watches]
            claims = [await w.wait_for_type("run.claimed") for w in watches]
    assert all(end.type == "run.completed" for end in ends)
    assert most_at_once([(c.ts, e.ts) for c, e in zip(claims, ends, strict=True)]) == 1


async def test_a_runner_killed_holding_leases_frees_them_after_the_ttl_and_other_work_proceeds(
    settings: Settings, tmp_path: Path,
) -> None:
    # ack_wait long: the killed runner's job is not delivered again during the test, only the TTL frees the slot
    settings = _with(settings, lease_ttl_s=3.0, job_ack_wait_s=60.0)
    names = Subjects(settings.bus_prefix)
    limits = Limits(total=1)
    first = msgspec.structs.replace(container_job("sleep 600"), limits=limits)
    second = msgspec.structs.replace(container_job("true"), limits=limits)
    async with jetstream(settings) as js:
        proc = start_runner_process(settings, "doomed", tmp_path / "doomed.log")
        try:
            async with RunEvents(js, settings, first) as events:
                await publish_job(js, settings, first)
                await events.wait_for_type("run.started", timeout=30)
            kv = await js.key_value(names.leases_bucket)
            holder = msgspec.json.decode((await kv.get("global.0")).value, type=LeaseRecord)
            assert (holder.run_id, holder.runner_id) == (first.run_id, "doomed")
            os.kill(proc.pid, signal.SIGKILL)
            killed = time.monotonic()
        finally:
            proc.kill()
            proc.wait()
        async with RunEvents(js, settings, second) as events, running_agent(settings):
            await publish_job(js, settings, second)
            claimed = await events.wait_for_type("run.claimed", timeout=20)
            waited = time.monotonic() - killed
            done = await events.wait_for_type("run.completed", "run.failed", timeout=10)
        with pytest.raises(NoKeysError):  # released at the end of the run
            await kv.keys()
    assert done.type == "run.completed"
    assert 2.0 <= waited < 15, waited  # not before the lease lapsed
    assert claimed.attempt >= 1


# -- the line ----------------------------------------------------------------------------------------------


async def test_fair_share_one_users_flood_does_not_starve_another_users_single_run(settings: Settings) -> None:
    async with running_agent(settings), api(settings) as client:
        await new_project(client, "fair")
        await runner_seen(client)
        flood = [submit(client, "fair", "sleep 0.3", owner="alice") for _ in range(10)]
        single = submit(client, "fair", "sleep 0.1", owner="bob")
        detail = (await client.get(f"/api/v1/runs/{single}")).json()
        assert detail["queue"]["position"] == 1, detail["queue"]

        async def bob_done() -> bool:
            return any(r.id == single and r.status == "completed" for r in await runs(settings))

        await wait_until(bob_done, timeout=20, what="bob's run")
        rows = {r.id: r for r in await runs(settings)}
        started_before_bob = [i for i in flood if rows[i].started_at and rows[i].started_at < rows[single].started_at]
        assert len(started_before_bob) <= 1, started_before_bob
        for run_id in flood:  # done: no need to wait for the rest
            await client.post(f"/api/v1/runs/{run_id}/cancel")


async def test_priorities_order_one_users_line_and_the_queue_lists_it(settings: Settings) -> None:
    async with runner_online(settings, slots=1), api(settings) as client:
        await new_project(client, "prio")
        busy = submit(client, "prio", "sleep 1", owner="carol")  # takes the only slot (no runner claims it)

        async def busy_dispatched() -> bool:  # else the three below could race it for the slot
            return any(r.id == busy and r.enqueued_at is not None for r in await runs(settings))

        await wait_until(busy_dispatched, what="the first run's job published")
        low, high, mid = (submit(client, "prio", "true", owner="carol", priority=p) for p in (10, 90, 50))
        line = (await client.get("/api/v1/queue", params={"pool": "cpu"})).json()
    assert [e["run_id"] for e in line["items"]] == [high, mid, low] and line["total"] == 3
    assert [e["position"] for e in line["items"]] == [1, 2, 3]
    assert {e["reason"] for e in line["items"]} == {"all runners of pool cpu that fit are busy"}
    assert busy not in {e["run_id"] for e in line["items"]}


async def test_a_queued_run_shows_why_it_waits_and_its_place_in_line(settings: Settings) -> None:
    settings = _with(settings, max_running_per_user=1, max_running_per_project=3, max_running_global=3)
    async with runner_online(settings), api(settings) as client:
        await new_project(client, "why")
        await new_project(client, "why2")
        first = (await client.get(f"/api/v1/runs/{submit(client, 'why', 'sleep 5', owner='dave')}")).json()
        assert first["queue"] is None and first["enqueued_at"]  # published at once
        second = (await client.get(f"/api/v1/runs/{submit(client, 'why', 'true', owner='dave')}")).json()
        assert second["queue"] == {"position": 1, "reason": "your limit of 1 running run reached"}
        for owner in ("erin", "frank"):
            submit(client, "why", "sleep 5", owner=owner)
        project_full = (await client.get(f"/api/v1/runs/{submit(client, 'why', 'true', owner='gina')}")).json()
        assert project_full["queue"]["reason"] == "global limit of 3 running runs reached"
        assert (await client.get("/api/v1/queue")).json()["total"] == 2
        assert (await client.get("/api/v1/queue", params={"pool": "gpu"})).json()["total"] == 0
        assert (await client.get("/api/v1/queue", params={"pool": "a b"})).status_code == 400


async def test_project_limit_is_a_reason_of_its_own(settings: Settings) -> None:
    settings = _with(settings, max_running_per_project=1)
    async with runner_online(settings), api(settings) as client:
        await new_project(client, "pl")
        submit(client, "pl", "sleep 5", owner="a")
        waiting = (await client.get(f"/api/v1/runs/{submit(client, 'pl', 'true', owner='b')}")).json()
    assert waiting["queue"] == {"position": 1, "reason": "project limit of 1 running run reached"}


# -- capabilities ------------------------------------------------------------------------------------------


async def test_a_run_needing_gpu_memory_waits_on_a_cpu_fleet_with_a_clear_reason_and_can_be_canceled(
    settings: Settings,
) -> None:
    async with runner_online(settings), api(settings) as client:
        await new_project(client, "big")
        created = await client.post("/api/v1/projects/big/runs", json={
            "kind": "container", "start_command": "true", "requirements": {"min_gpu_memory_mb": 16000}})
        assert created.status_code == 201, created.text
        run = created.json()
        assert run["requirements"] == {"device": "any", "min_gpu_memory_mb": 16000, "gpus": 1}
        reason = "no runner in pool cpu has a GPU with ≥ 16000 MB memory"
        detail = await waits_because(client, run["id"], reason)
        assert detail["status"] == "queued" and detail["enqueued_at"] is None
        assert detail["queue"] == {"position": 1, "reason": reason}
        bad = await client.post("/api/v1/projects/big/runs", json={
            "kind": "container", "start_command": "true", "requirements": {"gpu": 1}})
        assert bad.status_code == 422 and "gpu" in bad.text
        canceled = await client.post(f"/api/v1/runs/{run['id']}/cancel")
        assert canceled.status_code == 202 and canceled.json()["status"] == "canceled"
        assert (await client.get("/api/v1/queue")).json()["total"] == 0


async def test_a_run_for_a_pool_without_runners_or_kinds_says_so(settings: Settings) -> None:
    gpu = DeviceInfo(name="H100", kind="cuda", index=0, memory_total_mb=81920)
    async with runner_online(settings, "gpu", devices=[gpu]), api(settings) as client:
        await new_project(client, "pools")
        nobody = await client.post("/api/v1/projects/pools/runs",
                                   json={"kind": "container", "start_command": "true", "pool": "tpu"})
        assert (await settled(client, nobody.json()["id"]))["queue"]["reason"] == (
            "no runner of pool tpu is online")
        fits = await client.post("/api/v1/projects/pools/runs", json={
            "kind": "container", "start_command": "true", "pool": "gpu",
            "requirements": {"device": "cuda", "min_gpu_memory_mb": 40000}})
        assert (await enqueued(client, fits.json()["id"]))["queue"] is None  # (the runner's first beat may come late)
        two = await client.post("/api/v1/projects/pools/runs", json={
            "kind": "container", "start_command": "true", "pool": "gpu", "requirements": {"gpus": 2, "device": "cuda"}})
        reason = "no runner in pool gpu has 2 GPUs"
        assert (await waits_because(client, two.json()["id"], reason))["queue"]["reason"] == reason


async def test_a_runner_hands_back_a_job_it_cannot_fit_without_claiming_it(settings: Settings) -> None:
    names = Subjects(settings.bus_prefix)
    job = msgspec.structs.replace(container_job("true"), requirements=Requirements(device="cuda"))
    async with jetstream(settings) as js, running_agent(settings):
        async with RunEvents(js, settings, job) as events:
            await publish_job(js, settings, job)
            with pytest.raises(TimeoutError):
                await events.wait_for_type("run.claimed", timeout=1.5)
        info = await js.consumer_info(names.jobs_stream, names.pool_consumer("cpu"))
    assert info.num_pending + info.num_ack_pending == 1  # still there for a runner that fits


async def test_a_killed_runners_slot_frees_when_its_leases_lapse_and_its_next_attempt_waits_for_a_slot(
    settings: Settings, tmp_path: Path,
) -> None:
    # Ack wait long: the killed run comes back only when its runner restarts (as under `up`), so the waiting
    # run can only have started because the dead run's leases lapsed.
    settings = _with(settings, max_running_global=1, lease_ttl_s=3.0, job_ack_wait_s=60.0)
    names = Subjects(settings.bus_prefix)
    trace, gate = tmp_path / "trace.txt", tmp_path / "second-may-end"
    first_cmd = (f'echo "start first $TRAINFORGE_ATTEMPT" >> {trace}; '
                 '[ "$TRAINFORGE_ATTEMPT" = 1 ] && { sleep 600 & echo $!; echo $$; wait; }; '
                 f'echo "end first $TRAINFORGE_ATTEMPT" >> {trace}')
    second_cmd = (f'echo "start second" >> {trace}; while [ ! -e {gate} ]; do sleep 0.1; done; '
                  f'echo "end second" >> {trace}')
    pids: list[int] = []
    processes = []
    events: list[Any] = []

    async def until(match: Any, timeout: float = 30) -> Any:  # the next event (or one seen) that matches
        for event in events:
            if match(event):
                return event
        async with asyncio.timeout(timeout):
            while True:
                event = event_decoder.decode((await sub.next_msg(timeout=None)).data)
                events.append(event)
                if match(event):
                    return event

    try:
        async with jetstream(settings) as js, api(settings) as client:
            project = (await new_project(client, "dead"))["id"]
            sub = await js.subscribe(names.run_events(project, "*"), ordered_consumer=True)
            processes.append(start_runner_process(settings, "r1", tmp_path / "r1.log"))
            await runner_seen(client)
            first = submit(client, "dead", first_cmd, owner="alice")

            def stdout() -> list[str]:
                return [line.text for e in events if e.type == "run.log"
                        for line in e.lines if line.stream == "stdout"]

            await until(lambda _: len(stdout()) >= 2)  # the child (sleep), then bash
            pids = [int(line) for line in stdout()[:2]]
            second = submit(client, "dead", second_cmd, owner="bob")  # waits: the global limit is 1
            async with running_agent(settings, runner_id="r2", slots=1):
                processes[0].kill()  # -9: no final event, its leases lapse lease_ttl_s after their last renewal
                processes[0].wait()
                started = await until(lambda e: e.run_id == second and e.type == "run.started")
                rows = {r.id: r for r in await runs(settings)}
                assert (rows[first].status, rows[first].attempt) == ("running", 1)  # Postgres still says so
                # restarted under the same id: it hands the run on at once; the next attempt finds the slot
                # taken, reports the run queued again and waits with the job for a free slot
                processes.append(start_runner_process(settings, "r1", tmp_path / "r1.log"))
                waiting = await until(lambda e: e.run_id == first and e.type == "run.requeued" and e.attempt > 1)
                assert not any(e.run_id == first and e.type == "run.started" and e.attempt > 1 for e in events)
                gate.touch()
                done = await until(lambda e: e.run_id == first and e.type in TERMINAL_TYPES)
                second_done = await until(lambda e: e.run_id == second and e.type in TERMINAL_TYPES)
            await sub.unsubscribe()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert (done.type, done.attempt) == ("run.completed", waiting.attempt)  # no delivery used up by waiting
    assert second_done.type == "run.completed"
    assert events.index(started) < events.index(done)
    # what really ran, in order: never two at once
    assert trace.read_text().splitlines() == [
        "start first 1", "start second", "end second", f"start first {done.attempt}", f"end first {done.attempt}"]


# -- the fast path and live slots ----------------------------------------------------------------------------


async def test_a_new_run_is_published_by_the_fast_path_and_a_slot_frees_on_the_live_terminal_event(
    settings: Settings,
) -> None:
    """Nothing waits: the job goes out from the request's fast path. The only slot is taken: the next run
    waits; it is published as soon as the dispatcher is told of the first run's terminal event (as the
    projector does when it fetches one, before storing it), while Postgres still shows the first run queued."""
    async with runner_online(settings, slots=1), api(settings) as client:
        gw = client.app.state.gw
        dispatcher = gw.dispatcher
        project = await new_project(client, "fast")
        await runner_seen(client)
        await wait_until(lambda: _true(dispatcher._view is not None), what="the dispatcher's first pass")
        first = (await client.post("/api/v1/projects/fast/runs", json={"kind": "container",
                                                                      "start_command": "true"})).json()
        assert (await settled(client, first["id"]))["enqueued_at"]
        assert dispatcher.fast_published == 1
        second = (await client.post("/api/v1/projects/fast/runs", json={"kind": "container",
                                                                       "start_command": "true"})).json()
        assert (await settled(client, second["id"]))["queue"]["reason"] == "all runners of pool cpu that fit are busy"
        assert dispatcher.fast_published == 1  # it waited for a pass: it did not jump the line
        assert "run.completed" in dispatcher.live_types
        done = RunCompleted(run_id=first["id"], project_id=project["id"], attempt=1, runner_id="hb", seq=1,
                            exit_code=0)
        in_app(client, _call, dispatcher.saw, done)  # (never published: nothing stores it)

        async def second_published() -> bool:
            return any(r.id == second["id"] and r.enqueued_at is not None for r in await runs(settings))

        await wait_until(second_published, what="the waiting run published on the live terminal event")
        assert {r.id: r.status for r in await runs(settings)}[first["id"]] == "queued"  # not projected


async def _true(value: bool) -> bool:
    return value


async def _call(fn: Any, *args: Any) -> None:
    fn(*args)
