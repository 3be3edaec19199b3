"""`GET /metrics`: scraped with Prometheus' own text parser, on a real gateway, NATS, Postgres and runner."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from shared.contracts.events import DeviceInfo
from shared.settings import Settings
from tests.auth_support import ADMIN, ADMIN_PASSWORD, bearer, login
from tests.integration.rest_helpers import api, new_project, problem, runner_online, served_gateway, start_run
from tests.integration.runner_support import running_agent

TOKEN = "scrape-secret-for-tests"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape: (name, labels) -> value, read by prometheus_client's parser."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample `name{labels}`; 0 when absent (a gauge with no series yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def matching(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    return {ls: v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls}


async def wait_until(check: Any, timeout: float, what: str) -> None:
    """Poll `check()` (a scrape) until it holds; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def scrape(client: Any) -> Samples:
    response = await client.get("/metrics", headers=bearer(TOKEN))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return parse(response.text)


async def test_metrics_need_the_token_and_move_when_runs_run(settings: Settings) -> None:
    gpu = DeviceInfo(name="test gpu", kind="cuda", index=0, memory_total_mb=1000, memory_used_mb=250,
                     utilization=0.5)
    settings = msgspec.structs.replace(settings, metrics_token=TOKEN, rate_limit_login_per_minute=2)
    async with api(settings) as client:  # logged in: one login of two
        problem(await client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401)
        problem(await client.get("/metrics", headers={"Authorization": ""}), 401)
        before = await scrape(client)
        assert value(before, "trainforge_runs", status="completed", kind="container") == 0
        assert value(before, "trainforge_rate_limit_refusals_total", limit="login") == 0

        await new_project(client, "metered")
        queued = (await start_run(client, "metered")).json()  # no runner of pool cpu yet: it waits
        assert queued["status"] == "queued"
        waiting = await scrape(client)
        assert value(waiting, "trainforge_runs", status="queued", kind="container") == 1
        assert value(waiting, "trainforge_queue_length", pool="cpu") == 1
        assert value(waiting, "trainforge_queue_oldest_wait_seconds", pool="cpu") >= 0

        async with running_agent(settings, runner_id="metered-runner"), \
                runner_online(settings, "gpu", devices=[gpu]) as gpu_runner:
            for _ in range(2):
                (await start_run(client, "metered")).raise_for_status()

            async def all_done() -> bool:
                samples = await scrape(client)
                return value(samples, "trainforge_runs", status="completed", kind="container") == 3

            await wait_until(all_done, timeout=60, what="three completed runs in the metrics")

            seen: list[Samples] = []  # the scrape that showed both runners: a later one may miss the fake GPU
            # runner's series if its next heartbeat is late on a loaded machine

            async def runners_seen() -> bool:
                samples = await scrape(client)
                seen[:] = [samples]
                return (value(samples, "trainforge_runners", pool="cpu", state="idle")
                        + value(samples, "trainforge_runners", pool="cpu", state="busy")) == 1 \
                    and value(samples, "trainforge_runner_gpu_memory_total_bytes", runner=gpu_runner, gpu="0",
                              model="test gpu") > 0

            await wait_until(runners_seen, timeout=60, what="both runners in the metrics")
            after = seen[0]

        assert value(after, "trainforge_runs", status="queued", kind="container") == 0
        assert value(after, "trainforge_queue_length", pool="cpu") == 0
        assert value(after, "trainforge_dispatch_latency_seconds_count", pool="cpu") == 3
        assert value(after, "trainforge_dispatch_latency_seconds_bucket", pool="cpu", le="+Inf") == 3
        assert value(after, "trainforge_projected_events") > value(before, "trainforge_projected_events")
        assert value(after, "trainforge_projection_lag_events") >= 0
        gpu_labels = {"runner": gpu_runner, "gpu": "0", "model": "test gpu"}
        assert value(after, "trainforge_runner_gpu_utilization_ratio", **gpu_labels) == 0.5
        assert value(after, "trainforge_runner_gpu_memory_used_bytes", **gpu_labels) == 250 * 1024 * 1024
        assert value(after, "trainforge_runner_gpu_memory_total_bytes", **gpu_labels) == 1000 * 1024 * 1024
        # Litestar's HTTP figures, by path template (not one series per run)
        created = matching(after, "trainforge_http_requests_total", path="/api/v1/projects/{ref}/runs",
                           method="POST")
        assert sum(created.values()) >= 3, created
        assert not matching(after, "trainforge_http_requests_total", path="/metrics")

        # rate-limit refusals: the second login is the last one allowed this minute
        await login(client)
        problem(await client.post("/api/v1/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD}),
                429)
        limited = await scrape(client)
        assert value(limited, "trainforge_rate_limit_refusals_total", limit="login") == 1


async def test_without_a_token_metrics_answer_loopback_clients_only(settings: Settings) -> None:
    async with api(settings) as client:  # the test client's address is `testclient`, not loopback
        problem(await client.get("/metrics"), 403)
    async with served_gateway(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.get("/metrics")  # from 127.0.0.1
        assert response.status_code == 200, response.text
        samples = parse(response.text)
        assert value(samples, "trainforge_sse_clients", stream="events") == 0
        token = (await login(http))["access_token"]
        project = (await http.post("/api/v1/projects", json={"name": "sse"}, headers=bearer(token))).json()

        async with http.stream("GET", f"/api/v1/projects/{project['id']}/events", headers=bearer(token)) as stream:
            assert stream.status_code == 200

            async def streaming() -> bool:
                return value(parse((await http.get("/metrics")).text), "trainforge_sse_clients", stream="events") == 1

            await wait_until(streaming, timeout=10, what="the SSE client in the metrics")
