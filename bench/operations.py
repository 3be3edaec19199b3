"""Operations figures, printed as one JSON report, on a fresh `trainforge up` (JSON logs on):

- `GET /metrics` latency (p50/p99) from loopback, with N runs in the database;
- pause and unpause round trips (POST → answer, the runner having stopped or continued the process group) of a
  running local command;
- whether every line `up` wrote is JSON (`TRAINFORGE_LOG_FORMAT=json` through the whole stack).

    python -m bench.operations                 # 200 runs, 20 scrapes, 20 pause/unpause pairs
    python -m bench.operations --runs 50 --scrapes 10 --pauses 5
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import httpx

from bench.stack import running_stack
from bench.stats import summary_ms


def _wait_status(client: httpx.Client, run_id: str, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/api/v1/runs/{run_id}").json()["status"] != status:
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} never became {status}")
        time.sleep(0.05)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with running_stack(extra_env={"TRAINFORGE_LOG_FORMAT": "json"}) as stack, \
            httpx.Client(base_url=stack["url"], headers=stack["headers"], timeout=30) as client:
        client.post("/api/v1/projects", json={"name": "bench"}).raise_for_status()
        ids = [client.post("/api/v1/projects/bench/runs", json={"kind": "container", "start_command": "true"})
               .json()["id"] for _ in range(args.runs)]
        for run_id in ids:
            _wait_status(client, run_id, "completed")
        scrapes = []
        for _ in range(args.scrapes):
            started = time.perf_counter()
            response = httpx.get(stack["url"] + "/metrics", timeout=30)
            scrapes.append(time.perf_counter() - started)
            response.raise_for_status()
        long_run = client.post("/api/v1/projects/bench/runs",
                               json={"kind": "container", "start_command": "sleep 600"}).json()["id"]
        _wait_status(client, long_run, "running")
        pauses, unpauses = [], []
        for _ in range(args.pauses):
            for action, into in (("pause", pauses), ("unpause", unpauses)):
                started = time.perf_counter()
                client.post(f"/api/v1/runs/{long_run}/{action}").raise_for_status()
                into.append(time.perf_counter() - started)
        client.post(f"/api/v1/runs/{long_run}/cancel").raise_for_status()
        _wait_status(client, long_run, "canceled")
        log_path = stack["state_dir"].parent / "up.log"
        lines = [line for line in log_path.read_text().splitlines() if line.strip()]
        json_lines, other = 0, []
        for line in lines:
            try:
                json_lines += isinstance(json.loads(line), dict)
            except ValueError:
                other.append(line[:200])
        return {
            "bench": "operations",
            "host": {"python": platform.python_version(), "machine": platform.machine()},
            "runs_in_database": args.runs + 1,
            "metrics_scrape": summary_ms(scrapes),
            "pause_round_trip": summary_ms(pauses),
            "unpause_round_trip": summary_ms(unpauses),
            "up_log_lines": len(lines),
            "up_log_json_lines": json_lines,
            "up_log_other_lines": other[:5],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--pauses", type=int, default=20)
    print(json.dumps(measure(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
