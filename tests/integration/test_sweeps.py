"""Sweeps: trial runs of a yolo.train request over a grid, trained by a real runner on generated data; the
parallelism bound, the best trial by the metric, canceling a sweep as a whole, refused bodies, isolation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared.settings import Settings
from tests.auth_support import bearer, create_user
from tests.datagen import make_detect_dataset
from tests.integration.rest_helpers import api, new_project, problem
from tests.integration.runner_support import running_agent

METRIC = "val/box_loss"
BASE = {"dataset": "rects", "model": "yolov8n", "epochs": 1, "imgsz": 64, "batch": 4, "device": "cpu",
        "extra": {"mosaic": 0.0}}


async def _client_with_dataset(client: Any, tmp_path: Path) -> None:
    await new_project(client, "tuning")
    data = make_detect_dataset(tmp_path / "data" / "rects", n_train=4, n_val=2, imgsz=64)
    registered = await client.post("/api/v1/datasets", json={"name": "rects", "path": str(data.parent)})
    assert registered.status_code == 201, registered.text


def _settings(settings: Settings, tmp_path: Path) -> Settings:
    return msgspec.structs.replace(settings, data_roots=[tmp_path / "data"])


async def until_status(client: Any, sweep_id: str, status: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        sweep = (await client.get(f"/api/v1/projects/tuning/sweeps/{sweep_id}")).json()
        if sweep["status"] == status:
            return sweep
        assert time.monotonic() < deadline, f"sweep not {status}: {sweep}"
        await asyncio.sleep(0.5)


@pytest.mark.slow
async def test_a_two_trial_grid_trains_one_at_a_time_and_names_the_best(settings: Settings, tmp_path: Path) -> None:
    settings = _settings(settings, tmp_path)
    async with api(settings) as client:
        await _client_with_dataset(client, tmp_path)
        async with running_agent(settings):
            created = await client.post("/api/v1/projects/tuning/sweeps", json={
                "spec": BASE, "space": {"lr0": [0.01, 0.02], "fliplr": [0.0]}, "metric": METRIC,
                "direction": "minimize", "parallelism": 1})
            assert created.status_code == 201, created.text
            sweep = created.json()
            first, second = sweep["trials"]
            assert first["params"] == {"fliplr": 0.0, "lr0": 0.01} and first["run_id"]
            assert second["params"] == {"fliplr": 0.0, "lr0": 0.02}
            assert (second["status"], second["run_id"]) == ("pending", None)  # parallelism 1
            done = await until_status(client, sweep["id"], "completed", timeout=600)

        trials = done["trials"]
        assert [t["status"] for t in trials] == ["completed", "completed"], trials
        assert all(isinstance(t["value"], float) for t in trials), trials
        best = min(trials, key=lambda t: (t["value"], t["index"]))
        assert (done["best_trial"], done["best_run_id"], done["best_value"]) == (best["index"], best["run_id"],
                                                                                  best["value"])
        for trial in trials:
            run = (await client.get(f"/api/v1/runs/{trial['run_id']}")).json()
            assert run["kind"] == "yolo.train" and run["latest_metrics"][METRIC] == trial["value"]
            assert run["options"]["sweep_id"] == done["id"] and run["spec"]["lr0"] == trial["params"]["lr0"]
            assert run["spec"]["extra"]["fliplr"] == 0.0 and run["spec"]["imgsz"] == 64
        listed = (await client.get("/api/v1/projects/tuning/sweeps")).json()
        assert listed["total"] == 1 and listed["items"][0]["best_trial"] == best["index"]
        problem(await client.post(f"/api/v1/projects/tuning/sweeps/{done['id']}/cancel"), 409)


async def test_canceling_a_sweep_cancels_its_unfinished_trials(settings: Settings, tmp_path: Path) -> None:
    settings = _settings(settings, tmp_path)
    async with api(settings) as client:  # no runner: the trials wait in the queue
        await _client_with_dataset(client, tmp_path)
        sweep = (await client.post("/api/v1/projects/tuning/sweeps", json={
            "spec": BASE, "space": {"batch": [2, 4, 8]}, "parallelism": 2})).json()
        assert [t["status"] for t in sweep["trials"]] == ["queued", "queued", "pending"], sweep
        canceled = await client.post(f"/api/v1/projects/tuning/sweeps/{sweep['id']}/cancel")
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] == "canceled"
        assert [t["status"] for t in canceled.json()["trials"]] == ["canceled", "canceled", "canceled"]
        for trial in sweep["trials"][:2]:
            assert (await client.get(f"/api/v1/runs/{trial['run_id']}")).json()["status"] == "canceled"
        again = await client.post(f"/api/v1/projects/tuning/sweeps/{sweep['id']}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "canceled"

        random_sweep = (await client.post("/api/v1/projects/tuning/sweeps", json={
            "spec": BASE, "method": "random", "trials": 2, "seed": 3,
            "space": {"lr0": [0.001, 0.01, 0.1], "optimizer": ["SGD", "AdamW"]}, "parallelism": 1})).json()
        assert len(random_sweep["trials"]) == 2
        assert len({tuple(sorted(t["params"].items())) for t in random_sweep["trials"]}) == 2
        await client.post(f"/api/v1/projects/tuning/sweeps/{random_sweep['id']}/cancel")


async def test_bad_sweeps_are_refused_and_other_users_see_none(settings: Settings, tmp_path: Path) -> None:
    settings = _settings(settings, tmp_path)
    async with api(settings) as client:
        await _client_with_dataset(client, tmp_path)
        base = "/api/v1/projects/tuning/sweeps"
        for body in ({"spec": BASE, "space": {"momentum_of_doom": [1]}},
                     {"spec": BASE, "space": {}},
                     {"spec": {**BASE, "kind": "yolo.val"}, "space": {"lr0": [0.01]}},
                     {"spec": {**BASE, "epochs": "many"}, "space": {"lr0": [0.01]}},
                     {"spec": BASE, "space": {"lr0": [7.0]}},
                     {"spec": BASE, "space": {"lr0": [0.01]}, "method": "random"},
                     {"spec": BASE, "space": {"lr0": [0.01]}, "parallelism": 0}):
            problem(await client.post(base, json=body), 422)
        assert (await client.get(base)).json()["total"] == 0
        sweep = (await client.post(base, json={"spec": BASE, "space": {"lr0": [0.01]}})).json()
        bob = bearer(await create_user(client, "bob"))
        problem(await client.get(base, headers=bob), 404)
        problem(await client.get(f"{base}/{sweep['id']}", headers=bob), 404)
        problem(await client.post(f"{base}/{sweep['id']}/cancel", headers=bob), 404)
        problem(await client.post(base, json={"spec": BASE, "space": {"lr0": [0.01]}}, headers=bob), 404)
        problem(await client.get(f"{base}/no-such-sweep"), 404)
        await client.post(f"{base}/{sweep['id']}/cancel")
