"""Request ids and JSON log lines, on real parts: a gateway process logging JSON (uvicorn's access log
included), the id carried from the request onto the run's job, and a runner logging the job's lines with it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec

from shared import logsetup
from shared.contracts import job_decoder
from shared.logredact import RedactingFilter
from shared.settings import Settings
from shared.subjects import Subjects
from tests.auth_support import login
from tests.integration.rest_helpers import api, bus, new_project, runner_online, start_run
from tests.integration.runner_support import (
    RunEvents,
    container_job,
    free_port,
    publish_job,
    reaped_processes,
    running_agent,
    settings_env,
)


async def test_a_request_id_is_taken_or_made_returned_and_carried_onto_the_job(settings: Settings) -> None:
    names = Subjects(settings.bus_prefix)
    async with runner_online(settings, "logs"), api(settings) as client:
        await new_project(client, "traced")
        made = await client.get("/api/v1/projects/traced")
        assert len(made.headers["x-request-id"]) == 32  # generated
        refused = await client.get("/api/v1/projects/nope", headers={"X-Request-ID": "bad id with spaces"})
        assert refused.status_code == 404 and refused.headers["x-request-id"] != "bad id with spaces"
        unauthenticated = await client.get("/api/v1/projects", headers={"Authorization": "", "X-Request-ID": "r-401"})
        assert unauthenticated.status_code == 401 and unauthenticated.headers["x-request-id"] == "r-401"
        response = await start_run(client, "traced", {"kind": "container", "start_command": "echo hi",
                                                      "pool": "logs"}, headers={"X-Request-ID": "req-42.a"})
        assert response.status_code == 201, response.text
        assert response.headers["x-request-id"] == "req-42.a"
        run = response.json()
        assert run["options"]["request_id"] == "req-42.a"
        async with asyncio.timeout(20):  # the dispatcher publishes it once it has the runner's heartbeat
            while not (await client.get(f"/api/v1/runs/{run['id']}")).json()["enqueued_at"]:
                await asyncio.sleep(0.1)
    async with bus(settings) as nc:
        msg = await nc.jetstream().get_last_msg(names.jobs_stream, names.job("logs"))
    job = job_decoder.decode(msg.data)
    assert (job.run_id, job.request_id) == (run["id"], "req-42.a")


async def test_a_runner_logs_a_jobs_lines_with_its_run_attempt_runner_and_request_ids(settings: Settings) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logsetup.JsonFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    job = msgspec.structs.replace(container_job("echo traced"), request_id="req-runner-1")
    try:
        async with bus(settings) as nc, running_agent(settings, runner_id="json-runner"):
            async with RunEvents(nc.jetstream(), settings, job) as events:
                await publish_job(nc.jetstream(), settings, job)
                await events.wait_for_type("run.completed", timeout=30)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines, "the runner logged nothing"
    assert all(line["runner_id"] == "json-runner" for line in lines if line["logger"].startswith("runner")), lines
    of_job = [line for line in lines if line.get("run_id") == job.run_id]
    assert any("claimed" in line["message"] for line in of_job), lines
    assert all(line["request_id"] == "req-runner-1" and line["attempt"] == 1 and line["runner_id"] == "json-runner"
               for line in of_job), of_job


async def test_a_gateway_process_logs_json_lines_with_the_request_id_and_no_token(settings: Settings,
                                                                                     tmp_path: Path) -> None:
    port = free_port()
    env = {**settings_env(settings), "TRAINFORGE_PORT": str(port), "TRAINFORGE_LOG_FORMAT": "json"}
    log_path = tmp_path / "gateway.log"
    with reaped_processes() as started, open(log_path, "wb") as log_file:
        gateway = subprocess.Popen([sys.executable, "-m", "trainforge.cli", "gateway"], env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
        started.append(gateway)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            async with asyncio.timeout(60):
                while True:
                    assert gateway.poll() is None, log_path.read_text()
                    try:
                        if (await http.get("/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.2)
            token = (await login(http))["access_token"]
            response = await http.get(f"/api/v1/projects?access_token={token}",
                                      headers={"X-Request-ID": "req-from-client"})
            assert response.headers["x-request-id"] == "req-from-client"
        gateway.terminate()
        gateway.wait(20)
    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert token not in text
    assert {"timestamp", "level", "logger", "message"} <= set(lines[0])
    access = [line for line in lines if line["logger"] == "uvicorn.access" and "/api/v1/projects" in line["message"]]
    assert len(access) == 1, lines
    assert access[0]["request_id"] == "req-from-client"
    assert "access_token=[redacted]" in access[0]["message"]
    assert any(line["logger"] == "gateway.app" and "gateway ready" in line["message"] for line in lines)
