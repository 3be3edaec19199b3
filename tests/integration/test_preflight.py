"""Preflight request/reply between the gateway and the runners of a pool, over a real NATS server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from gateway.preflight import preflight
from runner.preflight import serve_preflight
from runner.targets import Targets, parse_targets
from shared.contracts.preflight import MissingItem, PreflightRequest
from shared.settings import Settings


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url)
    yield client
    await client.drain()


@pytest.fixture
def settings(nats_url: str, bus_prefix: str, tmp_path: Path) -> Settings:
    """No database needed here: only the bus."""
    raw = {"nats_url": nats_url, "bus_prefix": bus_prefix, "state_dir": tmp_path, "runner_id": "runner-a"}
    return Settings.from_mapping(raw)


@pytest.fixture
def targets(tmp_path: Path) -> Targets:
    root = tmp_path / "llm"
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "alpaca.json").write_text("[]")
    (root / "sft.yaml").write_text("stage: sft\n")
    llama = {"container": "lf", "workdir": "/app", "host_root": str(root)}
    return parse_targets({"targets": {"llama": llama}})


async def test_runner_answers_ok_when_dataset_and_yaml_are_in_place(nc: NATS, settings: Settings, targets):
    await serve_preflight(nc, settings, "gpu", targets)
    request = PreflightRequest(target="llama", dataset_name="datasets/alpaca.json", training_yaml_name="sft.yaml")

    reply = await preflight(nc, settings, "gpu", request, timeout=2)

    assert reply is not None and reply.ok and reply.missing == [] and reply.runner_id == "runner-a"


async def test_runner_names_each_missing_file(nc: NATS, settings: Settings, targets: Targets):
    await serve_preflight(nc, settings, "gpu", targets)
    request = PreflightRequest(target="llama", dataset_name="datasets/gone.json", training_yaml_name="nope.yaml")

    reply = await preflight(nc, settings, "gpu", request, timeout=2)

    assert reply is not None and not reply.ok
    assert reply.missing == [
        MissingItem(what="dataset", name="datasets/gone.json"),
        MissingItem(what="training_yaml", name="nope.yaml"),
    ]
    assert reply.message("llama") == (
        "missing under container target 'llama': dataset 'datasets/gone.json', training YAML 'nope.yaml'"
    )


async def test_unknown_target_and_names_outside_the_root_are_errors(nc: NATS, settings: Settings, targets):
    await serve_preflight(nc, settings, "gpu", targets)

    unknown = await preflight(nc, settings, "gpu", PreflightRequest(target="gpt"), timeout=2)
    outside = PreflightRequest(target="llama", dataset_name="../../etc/passwd")
    escaping = await preflight(nc, settings, "gpu", outside, timeout=2)

    assert unknown is not None and not unknown.ok
    assert "unknown container target 'gpt'" in (unknown.error or "")
    assert escaping is not None and not escaping.ok and "outside the target's root" in (escaping.error or "")


async def test_no_runner_listening_means_no_answer(nc: NATS, settings: Settings):
    request = PreflightRequest(target="llama", dataset_name="a.json")
    assert await preflight(nc, settings, "empty-pool", request, timeout=0.5) is None


async def test_silent_runner_means_no_answer_in_time(nc: NATS, settings: Settings):
    from shared.subjects import Subjects

    async def slow(msg):  # a runner too busy to answer in time
        await asyncio.sleep(1)

    await nc.subscribe(Subjects(settings.bus_prefix).preflight("busy"), cb=slow)
    assert await preflight(nc, settings, "busy", PreflightRequest(target="llama"), timeout=0.3) is None


async def test_one_runner_of_the_pool_answers_each_request(nc: NATS, nats_url: str, settings: Settings, targets):
    other = await nats.connect(nats_url)
    try:
        subs = [await serve_preflight(client, settings, "gpu", targets) for client in (nc, other)]
        await other.flush()
        request = PreflightRequest(target="llama")
        replies = [await preflight(nc, settings, "gpu", request, timeout=2) for _ in range(6)]
        assert all(r is not None and r.ok for r in replies)
        assert sum(sub.delivered for sub in subs) == 6  # a queue group: never both
    finally:
        await other.drain()
