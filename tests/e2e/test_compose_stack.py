"""compose.yaml, for real: the images built here without a registry, `compose up`, one YOLO training through the
Compose runner (REST → NATS → runner → events → the Postgres projection), its events, `compose down -v`.

The engine, its network namespace and the images: `tests.compose_support`. The first run makes the images
(minutes: debootstrap, the wheelhouse, the runner image's torch); later runs find them in the cache folder.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.auth_support import ADMIN, ADMIN_PASSWORD, bearer
from tests.compose_support import ComposeEngine, ComposeUnavailable
from tests.datagen import make_detect_dataset
from tests.dataset_factories import zip_folder
from tests.e2e.stackctl import ok

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # a cold cache builds every image first

TERMINAL = {"completed", "failed", "canceled"}
ONE_SHOTS = {"secrets", "migrate"}


@pytest.fixture(scope="module")
def engine() -> Iterator[ComposeEngine]:
    try:
        engine = ComposeEngine.start()
    except ComposeUnavailable as exc:
        pytest.skip(f"no Docker Compose here: {exc}")
    try:
        yield engine
    finally:
        engine.stop()


def _state(engine: ComposeEngine, project: str) -> dict[str, dict[str, Any]]:
    done = engine.compose(project, "ps", "-a", "--format", "json", check=False, timeout=60)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip().startswith("{")]
    return {row["Service"]: row for row in rows}


def _wait_ready(engine: ComposeEngine, project: str, url: str, timeout: float = 240.0) -> None:
    """Until the gateway answers /ready; fails at once when a service dies (a one-shot that fails, the
    gateway exiting) instead of waiting out the bound."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=3) as client:
        while True:
            try:
                if client.get(f"{url}/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            for service, row in _state(engine, project).items():
                failed_one_shot = service in ONE_SHOTS and row["State"] == "exited" and row.get("ExitCode")
                if failed_one_shot or (service not in ONE_SHOTS and row["State"] in {"exited", "dead"}):
                    logs = engine.compose(project, "logs", "--no-color", check=False).stdout[-4000:]
                    pytest.fail(f"{service} is {row['State']} ({row.get('ExitCode')}):\n{logs}")
            assert time.monotonic() < deadline, engine.compose(project, "logs", "--no-color", check=False).stdout[-4000:]
            time.sleep(0.5)


def test_compose_stack_runs_a_training_through_its_runner(engine: ComposeEngine, tmp_path: Path) -> None:
    began = time.monotonic()
    built = engine.images()
    images_s = time.monotonic() - began
    no_torch = "import importlib.util as u; assert not (u.find_spec('torch') or u.find_spec('ultralytics'))"
    engine.cli("run", "--rm", "--network", "none", "trainforge-gateway:latest", "python", "-c", no_torch)
    project = f"tfc{uuid.uuid4().hex[:6]}"
    env = {"TRAINFORGE_ADMIN_PASSWORD": ADMIN_PASSWORD, "POSTGRES_PASSWORD": uuid.uuid4().hex}
    url = f"http://{engine.address}:8000"
    try:
        engine.compose(project, "up", "-d", "--no-build", "--pull", "never", env=env, timeout=300)
        _wait_ready(engine, project, url)
        up_s = time.monotonic() - began - images_s
        with httpx.Client(base_url=f"{url}/api/v1", timeout=60) as api:
            token = ok(api.post("/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD}))["access_token"]
            api.headers.update(bearer(token))
            ok(api.post("/projects", json={"name": "compose"}), 201)
            folder = make_detect_dataset(tmp_path / "rects", imgsz=64).parent
            archive = zip_folder(folder, tmp_path / "rects.zip")
            with archive.open("rb") as handle:
                dataset = ok(api.post("/datasets", files={"file": (archive.name, handle, "application/zip")},
                                      data={"name": "rects"}, timeout=120), 201)
            assert dataset["splits"] == {"train": 16, "val": 8}
            run = ok(api.post("/projects/compose/runs", json={
                "kind": "yolo.train", "dataset": "rects", "model": "yolov8n", "epochs": 1, "imgsz": 64, "batch": 8,
                "extra": {"plots": False}}), 201)
            with connect_sse(api, "GET", f"/runs/{run['id']}/events", timeout=httpx.Timeout(300, connect=5)) as sse:
                events = list(sse.iter_sse())  # the gateway ends the stream after the run's last event
            final = ok(api.get(f"/runs/{run['id']}"))
        types = [e.event for e in events]
        assert final["status"] == "completed", (final["error"], types)
        assert types[0] == "run.queued" and types[-1] == "run.completed", types
        assert types.index("run.claimed") < types.index("run.started") < types.index("run.completed")
        assert {"run.metrics", "run.checkpoint", "run.log"} <= set(types), types
        claimed = json.loads(events[types.index("run.claimed")].data)
        assert claimed.get("runner_id") == "compose-cpu", claimed
        assert {"metrics/mAP50(B)", "fitness"} <= set(final["latest_metrics"])
        print(f"\ncompose: images {images_s:.0f}s (built: {built or 'none, cached'}), up to ready {up_s:.0f}s, "
              f"job {time.monotonic() - began - images_s - up_s:.0f}s")
    finally:
        down = engine.compose(project, "down", "-v", "--timeout", "10", env=env, check=False, timeout=180)
        assert down.returncode == 0, down.stderr
    assert not engine.cli("ps", "-aq").stdout.strip()
    assert not [v for v in engine.cli("volume", "ls", "-q").stdout.split() if v.startswith(project)]
