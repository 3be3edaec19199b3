"""The fleet view over a real gateway (uvicorn), NATS and Postgres with runners in this process: the runner
registry (lost, stopped), drain/resume, system resources (also as SSE), the model catalog and measured
advice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from httpx_sse import aconnect_sse
from nats.js import JetStreamContext

from runner.agent import RunnerAgent
from shared.bus import ensure_topology
from shared.contracts import RunnerHeartbeat
from shared.settings import Settings
from shared.subjects import Subjects
from tests.auth_support import authorize
from tests.integration.events_support import wait_for
from tests.integration.rest_helpers import served_gateway
from tests.integration.runner_support import POOL, RunEvents, container_job, publish_job, running_agent
from tests.library_support import insert_run


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with served_gateway(settings) as url, httpx.AsyncClient(base_url=f"{url}/api/v1", timeout=60) as client:
        yield await authorize(client)


@pytest.fixture
async def js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await ensure_topology(js, settings)
    yield js
    await nc.close()


async def runner_state(api: httpx.AsyncClient, runner_id: str) -> str | None:
    response = await api.get(f"/runners/{runner_id}")
    return response.json()["state"] if response.status_code == 200 else None


async def wait_state(api: httpx.AsyncClient, runner_id: str, state: str, timeout: float = 10.0) -> None:
    async def check() -> bool:
        return await runner_state(api, runner_id) == state

    await wait_for(check, timeout=timeout, what=f"runner {runner_id} {state}")


@contextlib.asynccontextmanager
async def killable_agent(settings: Settings, runner_id: str) -> AsyncIterator[asyncio.Task[None]]:
    """An agent whose task the test may cancel: it stops at once, without a last heartbeat (like kill -9)."""
    agent = RunnerAgent(settings, POOL, runner_id=runner_id)
    task = asyncio.create_task(agent.run())
    try:
        yield task
    finally:
        if not task.done():
            await agent.stop()
        await asyncio.gather(task, return_exceptions=True)


# -- registry ------------------------------------------------------------------------------------------------


async def test_registry_lists_runners_with_host_stats_and_a_killed_one_becomes_lost(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    async with running_agent(settings, runner_id="steady", slots=2), \
            killable_agent(settings, "doomed") as doomed:
        await wait_state(api, "steady", "idle")
        await wait_state(api, "doomed", "idle")
        page = (await api.get("/runners")).json()
        assert page["total"] == 2 and [r["id"] for r in page["items"]] == ["doomed", "steady"]
        steady = next(r for r in page["items"] if r["id"] == "steady")
        assert steady["pool"] == POOL and steady["slots"] == 2 and steady["device"] == "cpu"
        assert steady["devices"][0]["kind"] == "cpu" and steady["devices"][0]["memory_total_mb"] > 0
        stats = steady["host_stats"]
        assert stats["cpu_count"] >= 1 and stats["memory_total_mb"] > 0 and stats["disk_free_mb"] > 0
        assert stats["gpus"] == []
        assert steady["current_run"] is None and steady["last_seen"]

        doomed.cancel()  # no "stopped" heartbeat: it just goes silent
        await wait_state(api, "doomed", "lost", timeout=3 * settings.runner_heartbeat_s + 5)
        assert await runner_state(api, "steady") == "idle"
        lost = (await api.get("/runners", params={"state": "lost"})).json()
        assert [r["id"] for r in lost["items"]] == ["doomed"]
        assert (await api.post("/runners/doomed/drain")).status_code == 409
    await wait_state(api, "steady", "stopped")
    assert (await api.get("/runners", params={"pool": "elsewhere"})).json()["total"] == 0


async def test_a_new_instance_under_a_known_id_ends_the_old_one_and_the_view_follows_it_at_once(
    settings: Settings, api: httpx.AsyncClient, js: JetStreamContext
) -> None:
    names = Subjects(settings.bus_prefix)
    runner_id, run_id = "reborn", uuid.uuid4().hex

    async def beat(instance: str, seq: int, **fields: Any) -> None:
        heartbeat = RunnerHeartbeat(runner_id=runner_id, seq=seq, pool=POOL, kinds=["container"],
                                    instance=instance, **fields)
        await js.publish(names.runner_heartbeat(runner_id), msgspec.json.encode(heartbeat))

    async def view_where(check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        async def seen() -> dict[str, Any] | None:
            response = await api.get(f"/runners/{runner_id}")
            return response.json() if response.status_code == 200 and check(response.json()) else None

        return await wait_for(seen, what=what)

    await beat("first", 1, active_runs=[run_id], state="busy")
    old = await view_where(lambda v: v["instance"] == "first", "the first process")
    assert (old["state"], old["current_run"], old["active_runs"], old["restarts"]) == ("busy", run_id, [run_id], 0)

    await beat("second", 1, released_runs=[run_id], state="idle")  # restarted under the same id (up)
    new = await view_where(lambda v: v["instance"] == "second", "the restarted process")
    assert (new["state"], new["current_run"], new["active_runs"]) == ("idle", None, [])
    assert new["released_runs"] == [run_id] and new["restarts"] == 1
    assert new["instance_since"] and new["instance_since"] >= old["instance_since"]

    await beat("first", 2, active_runs=[run_id], state="busy")  # the ended process's late heartbeat
    await beat("second", 2, released_runs=[run_id], state="idle", slots=3)  # behind it on the same subject
    after = await view_where(lambda v: v["slots"] == 3, "the restarted process's next heartbeat")
    assert (after["instance"], after["current_run"], after["active_runs"], after["restarts"]) == (
        "second", None, [], 1)


async def test_targets_list_the_container_targets_of_live_runners_from_their_heartbeats(
    settings: Settings, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    targets_file = tmp_path / "targets.toml"
    targets_file.write_text(f"""
