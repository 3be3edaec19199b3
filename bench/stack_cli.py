"""How long the stack's service commands take: `trainforge up --detach` (until it returns, the stack ready),
`status` (with the runners from the gateway), `down` (until every part is gone). Fresh embedded stacks (NATS
and Postgres from their wheels, one CPU runner), one after the other. Prints a JSON report.

    python -m bench.stack_cli [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stack import REPO, free_port
from bench.stats import summary_ms


def _timed(*args: str, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "trainforge.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    return time.perf_counter() - started, done


def one_cycle() -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINFORGE_")}
    env["PYTHONPATH"] = str(REPO)
    with tempfile.TemporaryDirectory(prefix="tf-bench-cli-") as tmp:
        flags = ("--state-dir", str(Path(tmp) / "state"))
        up_s, up = _timed("up", "--detach", *flags, "--port", str(free_port()), "--runners", "1", env=env)
        if up.returncode != 0:
            raise RuntimeError(up.stdout + up.stderr)
        status_s, status = _timed("status", *flags, env=env)
        down_s, down = _timed("down", *flags, env=env)
        if status.returncode != 0 or down.returncode != 0:
            raise RuntimeError(status.stdout + down.stdout + down.stderr)
    return {"up_detach_s": up_s, "status_s": status_s, "down_s": down_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cycles = [one_cycle() for _ in range(args.repeat)]
    report: dict[str, Any] = {"repeat": args.repeat, "cpus": os.cpu_count(),
                              **{key.removesuffix("_s"): summary_ms([c[key] for c in cycles]) for key in cycles[0]}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
