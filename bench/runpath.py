"""The run path, measured side by side with a peer (Celery on Redis) doing the same closed-loop work.
Prints one JSON report (and writes it with `--report PATH`):

- `post_answer`: the POST /runs answer itself (the run durably accepted), p50/p99;
- `post_to_started`: POST sent → the run's run.started (its `ts`), p50/p99, one run at a time (local backend,
  command `true`, idle runner);
- `post_to_result`: POST sent → run.completed seen on the project's event stream;
- `throughput`: runs completed per second, `--window` runs in flight (a new one as soon as one ends), one
  runner with `--slots` slots, rate limits off; with the gateway's CPU time per run (utime + stime of its
  process over the phase, /proc/<pid>/stat) and the runner's;
- `projection`: events per second folded into Postgres (`bench.backbone.projection_rate`), with the gateway's
  CPU per event until they are (`gateway_cpu_us_per_event`) and until its other reader of every event, the
  webhook deliverer, has caught up too (`webhooks_behind_s` later: `gateway_cpu_us_per_event_all_readers`);
  the publisher runs on the same machine meanwhile, so this rate is bounded by publishing too (`publish_s`);
- `projection_backlog`: the rate at which the projector folds a backlog of as many events, published while the
  gateway's process was stopped (SIGSTOP) and timed from its SIGCONT, with the machine to itself;
- `peer`: the same for Celery + Redis (`bash -c <command>` in a prefork worker of `--slots` processes), when
  the optional extra is installed (`pip install -e '.[peer]'`) and `redis-server` is on the PATH (it is
  started on a private port for the bench only) or `--redis URL` points at one; `ratios` divides
  Trainforge's figure by the peer's (latency: lower is better; runs/s: higher is better).

    python -m bench.runpath                               # 300 latency runs, 600 throughput runs, peer if found
    python -m bench.runpath --runs 100 --throughput-runs 200 --no-peer   # quicker, Trainforge only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from bench.backbone import consumer_caught_up, projection_rate
from bench.stack import REPO, free_port, running_stack
from bench.stats import summary_ms
from shared.subjects import Subjects

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _ts(event_data: str) -> float:
    return datetime.fromisoformat(json.loads(event_data)["ts"].replace("Z", "+00:00")).timestamp()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def part_pids(info: dict[str, Any]) -> dict[str, int]:
    return {c["name"]: c["pid"] for c in info.get("children", []) if c.get("pid")}


class Watcher:
    """The project's event stream: futures for run.started and terminal events by run id."""

    def __init__(self) -> None:
        self.started: dict[str, asyncio.Future[float]] = {}
        self.ended: dict[str, asyncio.Future[float]] = {}
        self.connected = asyncio.Event()

    def _future(self, table: dict[str, asyncio.Future[float]], run_id: str) -> asyncio.Future[float]:
        return table.setdefault(run_id, asyncio.get_running_loop().create_future())

    async def listen(self, api: httpx.AsyncClient, project: str) -> None:
        async with aconnect_sse(api, "GET", f"/projects/{project}/events") as source:
            self.connected.set()
            async for event in source.aiter_sse():
                if event.event == "run.started":
                    table = self.started
                elif event.event in ("run.completed", "run.failed", "run.canceled"):
                    table = self.ended
                else:
                    continue
                future = self._future(table, json.loads(event.data)["run_id"])
                if not future.done():
                    future.set_result(_ts(event.data) if table is self.started else time.time())


