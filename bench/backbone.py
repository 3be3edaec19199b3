"""Backbone figures, printed as one JSON report:

- POST /runs → run.started latency, p50/p99 over N runs (local backend, command `true`), closed loop;
- events per second projected into Postgres (100,000 run.metrics events published to JetStream);
- SSE delivery latency p50/p99 with 200 connected clients (event timestamp → client receipt).

    python -m bench.backbone                # all three, on a fresh embedded stack (`trainforge up`)
    python -m bench.backbone --runs 100 --events 20000 --clients 50   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import nats
from httpx_sse import aconnect_sse

from bench.stack import running_stack
from bench.stats import summary_ms
from shared.contracts import LogLine, RunLog, RunMetrics
from shared.subjects import Subjects


def _ts(event_data: str) -> float:
    return datetime.fromisoformat(json.loads(event_data)["ts"].replace("Z", "+00:00")).timestamp()


async def post_to_started(api: httpx.AsyncClient, project: str, runs: int) -> dict[str, Any]:
    started: dict[str, asyncio.Future[float]] = {}
    connected = asyncio.Event()

    async def listen() -> None:
        async with aconnect_sse(api, "GET", f"/projects/{project}/events") as source:
            connected.set()
            async for event in source.aiter_sse():
                if event.event == "run.started":
                    run_id = json.loads(event.data)["run_id"]
                    started.setdefault(run_id, asyncio.get_running_loop().create_future())
                    if not started[run_id].done():
                        started[run_id].set_result(_ts(event.data))

    listener = asyncio.create_task(listen())
    await asyncio.wait_for(connected.wait(), 30)
    latencies = []
    for _ in range(runs):
        sent = time.time()
        response = await api.post(f"/projects/{project}/runs",
                                  json={"kind": "container", "backend": "local", "start_command": "true"})
        response.raise_for_status()
        run_id = response.json()["id"]
        future = started.setdefault(run_id, asyncio.get_running_loop().create_future())
        latencies.append(await asyncio.wait_for(future, 60) - sent)
    listener.cancel()
    return summary_ms(latencies)


async def connect_bus(info: dict) -> nats.aio.client.Client:
    """Connect to the stack's NATS as its gateway user (events are published as the runners would)."""
    if users_file := info.get("nats_users_file"):
        password = json.loads(Path(users_file).read_text())["gateway"]
        return await nats.connect(info["nats_url"], user="gateway", password=password)
    return await nats.connect(info["nats_url"])


async def projection_rate(api: httpx.AsyncClient, info: dict, project: str, events: int,
                          frozen_pid: int | None = None) -> dict[str, Any]:
    """`events` run.metrics events of one run published as fast as JetStream takes them; the seconds until
    Postgres holds them all. The publisher shares the machine with the projector, so on a small machine the
    rate is bounded by the publishing too (`publish_s`).

    With `frozen_pid` (the gateway's process), that process is stopped (SIGSTOP) while the events are
    published and continued (SIGCONT) once JetStream holds them all: `events_per_s` is then the rate at which
    the projector folds a backlog, timed from the SIGCONT, with the machine to itself."""
    run = (await api.post(f"/projects/{project}/runs", json={"kind": "container", "backend": "local",
                                                             "start_command": "sleep 3600"})).json()
    await api.post(f"/runs/{run['id']}/cancel")
    names = Subjects(info["bus_prefix"])
    nc = await connect_bus(info)
    js = nc.jetstream()
    db = await asyncpg.connect(info["database_url"].replace("postgresql+asyncpg", "postgresql"))
    attempt = 99
    subject = names.run_event(run["project_id"], run["id"], "run.metrics")
    if frozen_pid is not None:
        os.kill(frozen_pid, signal.SIGSTOP)
    try:
        started = time.perf_counter()
        pending: list[asyncio.Future[Any]] = []
        for seq in range(1, events + 1):
            event = RunMetrics(run_id=run["id"], project_id=run["project_id"], attempt=attempt, runner_id="bench",
                               seq=seq, metrics={"loss": 1.0 / seq, "step": float(seq)}, step=seq)
            pending.append(await js.publish_async(subject, msgspec.json.encode(event),
                                                  headers={"Nats-Msg-Id": event.msg_id}))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        published = time.perf_counter() - started
    finally:
        if frozen_pid is not None:
            os.kill(frozen_pid, signal.SIGCONT)
    if frozen_pid is not None:
        started = time.perf_counter()
    while True:  # one index probe per look (a count would read the index on every look, competing for the CPU):
        stored = await db.fetchval(  # the projector stores a run's events in seq order, with no gap
            "select max(seq) from events where run_id=$1 and attempt=$2", run["id"], attempt)
        if stored is not None and stored >= events:
            break
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    count = await db.fetchval("select count(*) from events where run_id=$1 and attempt=$2", run["id"], attempt)
    assert count == events, f"{count} of {events} events stored"
    await db.close()
    await nc.close()
    return {"events": events, "publish_s": round(published, 2), "projected_s": round(elapsed, 2),
            "events_per_s": round(events / elapsed)}


