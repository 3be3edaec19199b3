"""Every message real runs put on the bus validates against the JSON Schemas published in docs/schemas/: the
jobs, each event of a container run and of a tiny YOLO training, and the runner's heartbeats, read back from
the bus as an outside service would."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from shared.bus import ensure_topology
from shared.contracts import Job
from shared.contracts.yolo import YoloTrainSpec
from shared.settings import Settings
from shared.subjects import Subjects
from tests.datagen import make_classify_dataset
from tests.integration.rest_helpers import bus
from tests.integration.runner_support import POOL, RunEvents, container_job, publish_job, running_agent

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


async def drain(sub: Any) -> list[Any]:
    """Every message an ordered consumer has pending, until it has none for a moment."""
    messages = []
    while True:
        try:
            messages.append(await sub.next_msg(timeout=1.0))
        except TimeoutError:
            return messages


@pytest.mark.slow
async def test_every_message_of_a_container_run_and_a_yolo_training_matches_the_published_schemas(
    settings: Settings, tmp_path: Path,
) -> None:
    names = Subjects(settings.bus_prefix)
    data = make_classify_dataset(tmp_path / "cls", n_train=8, n_val=4, imgsz=64)
    jobs = [
        container_job("for i in 1 2 3; do echo step=$i/3 loss=0.$i; done; echo warn >&2"),
        Job(run_id=uuid.uuid4().hex, project_id="p1", pool=POOL,
            spec=YoloTrainSpec(model="yolov8n-cls", data=str(data), epochs=1, batch=8, imgsz=64,
                               device="cpu")),
    ]
    async with bus(settings) as nc:
        js = nc.jetstream()
        await ensure_topology(js, settings)
        published_jobs: list[bytes] = []

        async def on_job(msg: Any) -> None:  # core NATS sees every publish on the work-queue subjects
            published_jobs.append(msg.data)

        jobs_sub = await nc.subscribe(names.jobs_all, cb=on_job)
        async with running_agent(settings):
            for job in jobs:
                async with RunEvents(js, settings, job) as run:
                    await publish_job(js, settings, job)
                    end = await run.wait_for_type("run.completed", "run.failed", "run.canceled", timeout=240)
                    assert end.type == "run.completed", end
        await jobs_sub.unsubscribe()
        events = await drain(await js.subscribe(names.events_all, ordered_consumer=True))
        beats = await drain(await js.subscribe(names.runner_heartbeats_all, ordered_consumer=True))

    bodies = [json.loads(m.data) for m in events]
    types = {b["type"] for b in bodies}
    assert {"run.claimed", "run.started", "run.log", "run.metrics", "run.progress", "run.artifact",
            "run.checkpoint", "run.completed"} <= types, types
    assert len(published_jobs) == len(jobs) and beats
    for name, messages in (("job.v1.json", published_jobs), ("run-event.v1.json", [m.data for m in events]),
                           ("runner-heartbeat.v1.json", [m.data for m in beats])):
        check = validator(name)
        for raw in messages:
            errors = [e.message for e in check.iter_errors(json.loads(raw))]
            assert not errors, (name, raw[:300], errors)
    # what docs/events.md says about `result` per kind and the heartbeat fields
    completed = {b["run_id"]: b for b in bodies if b["type"] == "run.completed"}
    assert completed[jobs[0].run_id]["result"] is None  # a local container run
    assert {"epochs", "metrics", "checkpoint_id"} <= set(completed[jobs[1].run_id]["result"])
    heartbeat = json.loads(beats[-1].data)
    assert heartbeat["attempt"] == 0 and heartbeat["run_id"] == "" and heartbeat["seq"] >= 1
    assert all(m.headers is None or "Nats-Msg-Id" not in m.headers for m in beats)
    assert all(m.headers and m.headers.get("Nats-Msg-Id") == f"{b['run_id']}:{b['attempt']}:{b['seq']}"
               for m, b in zip(events, bodies, strict=True))
