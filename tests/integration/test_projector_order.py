"""The projector stores each (run, attempt)'s events in seq order with no gap: an event behind a missing seq
is held until the gap fills (or for at most `projector_gap_wait_s`), so no reader sees a terminal event before
the events it ends; a training's completion waits for its registration."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
import pytest
from nats.js import api as js_api
from sqlalchemy import select, text, update

from gateway import projector as projector_module
from gateway.db.models import EventRecord, Run
from gateway.projector import Projector
from gateway.state import GatewayState
from shared.contracts import EventBase, RunArtifact, RunClaimed, RunCompleted, RunLog, RunStarted
from shared.contracts.events import LogLine
from shared.settings import Settings
from tests.integration.events_support import (
    add_project_and_runs,
    event_count,
    gateway_state,
    publish,
    run_row,
    wait_for,
)


def log_events(project_id: str, run_id: str, count: int, attempt: int = 1) -> list[EventBase]:
    """claimed, started, `count - 3` run.log events, completed: seq 1..count."""
    base = {"run_id": run_id, "project_id": project_id, "attempt": attempt, "runner_id": f"w{attempt}"}
    events: list[EventBase] = [RunClaimed(**base, seq=1), RunStarted(**base, seq=2)]
    events += [RunLog(**base, seq=seq, lines=[LogLine("stdout", str(seq))]) for seq in range(3, count)]
    events.append(RunCompleted(**base, seq=count, exit_code=0))
    return events


async def stored_seqs(gw: GatewayState, run_id: str) -> list[int]:
    """The run's seqs in position order (what SSE and /logs readers get)."""
    async with gw.sessionmaker() as session:
        return list((await session.execute(select(EventRecord.seq).where(EventRecord.run_id == run_id)
                                           .order_by(EventRecord.position))).scalars())


async def _count_is(gw: GatewayState, run_id: str, n: int) -> bool:
    return await event_count(gw, run_id) == n


async def test_an_event_behind_a_seq_gap_is_stored_only_once_the_gap_fills(settings: Settings) -> None:
    async with gateway_state(settings) as gw:
        project_id, (run_id,) = await add_project_and_runs(gw)
        events = log_events(project_id, run_id, 6)
        projector = Projector(gw)
        await projector.start()
        try:
            await publish(gw, *events[:2], *events[3:])  # seq 3 is missing
            await wait_for(lambda: _count_is(gw, run_id, 2), what="seq 1 and 2 stored")

            async def held() -> bool:
                return len(projector._held) == 3

            await wait_for(held, what="seq 4..6 held")
            assert await stored_seqs(gw, run_id) == [1, 2]
            assert (await run_row(gw, run_id)).status == "running"

            await publish(gw, events[2])
            await wait_for(lambda: _count_is(gw, run_id, 6), what="the gap filled")
        finally:
            await projector.stop()
        assert await stored_seqs(gw, run_id) == [1, 2, 3, 4, 5, 6]
        assert (await run_row(gw, run_id)).status == "completed"
        assert projector.given_up == 0


