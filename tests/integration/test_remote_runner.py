"""Runners set up as for other hosts (docs/fleet.md): each with its own state folder and
`TRAINFORGE_ARTIFACT_STORE=nats`, so weights and checkpoints travel in the JetStream object store, not through a
shared folder. Real Ultralytics on the CPU, a tiny generated dataset."""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec
import nats
import pytest

from shared.artifacts import NatsObjectStore, artifact_store
from shared.bus import ensure_topology
from shared.contracts import Job
from shared.contracts.yolo import YoloTrainSpec
from shared.settings import Settings
from tests.datagen import make_detect_dataset
from tests.integration.runner_support import POOL, TERMINAL, RunEvents, publish_job, running_agent

pytestmark = pytest.mark.slow


async def test_a_training_stopped_on_one_host_resumes_on_another_from_the_checkpoint_in_the_nats_store(
    settings: Settings, tmp_path: Path
) -> None:
    """Host A trains until its first checkpoint and is stopped (its run requeued); host B, with a state folder
    of its own, fetches that checkpoint from the object store, resumes from it and completes; the weights it
    produced are in the store, readable from anywhere on the bus."""
    common = {"artifact_store": "nats", "shutdown_action": "requeue", "shutdown_grace_s": 0.5}
    host_a = msgspec.structs.replace(settings, **common, state_dir=tmp_path / "host-a")
    host_b = msgspec.structs.replace(settings, **common, state_dir=tmp_path / "host-b")
    data = make_detect_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=64)
    epochs = 8  # so that host A still trains when it is stopped: its checkpoints are stored on the loop while
    # the next epoch trains, so at the first checkpoint event A may be epochs further (with 3 it had finished, and B
    # resumed from the last epoch: nothing left to train, so no best.pt of its own)
    spec = YoloTrainSpec(model="yolov8n", data=str(data), epochs=epochs, batch=4, imgsz=64, device="cpu")
    job = Job(run_id=uuid.uuid4().hex, project_id="p1", pool=POOL, spec=spec)
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings)
        async with RunEvents(js, settings, job) as events:
            async with running_agent(host_a, runner_id="host-a"):
                await publish_job(js, settings, job)
                await events.wait_for_type("run.checkpoint", timeout=240)
            await events.wait_for_type("run.requeued", attempt=1, timeout=30)
            async with running_agent(host_b, runner_id="host-b"):
                done = await events.wait_for_type(*TERMINAL, timeout=300)
        assert done.type == "run.completed", done
        assert done.result["epochs_completed"] == epochs  # type: ignore[attr-defined]
        started = [e for e in events.events if e.type == "run.started"]
        assert started[-1].runner_id == "host-b"  # type: ignore[attr-defined]
        last_of_a = [e for e in events.events if e.type == "run.checkpoint" and e.attempt == 1][-1]
        assert started[-1].resumed_from == last_of_a.checkpoint_id  # type: ignore[attr-defined]
        assert last_of_a.uri.startswith(f"{NatsObjectStore.SCHEME}://")  # type: ignore[attr-defined]
        fetched = list((tmp_path / "host-b").rglob(Path(last_of_a.uri).name))  # type: ignore[attr-defined]
        assert fetched, "host B did not fetch the checkpoint into its own folder"
        artifacts = {e.name: e for e in events.events if e.type == "run.artifact" and e.attempt == done.attempt}  # type: ignore[attr-defined]
        best = artifacts["weights/best.pt"]
        assert best.uri.startswith(f"{NatsObjectStore.SCHEME}://")
        copy = await artifact_store(host_a, js).fetch(best.uri, tmp_path / "elsewhere" / "best.pt")
        assert copy.stat().st_size == best.size_bytes > 0
    finally:
        await nc.close()
