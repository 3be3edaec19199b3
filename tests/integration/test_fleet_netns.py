"""A fleet on hosts made of network namespaces (tests/netns_support.py): a three-node NATS cluster (JetStream,
replicas 3), the gateway (with Postgres behind it, reached over its Unix socket only by the gateway) on one host,
two runner hosts, each with a state folder of its own (no shared folder: the dataset and the checkpoint reach
host B by the bus). Every part authenticates with its own NATS user (`trainforge.busauth`), the runners to the
gateway with their own credential. Real processes (`trainforge gateway`, `trainforge runner`, nats-server), real
Ultralytics on the CPU.

A training starts on host A; at its first checkpoint A's link is cut (its veth down); the job is redelivered,
host B fetches the dataset (by content hash) and the checkpoint from the object store and resumes from it; the
events stream's leader node is killed while B trains; no event is lost, and once everything settles the
gateway's projection in Postgres equals the stream."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import nats
import pytest

from shared.settings import Settings
from shared.subjects import Subjects
from tests.auth_support import authorize
from tests.datagen import make_detect_dataset
from tests.integration.nats_support import jetstream_ready
from tests.integration.runner_support import TERMINAL, RunEvents, settings_env
from tests.netns_support import Hosts, NamespacesUnavailable
from trainforge.busauth import BusCredentials
from trainforge.embedded import nats_server_binary

pytestmark = pytest.mark.slow

NATS_NODES = ("n1", "n2", "n3")
POOL = "fleet"
RUNNER_TOKEN = "fleet-runner-credential"


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2): cannot make network namespaces")
    try:
        made = Hosts.create(["gw", "a", "b", *NATS_NODES])
    except NamespacesUnavailable as exc:
        pytest.skip(f"the kernel refuses network namespaces here: {exc}")
    try:
        yield made
    finally:
        made.destroy()


class Fleet:
    def __init__(self, hosts: Hosts, folder: Path, settings: Settings) -> None:
        self.hosts, self.folder = hosts, folder
        (folder / "bus").mkdir(parents=True)
        self.credentials = BusCredentials.ensure(folder / "bus")
        self.nats_config = self.credentials.write_server_config(folder / "bus", settings.bus_prefix)
        self.nats: dict[str, Any] = {}
        self.urls = ",".join(f"nats://{hosts.address(n)}:4222" for n in NATS_NODES)
        tokens = folder / "gateway-secrets" / "runner-tokens"
        tokens.parent.mkdir(parents=True)
        tokens.write_text(hashlib.sha256(RUNNER_TOKEN.encode()).hexdigest() + "\n")
        self.gateway_url = f"http://{hosts.address('gw')}:8000"
        common = dict(nats_url=self.urls, nats_replicas=3, artifact_store="nats", database_url=None,
                      job_signing_key_file=None, job_verify_key=None, runner_local_backend=False)
        self.gateway = msgspec.structs.replace(
            settings, **{**common, "database_url": settings.database_url,
                         "job_signing_key_file": settings.job_signing_key_file},
            nats_user="gateway", nats_password=self.credentials.passwords["gateway"], host=hosts.address("gw"),
            port=8000, state_dir=folder / "gw" / "state", data_roots=[folder / "gw" / "data"],
            runner_tokens_file=tokens)
        self.runner_token_file = folder / "runner-secrets" / "gateway-token"
        self.runner_token_file.parent.mkdir(parents=True)
        self.runner_token_file.write_text(RUNNER_TOKEN + "\n")
        self.runner = msgspec.structs.replace(
            settings, **{**common, "job_verify_key": settings.job_verify_key}, nats_user="runner",
            nats_password=self.credentials.passwords["runner"], runner_pool=POOL, runner_device="cpu",
            runner_gateway_url=self.gateway_url, runner_gateway_token_file=self.runner_token_file,
            shutdown_grace_s=1.0)
        self.observer_url = ",".join(
            self.credentials.url_for(f"nats://{hosts.address(n)}:4222", "gateway") for n in NATS_NODES)

    def start_nats(self) -> None:
        routes = ",".join(f"nats://{self.hosts.address(n)}:6222" for n in NATS_NODES)
        for name in NATS_NODES:
            addr = self.hosts.address(name)
            self.nats[name] = self.hosts.run(name, [
                str(nats_server_binary()), "-c", str(self.nats_config), "-n", name, "-a", addr, "-p", "4222", "-js",
                "-sd", str(self.folder / name), "--cluster_name", "tf", "--cluster", f"nats://{addr}:6222",
                "--routes", routes,
            ], env=dict(os.environ), log=self.folder / f"{name}.log")  # fmt: skip

    def trainforge(self, host: str, command: str, settings: Settings) -> Any:
        env = settings_env(settings)
        env.update(YOLO_OFFLINE="1", YOLO_AUTOINSTALL="0")
        cli = Path(sys.executable).with_name("trainforge")
        return self.hosts.run(host, [str(cli), command], env=env, log=self.folder / f"{host}-{command}.log")

    def start_runner(self, host: str) -> Any:
        settings = msgspec.structs.replace(self.runner, runner_id=f"host-{host}",
                                           state_dir=self.folder / host / "state")
        return self.trainforge(host, "runner", settings)

    def logs(self) -> str:
        tails = []
        for path in sorted(self.folder.glob("*.log")):
            tails.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(tails)


async def until(check: Any, what: str, timeout: float) -> Any:
    """Wait (bounded) until `check()` returns something truthy; returns it."""
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(httpx.HTTPError, OSError):
                if found := await check():
                    return found
            await asyncio.sleep(0.25)
    raise AssertionError(what)  # pragma: no cover - the timeout raises first


@contextlib.asynccontextmanager
async def observer(fleet: Fleet) -> AsyncIterator[tuple[Any, Any]]:
    nc = await nats.connect(fleet.observer_url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        yield nc, nc.jetstream()
    finally:
        await nc.close()


async def projected(database_url: str, run_id: str) -> list[tuple[int, int, str, str, dict[str, Any]]]:
    from sqlalchemy.engine import make_url

    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT attempt, seq, type, event_id, body FROM events WHERE run_id = $1 "
                                "ORDER BY attempt, seq", run_id)
    finally:
        await conn.close()
    return [(r["attempt"], r["seq"], r["type"], r["event_id"], msgspec.json.decode(r["body"])
             if isinstance(r["body"], str | bytes) else r["body"]) for r in rows]


async def test_a_training_cut_off_on_host_a_resumes_on_host_b_through_a_node_loss_and_the_projection_equals_the_stream(
    settings: Settings, hosts: Hosts, tmp_path: Path
) -> None:
    fleet = Fleet(hosts, tmp_path / "fleet", settings)
    data = make_detect_dataset(tmp_path / "fleet" / "gw" / "data" / "shapes", n_train=8, n_val=4, imgsz=64)
    try:
        fleet.start_nats()
        await jetstream_ready(fleet.observer_url, timeout=60)
        gateway = fleet.trainforge("gw", "gateway", fleet.gateway)
        runner_a = fleet.start_runner("a")
        api = httpx.AsyncClient(base_url=f"{fleet.gateway_url}/api/v1", timeout=60)
        async with api, observer(fleet) as (nc, js):
            await until(lambda: _ready(api), "the gateway is ready", 120)
            await authorize(api)
            assert (await api.post("/projects", json={"name": "fleet"})).status_code == 201
            registered = await api.post("/datasets", json={"name": "shapes", "path": str(data.parent)})
            assert registered.status_code == 201, registered.text
            await until(lambda: _runner_idle(api, "host-a"), "runner A is online", 120)
            created = await api.post("/projects/fleet/runs", json={
                "kind": "yolo.train", "dataset": "shapes", "model": "yolov8n", "epochs": 3, "imgsz": 64,
                "batch": 4, "device": "cpu", "pool": POOL})
            assert created.status_code == 201, created.text
            run = created.json()
            sha = run["spec"]["dataset_sha256"]
            async with RunEvents(js, fleet.gateway, (run["project_id"], run["id"])) as events:
                first = await events.wait_for_type("run.checkpoint", attempt=1, timeout=240)
                assert first.runner_id == "host-a"  # type: ignore[attr-defined]
                hosts.cut("a")  # host A is gone from the network; its runner trains on, unheard
                runner_b = fleet.start_runner("b")
                started_b = await events.wait_for(
                    lambda e: e.type == "run.started" and e.runner_id == "host-b", timeout=180)
                names = Subjects(fleet.gateway.bus_prefix)
                leader = (await js.stream_info(names.events_stream)).cluster.leader
                Hosts.kill(fleet.nats[leader])  # mid-run: one of three nodes lost, the events leader
                done = await events.wait_for_type(*TERMINAL, timeout=240)
            assert done.type == "run.completed", f"{done!r}\n{fleet.logs()}"
            assert done.runner_id == "host-b" and done.result["epochs_completed"] == 3  # type: ignore[attr-defined]
            Hosts.kill(runner_a)  # the cut-off host never comes back

            async with RunEvents(js, fleet.gateway, (run["project_id"], run["id"])) as replay:
                stream = await replay.read_through(lambda e: e.type in TERMINAL and e.runner_id == "host-b", 60)
            checkpoints_a = [e for e in stream if e.type == "run.checkpoint" and e.attempt == 1]
            assert started_b.resumed_from == checkpoints_a[-1].checkpoint_id  # type: ignore[attr-defined]
            for attempt in {e.attempt for e in stream if e.attempt > 0}:
                seqs = [e.seq for e in stream if e.attempt == attempt]
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"attempt {attempt}: {seqs}"
            attempt_b = started_b.attempt
            assert [e.type for e in stream if e.attempt == attempt_b and e.type in TERMINAL] == ["run.completed"]
            def epochs(attempt: int) -> list[int]:
                return sorted({e.epoch for e in stream if e.attempt == attempt and e.type == "run.metrics"  # type: ignore[attr-defined]
                               and e.epoch is not None})  # type: ignore[attr-defined]

            # B goes on from the epoch after A's last checkpoint (A's own metrics of that epoch may never have
            # left it: Ultralytics saves the checkpoint before it reports the epoch, and the cut came in between)
            resumed_at = checkpoints_a[-1].epoch  # type: ignore[attr-defined]
            assert epochs(attempt_b) and epochs(attempt_b)[0] == resumed_at + 1, (resumed_at, epochs(1), epochs(attempt_b))

            state_b = fleet.folder / "b" / "state"
            assert (state_b / "dataset-cache" / sha / "data.yaml").is_file()  # fetched by its hash
            assert list(state_b.rglob(Path(checkpoints_a[-1].uri).name)), "B did not fetch the checkpoint"  # type: ignore[attr-defined]
            assert not (state_b / "datasets").exists()
            # from the object store, the first source, or (when a fetch from it fails, as it did once on a loaded
            # machine) from the gateway's HTTP fallback; each source on its own: test_dataset_transfer.py

            wire = [(e.attempt, e.seq, e.type, e.event_id, msgspec.to_builtins(e)) for e in stream]

            async def settled() -> bool:
                return len(await projected(settings.database_url or "", run["id"])) >= len(wire)

            await until(settled, "the projection caught up with the stream", 60)
            rows = await projected(settings.database_url or "", run["id"])
            assert [r[:4] for r in rows] == [w[:4] for w in sorted(wire, key=lambda w: (w[0], w[1]))]
            assert [r[4] for r in rows] == [w[4] for w in sorted(wire, key=lambda w: (w[0], w[1]))]
            status = (await api.get(f"/runs/{run['id']}")).json()
            assert status["status"] == "completed"
        for process in (runner_b, gateway):
            Hosts.kill(process, 15)
    except BaseException:
        print(fleet.logs())
        raise


async def _ready(api: httpx.AsyncClient) -> bool:
    return (await api.get(str(api.base_url).replace("/api/v1", "") + "/ready")).status_code == 200


async def _runner_idle(api: httpx.AsyncClient, runner_id: str) -> bool:
    response = await api.get(f"/runners/{runner_id}")
    return response.status_code == 200 and response.json()["state"] == "idle"