[targets.llama]
container = "llama-factory"
workdir = "/app"
host_root = "{tmp_path}"

[targets.axolotl]
container = "axo"
workdir = "/workspace"
host_root = "{tmp_path}"
""")
    assert (await api.get("/targets")).json() == {"items": [], "total": 0}
    with_targets = msgspec.structs.replace(settings, runner_targets_file=targets_file)
    async with running_agent(with_targets, runner_id="dockerbox"), running_agent(settings, runner_id="plain"):
        await wait_state(api, "dockerbox", "idle")
        await wait_state(api, "plain", "idle")
        assert (await api.get("/runners/dockerbox")).json()["targets"] == ["axolotl", "llama"]
        assert (await api.get("/runners/plain")).json()["targets"] == []
        page = (await api.get("/targets")).json()
        assert page == {"total": 2, "items": [
            {"name": "axolotl", "runners": ["dockerbox"], "pools": [POOL]},
            {"name": "llama", "runners": ["dockerbox"], "pools": [POOL]}]}
    await wait_state(api, "dockerbox", "stopped")
    assert (await api.get("/targets")).json()["total"] == 0, "a stopped runner offers nothing"


async def test_a_runner_that_never_sent_a_heartbeat_is_unknown(api: httpx.AsyncClient) -> None:
    assert (await api.get("/runners/nobody")).status_code == 404
    response = await api.post("/runners/nobody/drain")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert (await api.get("/runners", params={"state": "sleepy"})).status_code == 400


# -- drain ---------------------------------------------------------------------------------------------------


async def test_draining_runner_finishes_its_run_takes_no_new_one_and_resume_makes_it_take_work(
    settings: Settings, api: httpx.AsyncClient, js: JetStreamContext
) -> None:
    first, second = container_job("sleep 1.5; echo first"), container_job("echo second")
    async with running_agent(settings, runner_id="solo") as agent, \
            RunEvents(js, settings, first) as first_events, RunEvents(js, settings, second) as second_events:
        await wait_state(api, "solo", "idle")
        await publish_job(js, settings, first)
        await first_events.wait_for_type("run.started")

        reply = (await api.post("/runners/solo/drain")).json()
        assert reply == {"runner_id": "solo", "state": "draining", "active_runs": [first.run_id], "error": None}
        assert (await api.get("/runners/solo")).json()["current_run"] == first.run_id
        done = await first_events.wait_for_type("run.completed", "run.failed", "run.canceled")
        assert done.type == "run.completed"

        await publish_job(js, settings, second)
        await asyncio.sleep(2.5)  # more than a fetch period: the job waits
        assert second_events.types() == [] and agent.active_runs == []
        view = (await api.get("/runners/solo")).json()
        assert view["state"] == "draining" and view["current_run"] is None

        reply = (await api.post("/runners/solo/resume")).json()
        assert reply["state"] in ("idle", "busy")
        done = await second_events.wait_for_type("run.completed", "run.failed", "run.canceled")
        assert done.type == "run.completed" and done.runner_id == "solo" and done.attempt == 1


async def test_a_job_published_while_a_runner_drains_goes_to_another_runner(
    settings: Settings, api: httpx.AsyncClient, js: JetStreamContext
) -> None:
    job = container_job("echo hello")
    async with running_agent(settings, runner_id="drained"), RunEvents(js, settings, job) as events:
        await wait_state(api, "drained", "idle")
        assert (await api.post("/runners/drained/drain")).json()["state"] == "draining"
        await publish_job(js, settings, job)
        async with running_agent(settings, runner_id="other"):
            done = await events.wait_for_type("run.completed", "run.failed", "run.canceled")
    assert done.type == "run.completed" and done.runner_id == "other"


# -- resources -----------------------------------------------------------------------------------------------


async def test_resources_report_runner_hosts_an_empty_gpu_list_and_active_and_maximum_runs(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    await insert_run(settings, uuid.uuid4().hex, "running", {"kind": "container"})
    await insert_run(settings, uuid.uuid4().hex, "completed", {"kind": "container"})
    async with running_agent(settings, runner_id="r1", slots=2):
        await wait_state(api, "r1", "idle")
        body = (await api.get("/system/resources")).json()
    assert body["active_runs"] == 1 and body["max_concurrent_runs"] == 2 and body["live_runners"] == 1
    (host,) = body["hosts"]
    assert host["runners"] == ["r1"] and host["gpus"] == []
    for key in ("cpu_percent", "cpu_count", "memory_total_mb", "memory_used_mb", "disk_total_mb", "disk_free_mb"):
        assert isinstance(host[key], int | float), key
    gateway = body["gateway"]
    assert gateway["gpus"] == [] and gateway["disk_free_mb"] > 0 and gateway["runners"] == []


async def test_resources_without_runners_list_no_hosts(api: httpx.AsyncClient) -> None:
    body = (await api.get("/system/resources")).json()
    assert body["hosts"] == [] and body["max_concurrent_runs"] == 0 and body["active_runs"] == 0


async def test_resource_stream_sends_the_snapshot_then_samples_from_heartbeats(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    got: list[tuple[str, dict[str, Any]]] = []
    async with running_agent(settings, runner_id="sampled"):
        async with aconnect_sse(api, "GET", "/system/resources/events") as source:
            assert source.response.status_code == 200
            async with asyncio.timeout(10):
                async for sse in source.aiter_sse():
                    if not sse.data:  # a keep-alive comment (httpx-sse reports it once an id was seen)
                        continue
                    got.append((sse.event, json.loads(sse.data)))
                    if sum(1 for event, _ in got if event == "sample") >= 2:
                        break
    assert got[0][0] == "resources" and "hosts" in got[0][1]
    samples = [data for event, data in got if event == "sample"]
    assert all(s["runners"] == ["sampled"] and s["gpus"] == [] and s["memory_total_mb"] > 0 for s in samples)


# -- models and advice ---------------------------------------------------------------------------------------


async def test_available_models_list_families_sizes_and_tasks_and_the_live_devices(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    async with running_agent(settings, runner_id="dev"):
        await wait_state(api, "dev", "idle")
        body = (await api.get("/models/available")).json()
    families = {(f["family"], f["task"]): f for f in body["families"]}
    for family in ("yolov8", "yolo11"):
        for task in ("detect", "classify", "segment", "pose", "obb"):
            entry = families[(family, task)]
            assert [s["size"] for s in entry["sizes"]] == ["n", "s", "m", "l", "x"]
            assert entry["description"]
    detect = families[("yolov8", "detect")]
    assert detect["sizes"][0] == {"size": "n", "model": "yolov8n", "parameters": 3157200}
    assert families[("yolo11", "segment")]["sizes"][1]["model"] == "yolo11s-seg"
    (device,) = body["devices"]
    assert device["runner_id"] == "dev" and device["device"] == "cpu" and device["info"]["kind"] == "cpu"


async def test_cpu_advice_is_measured_and_shrinks_the_batch_for_larger_images(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    async with running_agent(settings, runner_id="adviser"):
        await wait_state(api, "adviser", "idle")
        small = await api.post("/advice", json={"model": "yolov8n", "imgsz": 64, "memory_limit_mb": 512})
        large = await api.post("/advice", json={"model": "yolov8n", "imgsz": 320, "memory_limit_mb": 512,
                                                 "batch": 64, "device": "cpu"})
        odd = await api.post("/advice", json={"model": "yolov8n", "imgsz": 100, "pool": POOL})
    assert small.status_code == large.status_code == odd.status_code == 200, (small.text, large.text, odd.text)
    small_body, large_body = small.json(), large.json()
    assert small_body["runner_id"] == "adviser" and small_body["task"] == "detect"
    assert small_body["amp"] is False and small_body["workers"] >= 1 and small_body["cache"] is False
    assert any("workers=0" in note for note in small_body["notes"])
    small_m, large_m = small_body["measurement"], large_body["measurement"]
    assert small_m["method"] == "cpu-rss-peak" and [p["batch"] for p in small_m["probes"]][:2] == [1, 2]
    assert large_m["per_image_mb"] > small_m["per_image_mb"]
    assert large_body["batch"] < small_body["batch"] <= 64
    assert large_m["estimated_memory_mb"] <= 512
    assert any("batch 64" in w for w in large_body["warnings"])
    assert not any("batch" in w or "multiple of" in w for w in small_body["warnings"])
    assert any("multiple of 32" in w for w in odd.json()["warnings"])


async def test_advice_errors_name_the_problem(settings: Settings, api: httpx.AsyncClient) -> None:
    response = await api.post("/advice", json={"model": "yolov8n", "imgsz": 64, "pool": "gpu-a100"})
    assert response.status_code == 503 and "gpu-a100" in response.json()["detail"]
    response = await api.post("/advice", json={"model": "yolov8n", "imgsz": 64})
    assert response.status_code == 503 and POOL in response.json()["detail"]
    response = await api.post("/advice", json={"model": "yolov99z", "imgsz": 64})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "$.model"
    for body in ({"model": "yolov8n", "imgsz": 8}, {"model": "yolov8n", "device": "tpu"},
                 {"model": "yolov8n", "batch": 0}, {"model": "yolov8n", "surprise": 1}, {"imgsz": 64}):
        assert (await api.post("/advice", json=body)).status_code == 422, body
    response = await api.post("/advice", json={"model": "yolov8n", "dataset": "missing"})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "$.dataset"
    async with running_agent(settings, runner_id="cpu-only"):
        await wait_state(api, "cpu-only", "idle")
        response = await api.post("/advice", json={"model": "yolov8n", "imgsz": 64, "device": "cuda:0",
                                                    "pool": POOL})
    assert response.status_code == 422 and "cuda:0" in response.json()["detail"]
