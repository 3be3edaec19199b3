"""Datasets for runners on other hosts, over a real gateway (uvicorn), NATS and Postgres: a run's dataset is
packed into its content-addressed archive, put into the JetStream object store and served over HTTP to runner
credentials only; a runner with a state folder of its own fetches it by hash from either, into its cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import msgspec
import nats
import yaml

from runner.datasets import dataset_data, is_local
from shared.artifacts import artifact_store
from shared.dataset_archive import store_key
from shared.settings import Settings
from tests.auth_support import authorize
from tests.dataset_factories import make_yolo_yaml
from tests.integration.rest_helpers import served_gateway, yolo_runner_online

RUNNER_TOKEN = "runner-credential-of-the-test"


async def test_a_runs_dataset_reaches_a_runner_on_another_host_by_hash_from_the_store_or_the_gateway(
    settings: Settings, tmp_path: Path
) -> None:
    data_root = tmp_path / "data"
    make_yolo_yaml(data_root / "shapes", n_train=4, n_val=2)
    tokens = tmp_path / "runner-tokens"
    tokens.write_text(hashlib.sha256(RUNNER_TOKEN.encode()).hexdigest() + "\n")
    gateway = msgspec.structs.replace(settings, data_roots=[data_root], artifact_store="nats",
                                      runner_tokens_file=tokens)
    async with served_gateway(gateway) as url, yolo_runner_online(gateway), \
            httpx.AsyncClient(base_url=f"{url}/api/v1", timeout=60) as client:
        await authorize(client)
        assert (await client.post("/projects", json={"name": "vision"})).status_code == 201
        registered = await client.post("/datasets", json={"name": "shapes", "path": str(data_root / "shapes")})
        assert registered.status_code == 201, registered.text
        created = await client.post("/projects/vision/runs", json={
            "kind": "yolo.train", "dataset": "shapes", "model": "yolov8n", "epochs": 1, "imgsz": 64})
        assert created.status_code == 201, created.text
        spec = created.json()["spec"]
        sha = spec["dataset_sha256"]
        again = await client.post("/projects/vision/runs", json={"kind": "yolo.train", "dataset": "shapes"})
        assert again.json()["spec"]["dataset_sha256"] == sha  # packed once, the same content, the same hash

        served = f"/fleet/datasets/{sha}"
        assert (await client.get(served)).status_code == 401  # a user's token is not a runner credential
        bare = httpx.AsyncClient(base_url=f"{url}/api/v1", timeout=60)
        async with bare:
            assert (await bare.get(served)).status_code == 401
            wrong = await bare.get(served, headers={"Authorization": "Bearer guess"})
            assert wrong.status_code == 401 and wrong.headers["content-type"].startswith("application/problem+json")
            runner = {"Authorization": f"Bearer {RUNNER_TOKEN}"}
            got = await bare.get(served, headers=runner)
            assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == sha
            assert (await bare.get(f"/fleet/datasets/{'0' * 64}", headers=runner)).status_code == 404
            assert (await bare.get("/fleet/datasets/..%2Fsecrets", headers=runner)).status_code == 404

        # host B: a state folder of its own; the gateway's path is not its own (not read in place)
        nc = await nats.connect(settings.nats_url)
        try:
            host_b = msgspec.structs.replace(settings, artifact_store="nats", state_dir=tmp_path / "host-b")
            assert not is_local(host_b, spec["data"]) and is_local(gateway, spec["data"])
            store = artifact_store(host_b, nc.jetstream())
            assert (await store.stat(store.uri_for(store_key(sha)))).size > 0  # type: ignore[attr-defined]
            async with dataset_data(host_b, store, spec["data"], sha) as found:
                data = Path(found)
                assert data.is_relative_to(host_b.dataset_cache_dir)
                assert len(list((data.parent / "yolo/images/train").iterdir())) == 4
                assert yaml.safe_load(data.read_text())["path"] == str(data.parent / "yolo")
        finally:
            await nc.close()

        # host C: no object store (local artifacts), the gateway over HTTP with the runner's credential
        token_file = tmp_path / "gateway-token"
        token_file.write_text(RUNNER_TOKEN + "\n")
        host_c = msgspec.structs.replace(settings, state_dir=tmp_path / "host-c", runner_gateway_url=url,
                                         runner_gateway_token_file=token_file)
        async with dataset_data(host_c, artifact_store(host_c), spec["data"], sha) as found:
            data = Path(found)
            assert data.is_relative_to(host_c.dataset_cache_dir) and data.is_file()