async def test_a_gap_that_never_fills_is_given_up_loudly_after_the_bound(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = msgspec.structs.replace(settings, projector_gap_wait_s=1.0)
    async with gateway_state(settings) as gw:
        project_id, (run_id,) = await add_project_and_runs(gw)
        events = log_events(project_id, run_id, 5)
        projector = Projector(gw)
        await projector.start()
        try:
            with caplog.at_level(logging.ERROR, logger="gateway.projector"):
                await publish(gw, events[0], *events[2:])  # seq 2 never comes (a publish the runner gave up)

                async def held() -> bool:
                    return len(projector._held) == 3

                await wait_for(held, what="seq 3..5 held")
                held_at = time.monotonic()
                await wait_for(lambda: _count_is(gw, run_id, 4), what="the gap given up")
                waited = time.monotonic() - held_at
        finally:
            await projector.stop()
        assert await stored_seqs(gw, run_id) == [1, 3, 4, 5]
        assert (await run_row(gw, run_id)).status == "completed"
        assert projector.given_up == 1
        assert waited < settings.projector_gap_wait_s + 5
        assert any("seq 2..2 did not arrive" in r.getMessage() for r in caplog.records), caplog.text


async def test_events_a_dead_projector_had_fetched_come_back_within_the_ack_wait_and_in_order(
    settings: Settings,
) -> None:
    """A gateway killed mid-batch: its fetched, unacked events return after the ack wait; the events fetched
    after them by the next projector (the run's terminal event among them) wait for them."""
    settings = msgspec.structs.replace(settings, projector_ack_wait_s=2.0)
    async with gateway_state(settings) as gw:
        project_id, (run_id,) = await add_project_and_runs(gw)
        events = log_events(project_id, run_id, 300)
        first = Projector(gw)  # creates the durable consumer, then goes away
        await first.start()
        await first.stop()
        await publish(gw, *events)
        names = gw.subjects
        dead = await gw.js.pull_subscribe_bind(durable=names.projector_consumer, stream=names.events_stream)
        fetched = await dead.fetch(100, timeout=5)  # the dead gateway's batch: never acked
        assert [msgspec.json.decode(m.data)["seq"] for m in fetched] == list(range(1, 101))
        await dead.unsubscribe()

        started = time.monotonic()
        projector = Projector(gw)
        await projector.start()
        try:
            await wait_for(lambda: _count_is(gw, run_id, 300), timeout=30, what="every event stored")
            elapsed = time.monotonic() - started
        finally:
            await projector.stop()
        assert await stored_seqs(gw, run_id) == list(range(1, 301))
        assert elapsed < settings.projector_ack_wait_s + 5
        assert projector.given_up == 0


async def test_a_projector_consumer_left_with_a_long_ack_wait_gets_the_configured_one(
    settings: Settings,
) -> None:
    async with gateway_state(settings) as gw:
        names = gw.subjects
        await gw.js.add_consumer(names.events_stream, js_api.ConsumerConfig(
            durable_name=names.projector_consumer, filter_subject=names.events_all,
            ack_policy=js_api.AckPolicy.EXPLICIT, deliver_policy=js_api.DeliverPolicy.ALL, ack_wait=30.0,
            max_deliver=-1, max_ack_pending=10_000))
        projector = Projector(gw)
        await projector.start()
        await projector.stop()
        info = await gw.js.consumer_info(names.events_stream, names.projector_consumer)
        assert info.config.ack_wait == settings.projector_ack_wait_s


class FakeRegistrar:
    """Records what the projector asks; the test writes `runs.registration` as the registrar would."""

    def __init__(self) -> None:
        self.prepared: list[str] = []
        self.submitted: list[str] = []
        self.asked = asyncio.Event()

    def prepare(self, run_id: str, completion: RunCompleted) -> None:
        assert isinstance(completion, RunCompleted)
        self.prepared.append(run_id)
        self.asked.set()

    def submit(self, run_ids: list[str]) -> None:
        self.submitted.extend(run_ids)


async def _training(gw: GatewayState) -> tuple[str, str, list[EventBase]]:
    project_id, (run_id,) = await add_project_and_runs(gw)
    async with gw.sessionmaker.begin() as session:
        await session.execute(update(Run).where(Run.id == run_id).values(kind="yolo.train"))
    base = {"run_id": run_id, "project_id": project_id, "attempt": 1, "runner_id": "w1"}
    events: list[EventBase] = [
        RunClaimed(**base, seq=1), RunStarted(**base, seq=2),
        RunArtifact(**base, seq=3, name="weights/best.pt", uri="file:///nowhere/best.pt", kind="weights"),
        RunCompleted(**base, seq=4, exit_code=0, result={"metrics": {"fitness": 0.5}}),
    ]
    return project_id, run_id, events


async def test_a_trainings_completion_is_stored_only_after_its_registration(settings: Settings) -> None:
    async with gateway_state(settings) as gw:
        _, run_id, events = await _training(gw)
        registrar = FakeRegistrar()
        gw.registrar = registrar
        projector = Projector(gw)
        await projector.start()
        try:
            await publish(gw, *events)
            await asyncio.wait_for(registrar.asked.wait(), 10)
            await wait_for(lambda: _count_is(gw, run_id, 3), what="the events before the completion")
            assert (await run_row(gw, run_id)).status == "running"
            registration: dict[str, Any] = {"model": "m", "version": 1, "model_version_id": "v", "ref": "m:1"}
            async with gw.sessionmaker.begin() as session:
                await session.execute(update(Run).where(Run.id == run_id).values(registration=registration))
            await wait_for(lambda: _count_is(gw, run_id, 4), what="the completion stored")
        finally:
            await projector.stop()
        run = await run_row(gw, run_id)
        assert run.status == "completed" and run.registration == registration
        assert registrar.prepared and registrar.submitted == []  # registered already: nothing to do after


async def test_a_completion_waits_for_the_registrar_at_most_its_bound(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(projector_module, "REGISTRATION_WAIT_S", 0.5)
    async with gateway_state(settings) as gw:
        _, run_id, events = await _training(gw)
        registrar = FakeRegistrar()  # never registers anything
        gw.registrar = registrar
        projector = Projector(gw)
        await projector.start()
        try:
            await publish(gw, *events)
            await wait_for(lambda: _count_is(gw, run_id, 4), what="the completion, without registration")
        finally:
            await projector.stop()
        run = await run_row(gw, run_id)
        assert run.status == "completed" and run.registration is None
        assert registrar.submitted == [run_id]  # the registrar registers it after the fact
        async with gw.sessionmaker() as session:
            query = text("SELECT type FROM events WHERE run_id = :r ORDER BY position")
            types = (await session.execute(query, {"r": run_id})).scalars().all()
        assert types == ["run.claimed", "run.started", "run.artifact", "run.completed"]