async def trainforge_side(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with running_stack(runners=1, extra_env={"TRAINFORGE_RUNNER_SLOTS": str(args.slots)}) as stack:
        pids = part_pids(stack["info"])
        async with httpx.AsyncClient(base_url=stack["url"] + "/api/v1", timeout=httpx.Timeout(120),
                                     headers=stack["headers"]) as api:
            (await api.post("/projects", json={"name": "bench"})).raise_for_status()
            watcher = Watcher()
            listener = asyncio.create_task(watcher.listen(api, "bench"))
            await asyncio.wait_for(watcher.connected.wait(), 30)
            body = {"kind": "container", "backend": "local", "start_command": args.command}

            async def one() -> tuple[float, float, float, str]:
                sent, t0 = time.time(), time.perf_counter()
                response = await api.post("/projects/bench/runs", json=body)
                answered = time.perf_counter() - t0
                response.raise_for_status()
                run_id = response.json()["id"]
                started = await asyncio.wait_for(watcher._future(watcher.started, run_id), 60)
                ended = await asyncio.wait_for(watcher._future(watcher.ended, run_id), 60)
                return answered, started - sent, ended - sent, run_id

            for _ in range(min(10, args.runs)):  # warm-up: connections, caches, the runner's first run
                await one()
            answers, starts, results = [], [], []
            for _ in range(args.runs):
                answered, started, ended, _ = await one()
                answers.append(answered)
                starts.append(started)
                results.append(ended)
            out["post_answer"] = summary_ms(answers)
            out["post_to_started"] = summary_ms(starts)
            out["post_to_result"] = summary_ms(results)

            if args.throughput_runs:
                remaining = args.throughput_runs
                cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
                profilers = start_profilers(args.profile, pids)
                t0 = time.perf_counter()

                async def lane() -> None:
                    nonlocal remaining
                    while remaining > 0:
                        remaining -= 1
                        response = await api.post("/projects/bench/runs", json=body)
                        response.raise_for_status()
                        await asyncio.wait_for(watcher._future(watcher.ended, response.json()["id"]), 120)

                await asyncio.gather(*(lane() for _ in range(args.window)))
                elapsed = time.perf_counter() - t0
                cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
                stop_profilers(profilers)
                n = args.throughput_runs
                out["throughput"] = {
                    "runs": n, "slots": args.slots, "window": args.window, "seconds": round(elapsed, 2),
                    "runs_per_s": round(n / elapsed, 1),
                    "cpu_ms_per_run": {name: round(1000 * c / n, 2) for name, c in cpu.items()},
                }
            listener.cancel()  # its stream would carry every projected event: not part of the measure
            if args.events:
                profilers = start_profilers(args.profile and args.profile / "projection", pids)
                gateway_cpu0 = cpu_seconds(pids["gateway"])

                def gateway_us_per_event() -> float:
                    return round(1e6 * (cpu_seconds(pids["gateway"]) - gateway_cpu0) / args.events, 1)

                out["projection"] = await projection_rate(api, stack["info"], "bench", args.events)
                out["projection"]["gateway_cpu_us_per_event"] = gateway_us_per_event()
                webhooks = Subjects(stack["info"]["bus_prefix"]).webhooks_consumer
                out["projection"]["webhooks_behind_s"] = await consumer_caught_up(stack["info"], webhooks)
                out["projection"]["gateway_cpu_us_per_event_all_readers"] = gateway_us_per_event()
                stop_profilers(profilers)
                gateway_cpu0 = cpu_seconds(pids["gateway"])
                out["projection_backlog"] = await projection_rate(api, stack["info"], "bench", args.events,
                                                                  frozen_pid=pids["gateway"])
                out["projection_backlog"]["gateway_cpu_us_per_event"] = gateway_us_per_event()
    return out


def start_profilers(folder: Path | None, pids: dict[str, int]) -> list[subprocess.Popen[bytes]]:
    """py-spy (if installed) on every part during the throughput phase: `<folder>/<part>.txt`, collapsed
    stacks (`--format raw`), to read with `python -m bench.profile_summary <file>`."""
    spy = shutil.which("py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if folder is None or spy is None:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                              "--output", str(folder / f"{name}.txt"), "--nonblocking"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in pids.items()]


def stop_profilers(profilers: list[subprocess.Popen[bytes]]) -> None:
    for proc in profilers:
        proc.send_signal(signal.SIGINT)
    for proc in profilers:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- the peer: Celery + Redis -----------------------------------------------------------------------------


@contextmanager
def redis_server() -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found (apt-get install -y redis-server, or --redis URL)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tf-peer-redis-") as tmp:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                 "no", "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            import redis

            client = redis.Redis(port=port)
            deadline = time.monotonic() + 20
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


@contextmanager
def celery_worker(url: str, slots: int) -> Iterator[int]:
    env = {**os.environ, "TF_PEER_REDIS": url, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.celery_peer", "worker", "--pool", "prefork",
         "--concurrency", str(slots), "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "--prefetch-multiplier", "1"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its children that are alive (a prefork worker's pool processes)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(entry.name) == pid or int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def peer_side(args: argparse.Namespace, url: str) -> dict[str, Any]:
    os.environ["TF_PEER_REDIS"] = url
    import celery

    from bench import celery_peer

    out: dict[str, Any] = {"what": f"Celery {celery.__version__} on "
                                   f"Redis, prefork worker of {args.slots} processes, task: bash -c {args.command!r}"}
    with celery_worker(url, args.slots) as worker_pid:
        celery_peer.run.delay(args.command).get(timeout=60)  # the worker is up
        for _ in range(10):
            celery_peer.run.delay(args.command).get(timeout=60)
        starts, results = [], []
        for _ in range(args.runs):
            sent = time.time()
            value = celery_peer.run.delay(args.command).get(timeout=60)
            results.append(time.time() - sent)
            starts.append(value["started"] - sent)
        out["post_to_started"] = summary_ms(starts)
        out["post_to_result"] = summary_ms(results)
        if args.throughput_runs:
            remaining = args.throughput_runs
            lock = threading.Lock()

            def lane() -> None:
                nonlocal remaining
                while True:
                    with lock:
                        if remaining <= 0:
                            return
                        remaining -= 1
                    celery_peer.run.delay(args.command).get(timeout=120)

            cpu0 = tree_cpu_seconds(worker_pid)
            t0 = time.perf_counter()
            lanes = [threading.Thread(target=lane) for _ in range(args.window)]
            for t in lanes:
                t.start()
            for t in lanes:
                t.join()
            elapsed = time.perf_counter() - t0
            n = args.throughput_runs
            out["throughput"] = {"runs": n, "slots": args.slots, "window": args.window,
                                 "seconds": round(elapsed, 2), "runs_per_s": round(n / elapsed, 1),
                                 "cpu_ms_per_run": {"worker": round(1000 * (tree_cpu_seconds(worker_pid) - cpu0) / n, 2)}}
    return out


def ratios(tf: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for figure in ("post_to_started", "post_to_result"):
        if figure in tf and figure in peer:
            for p in ("p50_ms", "p99_ms"):
                if peer[figure][p]:
                    out[f"{figure}.{p}"] = round(tf[figure][p] / peer[figure][p], 2)
    if "throughput" in tf and "throughput" in peer:
        out["runs_per_s (≥ 1: Trainforge at least the peer's)"] = round(
            tf["throughput"]["runs_per_s"] / peer["throughput"]["runs_per_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.runpath", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300, help="runs for the latency figures, one at a time")
    parser.add_argument("--throughput-runs", type=int, default=600, help="runs for runs/s (0: skip)")
    parser.add_argument("--slots", type=int, default=4, help="the runner's slots (Celery: worker processes)")
    parser.add_argument("--window", type=int, default=8, help="runs in flight in the throughput phase")
    parser.add_argument("--command", default="true", help="the run's command (bash -c)")
    parser.add_argument("--events", type=int, default=20_000,
                        help="run.metrics events for the projection rate (bench.backbone's measure; 0: skip)")
    parser.add_argument("--no-peer", action="store_true", help="Trainforge only")
    parser.add_argument("--redis", help="a Redis URL for the peer (default: start redis-server on a free port)")
    parser.add_argument("--report", type=Path, help="also write the report to this file")
    parser.add_argument("--profile", type=Path, help="py-spy the parts during the throughput phase into this folder")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "runpath",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average": os.getloadavg()},
        "command": "python -m bench.runpath " + " ".join(sys.argv[1:]),
    }
    report["trainforge"] = asyncio.run(trainforge_side(args))
    if not args.no_peer:
        try:
            import celery  # noqa: F401
            import redis  # noqa: F401
        except ImportError:
            report["peer"] = {"skipped": "install the optional extra: pip install -e '.[peer]'"}
        else:
            try:
                if args.redis:
                    report["peer"] = peer_side(args, args.redis)
                else:
                    with redis_server() as url:
                        report["peer"] = peer_side(args, url)
            except RuntimeError as exc:
                report["peer"] = {"skipped": str(exc)}
        if "throughput" in report.get("peer", {}) or "post_to_started" in report.get("peer", {}):
            report["ratios"] = ratios(report["trainforge"], report["peer"])
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.report:
        args.report.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