async def consumer_caught_up(info: dict, consumer: str, timeout: float = 300) -> float:
    """Seconds until `consumer` of the events stream has nothing left to hand out or to be acked (the gateway's
    other reader of every event, the webhook deliverer, may still be busy when the projection is done)."""
    names = Subjects(info["bus_prefix"])
    nc = await connect_bus(info)
    started = time.perf_counter()
    try:
        while True:
            state = await nc.jetstream().consumer_info(names.events_stream, consumer)
            if not state.num_pending and not state.num_ack_pending:
                return round(time.perf_counter() - started, 2)
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"consumer {consumer} still has {state.num_pending} pending")
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def sse_fanout(api: httpx.AsyncClient, info: dict, project: str, clients: int, events: int) -> dict[str, Any]:
    run = (await api.post(f"/projects/{project}/runs", json={"kind": "container", "backend": "local",
                                                             "start_command": "sleep 3600"})).json()
    db = await asyncpg.connect(info["database_url"].replace("postgresql+asyncpg", "postgresql"))
    last = await db.fetchval("select coalesce(max(position), 0) from events")
    await db.close()
    latencies: list[float] = []
    ready = 0
    all_ready = asyncio.Event()
    received = [0] * clients

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal ready
        async with aconnect_sse(http, "GET", f"/projects/{project}/events",
                                headers={"Last-Event-ID": str(last)}) as source:
            ready += 1
            if ready == clients:
                all_ready.set()
            async for event in source.aiter_sse():
                if event.event == "run.log" and json.loads(event.data)["runner_id"] == "bench":
                    latencies.append(time.time() - _ts(event.data))
                    received[i] += 1
                    if received[i] == events:
                        return

    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(base_url=str(api.base_url), limits=limits, timeout=httpx.Timeout(120),
                                 headers=dict(api.headers)) as http:
        tasks = [asyncio.create_task(client(i, http)) for i in range(clients)]
        await asyncio.wait_for(all_ready.wait(), 120)
        await asyncio.sleep(1.0)
        names = Subjects(info["bus_prefix"])
        nc = await connect_bus(info)
        js = nc.jetstream()
        for seq in range(1, events + 1):
            event = RunLog(run_id=run["id"], project_id=run["project_id"], attempt=98, runner_id="bench", seq=seq,
                           lines=[LogLine(stream="stdout", text=f"line {seq}")])
            await js.publish(names.run_event(run["project_id"], run["id"], event.type), msgspec.json.encode(event),
                             headers={"Nats-Msg-Id": event.msg_id})
            await asyncio.sleep(0.1)
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        await nc.close()
    await api.post(f"/runs/{run['id']}/cancel")
    return {"clients": clients, "events_each": events, **summary_ms(latencies)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "benchmark": "backbone",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": "python -m bench.backbone " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
            for k, v in vars(args).items() if v is not False),
    }
    limits = {"TRAINFORGE_RATE_LIMIT_WRITES_PER_MINUTE": "1000000",
              "TRAINFORGE_RATE_LIMIT_ADDRESS_WRITES_PER_MINUTE": "1000000"} if args.rate_limits else {}
    with running_stack(runners=1, extra_env=limits) as stack:
        info = stack["info"]
        async with httpx.AsyncClient(base_url=stack["url"] + "/api/v1", timeout=httpx.Timeout(120),
                                     headers=stack["headers"]) as api:
            project = "bench"
            (await api.post("/projects", json={"name": project})).raise_for_status()
            if args.runs:
                report["post_to_run_started"] = await post_to_started(api, project, args.runs)
            if args.events:
                report["projection"] = await projection_rate(api, info, project, args.events)
            if args.clients:
                report["sse_delivery"] = await sse_fanout(api, info, project, args.clients, args.sse_events)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backbone", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500, help="runs for the POST → run.started latency (0: skip)")
    parser.add_argument("--events", type=int, default=100_000, help="events for the projection rate (0: skip)")
    parser.add_argument("--clients", type=int, default=200, help="SSE clients for the delivery latency (0: skip)")
    parser.add_argument("--sse-events", type=int, default=30, help="events each SSE client must receive")
    parser.add_argument("--rate-limits", action="store_true",
                        help="count writes against (unreachable) rate limits, to measure what counting costs")
    print(json.dumps(asyncio.run(main_async(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
