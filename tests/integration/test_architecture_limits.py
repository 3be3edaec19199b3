"""Architecture validation cannot take the gateway down: it runs on a runner (request/reply over NATS), budgets
refuse huge models before anything is built, the real build runs in a child process of the runner with a
memory limit and a timeout, a few at a time, without secrets; with no runner online it is a 503 at once.

Each validation starts a process that imports torch (~2.8 s): these tests keep their number small."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from gateway.errors import Unavailable, Unprocessable
from gateway.services import architectures as service
from runner.yolo import service as runner_service
from shared.settings import Settings
from tests.architecture_support import FULL_RESOLUTION, TINY_YAML, WIDE_CONVS, rss_mb
from tests.integration.rest_helpers import api, bus, problem, yolo_runner_online

ONE_WIDE_LAYER = """\
nc: 2
backbone:
  - [-1, 1, Conv, [16384, 3, 2]]
head:
  - [-1, 1, Classify, [nc]]
"""


def _stock_yaml(name: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")  # not imported: that would bring torch into this process
    assert spec is not None and spec.origin
    return next((Path(spec.origin).parent / "cfg/models").rglob(name)).read_text()


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    """The bus, with a runner's YOLO services answering on it (validating through the service, no gateway)."""
    async with yolo_runner_online(settings), bus(settings) as connection:
        yield connection


@pytest.fixture
def local(settings: Settings) -> Settings:
    return settings


async def test_huge_models_are_refused_by_layer_without_the_gateway_growing(settings: Settings) -> None:
    async with api(settings) as client, yolo_runner_online(settings):
        before = rss_mb()
        wide = problem(await client.post("/api/v1/architectures/validate",
                                         json={"yaml": WIDE_CONVS, "imgsz": 32}), 422)
        grown = rss_mb() - before
        one = problem(await client.post("/api/v1/architectures", json={"name": "w", "yaml": ONE_WIDE_LAYER}), 422)
        full = problem(await client.post("/api/v1/architectures/validate",
                                         json={"yaml": FULL_RESOLUTION, "imgsz": 2048}), 422)
        assert (await client.get("/api/v1/architectures")).json()["items"] == []

    assert grown < 100, f"the gateway grew by {grown:.0f} MB"
    error = wide["errors"][0]
    assert (error["field"], error["layer"], error["line"]) == ("yaml", 1, 4)
    assert error["message"] == ("layer 1 (Conv): the model would have 151,121,920 parameters by this layer; "
                                "at most 100,000,000 are allowed")
    assert one["errors"][0]["layer"] == 0 and "MB of activations" in one["errors"][0]["message"]
    assert full["errors"][0]["layer"] == 2 and "at imgsz 2048" in full["errors"][0]["message"]


@pytest.mark.parametrize("name", ["yolov8.yaml", "yolo11.yaml"])
async def test_stock_models_still_validate(nc: NATS, local: Settings, name: str) -> None:
    report = await service.validate(nc, local, _stock_yaml(name), 640)
    assert report.valid and report.task == "detect" and report.stride == [8, 16, 32]
    assert 2_000_000 < report.parameters < 4_000_000 and report.gflops > 5  # scale n by default


async def test_a_validation_out_of_memory_is_a_clear_error_and_the_next_one_works(nc: NATS, local: Settings) -> None:
    # past the parameter budget only because it is raised: the child's memory limit is what stops it
    tight = msgspec.structs.replace(local, architecture_validate_memory_mb=1200, architecture_max_params=10**9)
    with pytest.raises(Unprocessable) as refused:
        await service.validate(nc, tight, WIDE_CONVS, 32)
    assert refused.value.errors and refused.value.errors[0]["layer"] == 1
    assert "out of memory" in refused.value.detail and "at most 1,200 MB" in refused.value.detail

    tiny = msgspec.structs.replace(local, architecture_validate_memory_mb=64)  # torch cannot even load
    with pytest.raises(Unavailable, match="could not load torch within 64 MB"):
        await service.validate(nc, tiny, TINY_YAML, 64)

    assert (await service.validate(nc, tight, TINY_YAML, 64)).parameters > 0


async def test_a_validation_past_its_timeout_is_stopped_with_a_503(nc: NATS, local: Settings) -> None:
    hasty = msgspec.structs.replace(local, architecture_validate_timeout_s=0.2)
    with pytest.raises(Unavailable, match="took longer than 0.2 s") as stopped:
        await service.validate(nc, hasty, TINY_YAML, 64)
    assert stopped.value.status_code == 503


async def test_simultaneous_validations_wait_for_a_slot_and_all_answer(
    nc: NATS, local: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    running, most = 0, 0
    run_child = runner_service._run_child

    async def counted(request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            return await run_child(request, timeout_s)
        finally:
            running -= 1

    monkeypatch.setattr(runner_service, "_run_child", counted)
    yamls = [TINY_YAML, TINY_YAML, WIDE_CONVS, TINY_YAML, TINY_YAML]
    results = await asyncio.gather(*(service.validate(nc, local, y, 64) for y in yamls), return_exceptions=True)

    assert most == local.architecture_validate_concurrency == 2
    assert [type(r).__name__ for r in results] == ["ArchitectureReport"] * 2 + ["Unprocessable"] + [
        "ArchitectureReport"] * 2
    assert all(r.parameters == results[0].parameters for r in results if not isinstance(r, Exception))


def test_the_validation_child_inherits_no_secrets() -> None:
    env = runner_service.child_environment({
        "PATH": "/usr/bin", "HOME": "/root", "YOLO_CONFIG_DIR": "/s/ultralytics", "MPLCONFIGDIR": "/s/mpl",
        "TRAINFORGE_JWT_SECRET": "x", "TRAINFORGE_ADMIN_PASSWORD": "x", "TRAINFORGE_NATS_PASSWORD": "x",
        "TRAINFORGE_DATABASE_URL": "postgresql://u:p@h/d", "ULTRALYTICS_API_KEY": "x", "AWS_SECRET_ACCESS_KEY": "x",
    })
    assert {"PATH", "HOME", "YOLO_CONFIG_DIR", "MPLCONFIGDIR"} <= set(env)
    assert not [k for k in env if k.startswith("TRAINFORGE_") or "KEY" in k or "SECRET" in k]
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["YOLO_OFFLINE"] == "1"


async def test_with_no_runner_online_validation_is_a_503_at_once(settings: Settings) -> None:
    async with api(settings) as client:
        refused = problem(await client.post("/api/v1/architectures/validate", json={"yaml": TINY_YAML}), 503)
        saved = problem(await client.post("/api/v1/architectures", json={"name": "t", "yaml": TINY_YAML}), 503)
        assert (await client.get("/api/v1/architectures")).json()["items"] == []
    assert "no runner with Ultralytics is online" in refused["detail"] and saved["detail"] == refused["detail"]
