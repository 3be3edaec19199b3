"""SSE fan-out figures, printed as one JSON report: with N clients following one project's events
(`GET /api/v1/projects/{p}/events`), the latency from a `run.metrics` event's timestamp (set when it is
published to JetStream, as a runner does) to its receipt by each client, and the gateway's RSS before and
with the clients connected. Targets: p99 ≤ 50 ms with 1,000 clients; + ≤ 50 MB RSS for them.

The clients are plain asyncio sockets (one process, a few KB each), so the measuring side stays light; they
connect a batch at a time and each waits for its stream's first line before the events start.

    python -m bench.sse_fanout                       # 1,000 clients, 20 events, a fresh `trainforge up`
    python -m bench.sse_fanout --clients 200 --events 10 --out bench/reports/sse_fanout.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import psutil

from bench.backbone import connect_bus
from bench.stack import running_stack
from bench.stats import summary_ms
from shared.contracts import RunMetrics
from shared.subjects import Subjects

CONNECT_BATCH = 50
EVENT_INTERVAL_S = 0.2
ATTEMPT = 97
"""The events' attempt: not the run's own, so the runner's events never mix with them."""


def _ts(data: bytes) -> float:
    return datetime.fromisoformat(json.loads(data)["ts"].replace("Z", "+00:00")).timestamp()


class Client(asyncio.Protocol):
    """One SSE connection on a raw socket: HTTP/1.1 GET, then `data:` lines of `run.metrics` events.

    The measuring side must not add its own delay to what it measures: with a thousand connections in one
    process, a client that parsed each line as it came would stamp the last connections late by the time spent
    parsing the others. So a chunk is stamped with `time.time()` as it arrives, the lines are only split, and
    the JSON is read once every event has come."""

    def __init__(self, url: str, path: str, token: str, last_event_id: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAccept: text/event-stream\r\n"
                        f"Authorization: {token}\r\nLast-Event-ID: {last_event_id}\r\n\r\n").encode()
        self.status = 0
        self.expected = 0
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._headers_done = False
        self._event_type = b""
        self._received: list[tuple[float, bytes]] = []
        """(arrival time, the data of a run.metrics event), parsed after the run."""
        self._responded: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._responded, self._done = loop.create_future(), loop.create_future()
        await loop.create_connection(lambda: self, self.host, self.port)
        await self._responded

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if not self._headers_done:
                if not self.status:
                    self.status = int(line.split()[1])
                elif line in (b"\r", b""):
                    self._headers_done = True
                    _settle(self._responded)
            elif line.startswith(b"event:"):
                self._event_type = line[6:].strip()
            elif line.startswith(b"data:") and self._event_type == b"run.metrics":
                self._received.append((now, line[5:]))
                if len(self._received) >= self.expected > 0:
                    _settle(self._done)

    def connection_lost(self, exc: Exception | None) -> None:
        _settle(self._responded)
        _settle(self._done)

    async def follow(self, events: int) -> None:
        self.expected = events
        if len(self._received) >= events:
            return
        assert self._done is not None
        await self._done

    @property
    def latencies(self) -> list[float]:
        return [at - _ts(data) for at, data in self._received]

    @property
    def steps(self) -> list[int]:
        return [json.loads(data)["step"] for _, data in self._received]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _settle(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def gateway_rss(state_dir: Path) -> int:
    info = json.loads((state_dir / "stack.json").read_text())
    (gateway,) = [c for c in info["children"] if c["name"] == "gateway"]
    return psutil.Process(gateway["pid"]).memory_info().rss


async def fanout(stack: dict[str, Any], clients: int, events: int) -> dict[str, Any]:
    info, state_dir = stack["info"], Path(stack["state_dir"])
    async with httpx.AsyncClient(base_url=stack["url"] + "/api/v1", timeout=httpx.Timeout(120),
                                 headers=stack["headers"]) as api:
        (await api.post("/projects", json={"name": "fanout"})).raise_for_status()
        run = (await api.post("/projects/fanout/runs", json={"kind": "container", "backend": "local",
                                                            "start_command": "sleep 3600"})).json()
        path = f"/api/v1/projects/{run['project_id']}/events"
        token = stack["headers"]["Authorization"]
        names = Subjects(info["bus_prefix"])
        nc = await connect_bus(info)
        js = nc.jetstream()
        # Where the stream starts: after the newest stored event (clients resume there, nothing replayed).
        async with (httpx.AsyncClient(base_url=stack["url"], headers=stack["headers"], timeout=30) as probe,
                    probe.stream("GET", path, params={"tail": "true"}) as stream):
            async for line in stream.aiter_lines():
                if line.startswith("id:"):
                    last = int(line[3:].strip())
                    break
        await asyncio.sleep(0.5)
        rss_before = gateway_rss(state_dir)
        followers = [Client(stack["url"], path, token, last) for _ in range(clients)]
        started = time.perf_counter()
        for i in range(0, clients, CONNECT_BATCH):
            await asyncio.gather(*(c.connect() for c in followers[i:i + CONNECT_BATCH]))
        connect_s = time.perf_counter() - started
        refused = sum(1 for c in followers if c.status != 200)
        await asyncio.sleep(1.0)
        rss_connected = gateway_rss(state_dir)
        tasks = [asyncio.create_task(c.follow(events)) for c in followers if c.status == 200]
        subject = names.run_event(run["project_id"], run["id"], "run.metrics")
        for seq in range(1, events + 1):
            event = RunMetrics(run_id=run["id"], project_id=run["project_id"], attempt=ATTEMPT, runner_id="bench",
                               seq=seq, metrics={"loss": 1.0 / seq}, step=seq)
            await js.publish(subject, msgspec.json.encode(event), headers={"Nats-Msg-Id": event.msg_id})
            await asyncio.sleep(EVENT_INTERVAL_S)
        done, pending = await asyncio.wait(tasks, timeout=60)
        rss_after = gateway_rss(state_dir)
        for task in pending:
            task.cancel()
        for c in followers:
            c.close()
        await nc.close()
        await api.post(f"/runs/{run['id']}/cancel")
    latencies = [s for c in followers for s in c.latencies]
    by_event: dict[int, list[float]] = {}
    for c in followers:
        for step, latency in zip(c.steps, c.latencies, strict=True):
            by_event.setdefault(step, []).append(latency)
    first = [min(v) for v in by_event.values()]
    spread = [max(v) - min(v) for v in by_event.values()]
    return {
        "clients": clients, "refused": refused, "events_each": events,
        "received": len(latencies), "expected": (clients - refused) * events,
        "connect_all_s": round(connect_s, 2),
        "delivery": summary_ms(latencies),
        "first_client_of_each_event": summary_ms(first),
        "fan_out_spread_of_each_event": summary_ms(spread),
        "gateway_rss_mb": {"before": round(rss_before / 2**20, 1), "connected": round(rss_connected / 2**20, 1),
                           "after_events": round(rss_after / 2**20, 1),
                           "added_by_clients": round((rss_after - rss_before) / 2**20, 1)},
        "targets": "delivery p99_ms <= 50 with 1,000 clients; added_by_clients <= 50 MB",
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sse_fanout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=20, help="run.metrics events each client must receive")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the gateway (a child) inherits it
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.clients + 1024)), hard))
    report: dict[str, Any] = {
        "benchmark": "sse_fanout",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg": [round(x, 2) for x in os.getloadavg()]},
        "command": f"python -m bench.sse_fanout --clients {args.clients} --events {args.events}",
    }
    with running_stack(runners=1) as stack:
        report["fanout"] = asyncio.run(fanout(stack, args.clients, args.events))
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
