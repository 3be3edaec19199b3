"""Docker-backend runs through the API: the project's target and files, preflight before queuing, and the
whole flow into a training container of a real Docker engine (tests/docker_engine.py) with a runner of the pool."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats
import pytest

from gateway.preflight import preflight
from shared.contracts.preflight import PreflightRequest
from shared.settings import Settings
from tests.docker_engine import DockerEngine
from tests.integration.rest_helpers import api, new_project, problem
from tests.integration.runner_support import start_runner_process

pytestmark = pytest.mark.slow


@pytest.fixture
def docker_settings(
    settings: Settings, docker_engine: DockerEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Settings]:
    """A training container of this test (the data folder mounted at /data) and a runner target `llm`."""
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    host_root = tmp_path / "data"
    host_root.mkdir()
    (host_root / "alpaca.json").write_text('[{"instruction": "hi", "output": "hello"}]')
    (host_root / "train.yaml").write_text("num_train_epochs: 1\n")
    with docker_engine.container(request.node.name, {host_root: "/data"}) as container:
        targets = tmp_path / "targets.toml"
        targets.write_text(
            "[targets.llm]\n"
            f'container = "{container}"\n'
            'workdir = "/app"\n'
            f'host_root = "{host_root}"\n'
            'container_root = "/data"\n'
            'output_dir = "outputs/{run_id}"\n'
            "poll_s = 0.1\n"
        )
        yield msgspec.structs.replace(settings, runner_targets_file=targets, preflight_timeout_s=3.0)


def training(max_steps: int = 6) -> str:
    return ("train-llm --output_dir {output_dir} --resume_from_checkpoint {resume_from} "
            f"--max_steps {max_steps} --save_steps 3 --step_time 0.05")


@contextlib.asynccontextmanager
async def runner_process(settings: Settings, tmp_path: Path):
    """A runner in its own process (the test client blocks this event loop while a request is handled, so an
    in-process runner could not answer preflight), ready once it answers preflight."""
    process = start_runner_process(settings, "docker-runner", tmp_path / "runner.log")
    try:
        nc = await nats.connect(settings.nats_url)
        try:
            for _ in range(100):
                if await preflight(nc, settings, "cpu", PreflightRequest(target="llm"), timeout=0.5) is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError((tmp_path / "runner.log").read_text())
        finally:
            await nc.close()
        yield process
    finally:
        process.terminate()
        process.wait(10)


async def wait_status(client, run_id: str, statuses: set[str], timeout: float = 30.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = (await client.get(f"/api/v1/runs/{run_id}")).json()
        if run["status"] in statuses:
            return run
        assert asyncio.get_running_loop().time() < deadline, run
        await asyncio.sleep(0.2)


async def test_missing_project_files_are_refused_with_400_naming_each_and_nothing_is_queued(
    docker_settings: Settings, tmp_path: Path
) -> None:
    async with runner_process(docker_settings, tmp_path), api(docker_settings) as client:
        await new_project(client, "llm", container_target="llm", dataset_name="alpaca.json",
                          training_yaml_name="missing.yaml")
        response = await client.post("/api/v1/projects/llm/runs",
                                     json={"kind": "container", "backend": "docker", "start_command": "true"})
        body = problem(response, 400)
        assert "training YAML 'missing.yaml'" in body["detail"]
        assert body["errors"] == [{"field": "training_yaml", "message": "training YAML 'missing.yaml' not found"}]
        assert (await client.get("/api/v1/projects/llm/runs")).json()["total"] == 0


async def test_docker_run_needs_a_target_from_the_run_or_its_project(settings: Settings) -> None:
    async with api(settings) as client:
        await new_project(client, "no-target")
        response = await client.post("/api/v1/projects/no-target/runs",
                                     json={"kind": "container", "backend": "docker", "start_command": "true"})
        assert problem(response, 422)["errors"][0]["field"] == "target"


async def test_a_docker_run_trains_in_the_container_with_logs_metrics_and_checkpoints(
    docker_settings: Settings, tmp_path: Path
) -> None:
    async with runner_process(docker_settings, tmp_path), api(docker_settings) as client:
        await new_project(client, "llm", container_target="llm", dataset_name="alpaca.json",
                          training_yaml_name="train.yaml")
        response = await client.post("/api/v1/projects/llm/runs",
                                     json={"kind": "container", "backend": "docker", "start_command": training()})
        assert response.status_code == 201, response.text
        run = response.json()
        assert run["spec"]["target"] == "llm" and run["spec"]["training_yaml_name"] == "train.yaml"
        final = await wait_status(client, run["id"], {"completed", "failed", "canceled"})
        assert final["status"] == "completed", final
        assert "loss" in final["latest_metrics"]
        checkpoints = (await client.get(f"/api/v1/runs/{run['id']}/checkpoints")).json()["items"]
        assert {c["step"] for c in checkpoints} >= {3, 6}


async def test_queued_without_a_preflight_answer_the_runner_checks_on_claim_with_the_same_message(
    docker_settings: Settings, tmp_path: Path
) -> None:
    async with api(docker_settings) as client:  # no runner yet: nobody answers preflight
        await new_project(client, "llm", container_target="llm", dataset_name="alpaca.json",
                          training_yaml_name="missing.yaml")
        response = await client.post("/api/v1/projects/llm/runs",
                                     json={"kind": "container", "backend": "docker", "start_command": "true"})
        assert response.status_code == 201, response.text
        async with runner_process(docker_settings, tmp_path):
            final = await wait_status(client, response.json()["id"], {"completed", "failed", "canceled"})
    assert final["status"] == "failed" and final["failure_cause"] == "user"
    assert "training YAML 'missing.yaml'" in final["error"]
