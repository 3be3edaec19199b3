"""Runs over REST against real NATS and Postgres: what is stored, what is published on JetStream."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from sqlalchemy import func, select

from gateway.db.models import Artifact, Checkpoint, EventRecord, Run
from shared.contracts import job_decoder
from shared.contracts.events import RunLog, RunMetrics, event_decoder
from shared.jobsign import JobVerifier
from shared.settings import Settings
from shared.subjects import Subjects
from tests.integration.rest_helpers import (
    CONTAINER,
    add_checkpoint,
    api,
    bus,
    database,
    enqueued,
    new_project,
    problem,
    runner_online,
    set_run,
    start_run,
)


async def _stream_messages(settings: Settings, stream: str, subject: str) -> int:
    async with bus(settings) as nc:
        info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())


async def test_creating_a_run_stores_it_queued_and_publishes_one_job_and_one_queued_event(settings: Settings) -> None:
    names = Subjects(settings.bus_prefix)
    async with runner_online(settings, "gpu-a"), api(settings) as client:
        project = await new_project(client, "llm")
        response = await start_run(client, "llm", {**CONTAINER, "pool": "gpu-a", "priority": 70})
        assert response.status_code == 201, response.text
        run = response.json()
        assert run["status"] == "queued" and run["kind"] == "container" and run["pool"] == "gpu-a"
        assert run["priority"] == 70 and run["attempt"] == 0
        assert run["enqueued_at"] is None  # the answer comes once the row is committed; the job follows
        await enqueued(client, run["id"])
        assert run["spec"]["start_command"] == "echo hello" and "pool" not in run["spec"]
        assert (await client.get("/api/v1/projects/llm")).json()["runs_started"] == 1
    async with bus(settings) as nc:
        js = nc.jetstream()
        msg = await js.get_last_msg(names.jobs_stream, names.job("gpu-a"))
        job = job_decoder.decode(msg.data)
        assert msg.headers["Nats-Msg-Id"] == run["id"]
        assert settings.job_verify_key is not None  # signed by the gateway, for this subject and these bytes
        JobVerifier.load(settings.job_verify_key).verify(names.job("gpu-a"), msg.data, msg.headers)
        queued = await js.get_last_msg(names.events_stream,
                                       names.run_event(project["id"], run["id"], "run.queued"))
        event = event_decoder.decode(queued.data)
    assert (job.run_id, job.project_id, job.pool, job.priority, job.resume) == (run["id"], project["id"], "gpu-a", 70, None)
    assert job.spec.start_command == "echo hello"
    assert (event.type, event.attempt, event.seq, event.runner_id) == ("run.queued", 0, 1, "gateway")
    assert queued.headers["Nats-Msg-Id"] == f"{run['id']}:0:1"
    assert await _stream_messages(settings, names.jobs_stream, names.jobs_all) == 1
    assert await _stream_messages(settings, names.events_stream, names.events_all) == 1


async def test_idempotency_key_returns_the_first_run_and_publishes_one_job(settings: Settings) -> None:
    names = Subjects(settings.bus_prefix)
    headers = {"Idempotency-Key": "create-1"}
    async with runner_online(settings), api(settings) as client:
        await new_project(client, "idem")
        first = await start_run(client, "idem", headers=headers)
        again = await start_run(client, "idem", headers=headers)
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        assert "Idempotent-Replayed" not in first.headers
        listed = (await client.get("/api/v1/projects/idem/runs")).json()
        assert listed["total"] == 1
        assert (await client.get("/api/v1/projects/idem")).json()["runs_started"] == 1
        other_body = await start_run(client, "idem", {**CONTAINER, "start_command": "echo other"}, headers)
        problem(other_body, 409)
        await enqueued(client, first.json()["id"])  # the POST answers before the job is published
    async with bus(settings) as nc:
        msg = await nc.jetstream().get_last_msg(names.jobs_stream, names.job("cpu"))
    assert msg.headers["Nats-Msg-Id"].endswith(":create-1")
    assert await _stream_messages(settings, names.jobs_stream, names.jobs_all) == 1


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"kind": "yolo.nonsense", "start_command": "x"}, 422, "yolo.nonsense"),
        ({"kind": "container"}, 422, "start_command"),
        ({"kind": "container", "start_command": ""}, 422, "length"),
        ({**CONTAINER, "surprise": 1}, 422, "surprise"),
        ({**CONTAINER, "priority": 101}, 422, "100"),
        ({**CONTAINER, "priority": "high"}, 422, "int"),
        ({**CONTAINER, "pool": "no spaces"}, 422, "regex"),
        ({**CONTAINER, "pool": ""}, 422, "regex"),
        ({**CONTAINER, "pool": "cpu\n"}, 422, "regex"),
        ({**CONTAINER, "backend": "ssh"}, 422, "backend"),
        ({**CONTAINER, "timeout_s": -1}, 422, "> 0"),
        ({**CONTAINER, "env": {"A": "nul\u0000"}}, 422, "NUL"),
        ([CONTAINER], 422, "object"),
    ],
)
async def test_invalid_run_bodies_are_client_errors_naming_the_problem(
    settings: Settings, body: object, status: int, text: str
) -> None:
    async with api(settings) as client:
        await new_project(client, "v")
        error = problem(await client.post("/api/v1/projects/v/runs", json=body), status)
    assert text in json.dumps(error)


async def test_runs_of_unknown_project_or_with_malformed_body_are_404_and_400(settings: Settings) -> None:
    async with api(settings) as client:
        problem(await start_run(client, "nope"), 404)
        await new_project(client, "m")
        problem(await client.post("/api/v1/projects/m/runs", content=b"{kind",
                                  headers={"content-type": "application/json"}), 400)
        problem(await client.post("/api/v1/projects/m/runs", content=b""), 422)


async def test_run_list_filters_by_status_and_kind_and_pages_newest_first(settings: Settings) -> None:
    async with api(settings) as client:
        await new_project(client, "many")
        ids = [(await start_run(client, "many")).json()["id"] for _ in range(4)]
        await set_run(settings, ids[0], status="completed")
        await set_run(settings, ids[1], status="failed", failure_cause="user")
        page = (await client.get("/api/v1/projects/many/runs", params={"limit": 2, "offset": 1})).json()
        assert [r["id"] for r in page["items"]] == [ids[2], ids[1]] and page["total"] == 4
        done = (await client.get("/api/v1/projects/many/runs", params={"status": "completed,failed"})).json()
        assert {r["id"] for r in done["items"]} == {ids[0], ids[1]} and done["total"] == 2
        failed = (await client.get("/api/v1/projects/many/runs", params={"status": "failed"})).json()
        assert failed["items"][0]["failure_cause"] == "user"
        assert (await client.get("/api/v1/projects/many/runs", params={"kind": "yolo.train"})).json()["total"] == 0
        assert (await client.get("/api/v1/projects/many/runs", params={"kind": "container"})).json()["total"] == 4
        problem(await client.get("/api/v1/projects/many/runs", params={"status": "sleeping"}), 400)
        problem(await client.get("/api/v1/projects/many/runs", params={"kind": "a b"}), 400)
        problem(await client.get("/api/v1/projects/many/runs", params={"limit": 201}), 400)
        problem(await client.get("/api/v1/projects/many/runs", params={"offset": -5}), 400)
        problem(await client.get("/api/v1/projects/nope/runs"), 404)


async def test_cancel_of_a_queued_run_cancels_it_with_kv_key_core_message_and_event(settings: Settings) -> None:
    names = Subjects(settings.bus_prefix)
    async with api(settings) as client, bus(settings) as nc:
        project = await new_project(client, "c")
        run = (await start_run(client, "c")).json()
        seen: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_cancel(msg) -> None:  # type: ignore[no-untyped-def]
            await seen.put(msg.subject)

        await nc.subscribe(names.cancel_all, cb=on_cancel)
        await nc.flush()
        response = await client.post(f"/api/v1/runs/{run['id']}/cancel")
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "canceled" and response.json()["cancel_requested"] is True
        assert await asyncio.wait_for(seen.get(), 5) == names.cancel(run["id"])
        js = nc.jetstream()
        entry = await (await js.key_value(names.cancel_bucket)).get(run["id"])
        assert json.loads(entry.value)["requested_at"]
        msg = await js.get_last_msg(names.events_stream, names.run_event(project["id"], run["id"], "run.canceled"))
        event = event_decoder.decode(msg.data)
        assert (event.attempt, event.seq, event.runner_id, event.reason) == (0, 2, "gateway", "requested")
        detail = (await client.get(f"/api/v1/runs/{run['id']}")).json()
        assert detail["status"] == "canceled" and detail["finished_at"]
        problem(await client.post(f"/api/v1/runs/{run['id']}/cancel"), 409)


async def test_cancel_of_a_claimed_run_asks_its_runner_and_repeats_harmlessly(settings: Settings) -> None:
    names = Subjects(settings.bus_prefix)
    async with api(settings) as client:
        project = await new_project(client, "c2")
        run = (await start_run(client, "c2")).json()
        await set_run(settings, run["id"], status="running", attempt=1, runner_id="r1")
        first = await client.post(f"/api/v1/runs/{run['id']}/cancel")
        again = await client.post(f"/api/v1/runs/{run['id']}/cancel")
        assert first.status_code == again.status_code == 202
        assert first.json()["status"] == again.json()["status"] == "canceling"
    async with bus(settings) as nc:
        msg = await nc.jetstream().get_last_msg(
            names.events_stream, names.run_event(project["id"], run["id"], "run.cancel_requested"))
    assert event_decoder.decode(msg.data).seq == 2
    assert await _stream_messages(settings, names.events_stream, names.run_events(project["id"], run["id"])) == 2


async def test_cancel_of_a_finished_or_unknown_run_is_refused(settings: Settings) -> None:
    async with api(settings) as client:
        await new_project(client, "c3")
        run = (await start_run(client, "c3")).json()
        await set_run(settings, run["id"], status="failed", failure_cause="infrastructure")
        assert "failed" in problem(await client.post(f"/api/v1/runs/{run['id']}/cancel"), 409)["detail"]
        problem(await client.post("/api/v1/runs/0123456789abcdef/cancel"), 404)
        problem(await client.post("/api/v1/runs/bad%20id/cancel"), 404)


async def test_delete_of_an_active_run_is_refused_and_of_a_finished_one_removes_everything(settings: Settings) -> None:
    async with api(settings) as client:
        await new_project(client, "d")
        run = (await start_run(client, "d")).json()
        problem(await client.delete(f"/api/v1/runs/{run['id']}"), 409)
        await set_run(settings, run["id"], status="completed")
        await add_checkpoint(settings, run["id"], step=1)
        async with database(settings) as sessions, sessions() as session, session.begin():
            session.add(EventRecord(event_id="e", run_id=run["id"], project_id=run["project_id"], attempt=1, seq=1,
                                    type="run.log", ts=datetime.now(UTC), body={"lines": []}))
        assert (await client.delete(f"/api/v1/runs/{run['id']}")).status_code == 204
        problem(await client.get(f"/api/v1/runs/{run['id']}"), 404)
        problem(await client.delete(f"/api/v1/runs/{run['id']}"), 404)
    async with database(settings) as sessions, sessions() as session:
        for model in (Checkpoint, EventRecord, Run):
            assert (await session.execute(select(func.count()).select_from(model))).scalar_one() == 0


async def test_resume_starts_a_linked_run_from_the_latest_resumable_checkpoint(settings: Settings) -> None:
    names = Subjects(settings.bus_prefix)
    async with runner_online(settings, "p1"), api(settings) as client:
        await new_project(client, "r")
        source = (await start_run(client, "r", {**CONTAINER, "pool": "p1"})).json()
        problem(await client.post(f"/api/v1/runs/{source['id']}/resume"), 409)  # still queued
        await set_run(settings, source["id"], status="failed", failure_cause="infrastructure")
        assert "no checkpoint" in problem(await client.post(f"/api/v1/runs/{source['id']}/resume"), 409)["detail"]
        now = datetime.now(UTC)
        await add_checkpoint(settings, source["id"], step=10, created_at=now - timedelta(minutes=2))
        latest = await add_checkpoint(settings, source["id"], step=20, created_at=now - timedelta(minutes=1))
        await add_checkpoint(settings, source["id"], step=30, resumable=False, created_at=now)
        response = await client.post(f"/api/v1/runs/{source['id']}/resume")
        assert response.status_code == 201, response.text
        resumed = response.json()
        assert resumed["id"] != source["id"] and resumed["status"] == "queued" and resumed["pool"] == "p1"
        assert (resumed["resume_of"], resumed["resume_checkpoint_id"]) == (source["id"], latest)
        assert resumed["spec"] == source["spec"]
        assert (await client.get("/api/v1/projects/r")).json()["runs_started"] == 2
        await enqueued(client, resumed["id"])
    async with bus(settings) as nc:
        job = job_decoder.decode((await nc.jetstream().get_last_msg(names.jobs_stream, names.job("p1"))).data)
    assert job.run_id == resumed["id"]
    assert job.resume is not None
    assert (job.resume.source_run_id, job.resume.checkpoint_id, job.resume.step) == (source["id"], latest, 20)
    assert job.resume.uri == f"/ckpt/{source['id']}/20.pt"


async def test_resume_from_a_chosen_checkpoint_on_another_pool_and_refusals(settings: Settings) -> None:
    async with api(settings) as client:
        await new_project(client, "r2")
        source = (await start_run(client, "r2")).json()
        other = (await start_run(client, "r2")).json()
        await set_run(settings, source["id"], status="canceled")
        await set_run(settings, other["id"], status="completed")
        chosen = await add_checkpoint(settings, source["id"], step=5)
        foreign = await add_checkpoint(settings, other["id"], step=5)
        frozen = await add_checkpoint(settings, source["id"], step=6, resumable=False)
        url = f"/api/v1/runs/{source['id']}/resume"
        problem(await client.post(url, json={"checkpoint_id": foreign}), 404)
        problem(await client.post(url, json={"checkpoint_id": "nope\u0000"}), 404)
        problem(await client.post(url, json={"checkpoint_id": frozen}), 409)
        problem(await client.post(url, json={"checkpoint_id": chosen, "extra": 1}), 422)
        problem(await client.post(url, json={"pool": "bad pool"}), 422)
        problem(await client.post("/api/v1/runs/nope/resume"), 404)
        response = await client.post(url, json={"checkpoint_id": chosen, "pool": "gpu"},
                                     headers={"Idempotency-Key": "resume-1"})
        assert response.status_code == 201, response.text
        again = await client.post(url, json={"checkpoint_id": chosen, "pool": "gpu"},
                                  headers={"Idempotency-Key": "resume-1"})
        assert again.json() == response.json() and again.status_code == 201
        assert response.json()["pool"] == "gpu" and response.json()["resume_checkpoint_id"] == chosen
        assert (await client.get("/api/v1/projects/r2/runs")).json()["total"] == 3


async def _record(settings: Settings, *events: msgspec.Struct) -> None:
    async with database(settings) as sessions, sessions() as session, session.begin():
        for e in events:
            session.add(EventRecord(event_id=e.event_id, run_id=e.run_id, project_id=e.project_id,  # type: ignore[attr-defined]
                                    attempt=e.attempt, seq=e.seq, type=e.type, ts=e.ts,  # type: ignore[attr-defined]
                                    body=msgspec.to_builtins(e)))


async def test_run_detail_logs_metrics_checkpoints_and_artifacts(settings: Settings) -> None:
    async with api(settings) as client:
        await new_project(client, "obs")
        run = (await start_run(client, "obs")).json()
        rid, pid = run["id"], run["project_id"]
        common = dict(run_id=rid, project_id=pid, runner_id="r1")
        logs = [RunLog(**common, attempt=1, seq=i + 1, lines=[{"stream": "stdout", "text": f"l{i}.{j}"} for j in range(3)])
                for i in range(30)]
        metrics = [RunMetrics(**common, attempt=1 + i // 3, seq=100 + i, step=i, metrics={"loss": 1.0 / (i + 1),
                              **({"acc": 0.5} if i % 2 else {})}) for i in range(6)]
        await _record(settings, *logs, *metrics)
        await set_run(settings, rid, status="running", attempt=2, runner_id="r1", progress=0.4,
                      latest_metrics={"loss": 0.2})
        await add_checkpoint(settings, rid, step=1)
        async with database(settings) as sessions, sessions() as session, session.begin():
            session.add(Artifact(id="a1", run_id=rid, project_id=pid, name="model.pt", kind="model", uri="/a/model.pt",
                                 meta={}, created_at=datetime.now(UTC)))

        detail = (await client.get(f"/api/v1/runs/{rid}")).json()
        assert detail["progress"] == 0.4 and detail["attempt"] == 2 and detail["runner_id"] == "r1"
        assert detail["latest_metrics"] == {"loss": 0.2}
        assert len(detail["checkpoints"]) == 1 and detail["artifacts"][0]["name"] == "model.pt"
        assert len(detail["recent_logs"]) == 50 and detail["recent_logs"][-1]["text"] == "l29.2"

        page = (await client.get(f"/api/v1/runs/{rid}/logs", params={"limit": 5})).json()
        assert [line["text"] for line in page["items"]] == ["l0.0", "l0.1", "l0.2"]  # events are never split
        rest = (await client.get(f"/api/v1/runs/{rid}/logs", params={"after": page["next_after"], "limit": 1000})).json()
        assert len(rest["items"]) == 87 and rest["items"][0]["text"] == "l1.0"
        assert {"position", "attempt", "ts", "stream", "text"} <= set(rest["items"][0])
        tail = (await client.get(f"/api/v1/runs/{rid}/logs", params={"after": rest["next_after"]})).json()
        assert tail == {"items": [], "next_after": rest["next_after"]}
        assert (await client.get(f"/api/v1/runs/{rid}/logs", params={"attempt": 2})).json()["items"] == []

        series = (await client.get(f"/api/v1/runs/{rid}/metrics")).json()["items"]
        assert [m["step"] for m in series] == list(range(6))
        acc = (await client.get(f"/api/v1/runs/{rid}/metrics", params={"name": "acc"})).json()["items"]
        assert [m["metrics"] for m in acc] == [{"acc": 0.5}] * 3
        second = (await client.get(f"/api/v1/runs/{rid}/metrics", params={"attempt": 2})).json()["items"]
        assert [m["step"] for m in second] == [3, 4, 5]

        checkpoints = (await client.get(f"/api/v1/runs/{rid}/checkpoints")).json()
        assert checkpoints["total"] == 1 and checkpoints["items"][0]["step"] == 1
        artifacts = (await client.get(f"/api/v1/runs/{rid}/artifacts")).json()
        assert artifacts["total"] == 1 and artifacts["items"][0]["uri"] == "/a/model.pt"

        for path in ("logs", "metrics", "checkpoints", "artifacts"):
            problem(await client.get(f"/api/v1/runs/nope/{path}"), 404)
        problem(await client.get(f"/api/v1/runs/{rid}/logs", params={"after": -1}), 400)
        problem(await client.get(f"/api/v1/runs/{rid}/logs", params={"after": 2**70}), 400)
        problem(await client.get(f"/api/v1/runs/{rid}/logs", params={"limit": 10**6}), 400)
        problem(await client.get(f"/api/v1/runs/{rid}/metrics", params={"name": ""}), 400)
        problem(await client.get(f"/api/v1/runs/{rid}/metrics", params={"name": "a\u0000"}), 400)
        problem(await client.get(f"/api/v1/runs/{rid}/checkpoints", params={"limit": 999}), 400)


async def test_openapi_schema_lists_the_run_kinds_and_endpoints(settings: Settings) -> None:
    async with api(settings) as client:
        schema = (await client.get("/schema/openapi.json")).json()
    assert "/api/v1/projects/{ref}/runs" in schema["paths"]
    assert "CreateContainerSpec" in schema["components"]["schemas"]
