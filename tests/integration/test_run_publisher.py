"""RunPublisher: numbered events, batched log lines, and no event lost across a NATS restart."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js import JetStreamContext

from runner.publisher import RunPublisher
from shared.bus import connect, ensure_topology
from shared.settings import Settings
from shared.subjects import Subjects
from tests.integration.runner_support import RunEvents, container_job
from trainforge.embedded import nats_server_binary


async def _bus(settings: Settings) -> tuple[nats.NATS, JetStreamContext]:
    """A connection to the test's NATS with the streams in place."""
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await ensure_topology(js, settings)
    return nc, js


async def test_log_lines_are_batched_and_other_events_keep_their_place(settings: Settings) -> None:
    nc, js = await _bus(settings)
    job = container_job("unused")
    publisher = RunPublisher(js, Subjects(settings.bus_prefix), job, attempt=3, runner_id="r1")
    async with RunEvents(js, settings, job) as events:
        await publisher.claimed(host="h", device="cpu")
        for i in range(150):
            await publisher.log(f"line {i}")
        await publisher.progress(0.5, step=1, total=2)
        await publisher.log("after progress", "stderr")
        await asyncio.sleep(0.5)  # the timer flushes a partial batch
        checkpoint_id = await publisher.checkpoint("/ckpt/a.pt", step=1)
        await publisher.completed()
        await events.wait_for_type("run.completed")
    await nc.close()
    types = events.types()
    assert types == ["run.claimed", "run.log", "run.log", "run.progress", "run.log", "run.checkpoint", "run.completed"]
    assert [len(e.lines) for e in events.events if e.type == "run.log"] == [100, 50, 1]  # type: ignore[attr-defined]
    assert events.log_lines() == [f"line {i}" for i in range(150)]
    assert [e.seq for e in events.events] == list(range(1, 8)) and publisher.seq == 7
    assert {e.attempt for e in events.events} == {3}
    assert events.events[5].checkpoint_id == checkpoint_id  # type: ignore[attr-defined]


async def test_a_pipelined_block_sends_its_events_in_order_and_waits_for_all_of_them_at_its_end(
        settings: Settings) -> None:
    nc, js = await _bus(settings)
    job = container_job("unused")
    publisher = RunPublisher(js, Subjects(settings.bus_prefix), job, attempt=1, runner_id="r1")
    async with RunEvents(js, settings, job) as events:
        async with publisher.pipelined():
            await publisher.claimed(host="h", device="cpu")
            await publisher.started()
            await publisher.log("a line")
            await publisher.completed(result={"n": 1})
        await events.wait_for_type("run.completed")
    types = events.types()
    assert types == ["run.claimed", "run.started", "run.log", "run.completed"]
    assert [e.seq for e in events.events] == [1, 2, 3, 4]

    lost = RunPublisher(js, Subjects(settings.bus_prefix), container_job("lost"), attempt=1, runner_id="r1")
    await nc.close()  # nothing can be sent now: the block's end raises what the publishes met
    with pytest.raises(nats.errors.ConnectionClosedError):
        async with lost.pipelined():
            await lost.claimed(host="h", device="cpu")
            await lost.started()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RestartableNats:
    """A nats-server on a fixed port with its own store, so it can be stopped and started again."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(self.port), "-m", "-1",
             "-js", "-sd", str(self.data_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[RestartableNats]:
    server = RestartableNats(tmp_path / "js")
    server.start()
    yield server
    server.stop()


async def test_events_published_while_nats_restarts_are_not_lost(tmp_path: Path, own_nats: RestartableNats) -> None:
    settings = Settings(nats_url=own_nats.url, bus_prefix="restart", state_dir=tmp_path)
    for _ in range(100):
        try:
            nc = await connect(own_nats.url, name="publisher-test")
            break
        except Exception:  # noqa: BLE001 - server still starting
            await asyncio.sleep(0.05)
    js = nc.jetstream()
    await ensure_topology(js, settings)
    job = container_job("unused")
    publisher = RunPublisher(js, Subjects(settings.bus_prefix), job, attempt=1, runner_id="r1", deadline_s=20)
    await publisher.claimed(host="h", device="cpu")
    own_nats.stop()
    pending = asyncio.create_task(publisher.started())
    await asyncio.sleep(1.0)
    assert not pending.done()
    own_nats.start()
    await asyncio.wait_for(pending, 20)
    await publisher.completed()
    async with RunEvents(js, settings, job) as events:
        await events.wait_for_type("run.completed")
    await nc.close()
    assert [(e.type, e.seq) for e in events.events] == [("run.claimed", 1), ("run.started", 2), ("run.completed", 3)]
