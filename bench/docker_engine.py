"""Docker-backend figures against a real, private Docker engine (tests/docker_engine.py; needs root and Debian's
docker.io, installed with apt when missing), printed as one JSON report:

- engine start (dockerd answering) and test image import, container start;
- `docker exec` round trip (`true`);
- end of input seen inside the container after the host-side `docker exec -i` client is killed with -9 (the
  daemon closes the exec's stdin: what ends a command whose runner died);
- cancel of a docker-backend run (DockerExecutor) until its process group is confirmed gone in the container,
  for a command that honours SIGTERM and for one whose worker ignores it (SIGKILL after the grace period).

    python -m bench.docker_engine              # 20 round trips, 5 client kills, 3 cancels of each kind
    python -m bench.docker_engine --cancels 1 --kills 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from bench.stats import summary_ms
from runner.executors.docker import DockerExecutor
from runner.targets import parse_targets
from shared.contracts import ContainerSpec
from shared.contracts.common import new_id
from shared.settings import Settings
from tests.docker_engine import DockerEngine
from tests.recording_emitter import RecordingEmitter, make_context


def exec_round_trips(engine: DockerEngine, container: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        engine.cli("exec", container, "true")
        times.append(time.perf_counter() - start)
    return times


def stdin_close_after_client_kill(engine: DockerEngine, container: str, n: int) -> list[float]:
    """Seconds from kill -9 of the client to the command inside seeing the end of its input."""
    times = []
    for i in range(n):
        marker = f"/tmp/eof-{i}"
        script = f'echo ready; read -r _; echo "$EPOCHREALTIME" > {marker}; sleep 1'
        client = subprocess.Popen([engine.docker, "exec", "-i", container, "bash", "-c", script], env=engine.env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert client.stdout is not None and client.stdout.readline() == b"ready\n"
        killed_at = time.time()
        client.kill()
        client.wait()
        while (seen := engine.read(container, marker)) is None:
            time.sleep(0.01)
        times.append(float(seen) - killed_at)
        assert client.stdin is not None
        client.stdin.close()
    return times


async def cancel_times(engine: DockerEngine, container: str, host_root: Path, n: int, *, stubborn: bool,
                       ) -> list[float]:
    targets = parse_targets({"targets": {"llm": {
        "container": container, "workdir": "/app", "host_root": str(host_root), "container_root": "/data",
        "output_dir": "outputs/{run_id}", "poll_s": 0.1}}})
    settings = Settings.from_mapping({"state_dir": host_root / "state", "cancel_grace_s": 0.5})
    command = "train-llm --output_dir {output_dir} --max_steps 1000 --save_steps 2"
    if stubborn:
        command += " --stubborn_worker"
    times = []
    for _ in range(n):
        spec = ContainerSpec(start_command=command, backend="docker", target="llm")
        ctx = make_context(settings, spec, workdir=host_root / "work" / new_id())
        emitter = ctx.emit
        assert isinstance(emitter, RecordingEmitter)
        task = asyncio.create_task(DockerExecutor(settings, targets).run(ctx))
        while not emitter.of("checkpoint"):
            if task.done():
                raise RuntimeError(f"the run ended before its first checkpoint: {task.result()}")
            await asyncio.sleep(0.05)
        start = time.perf_counter()
        ctx.cancel_requested.set()
        await task
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=20)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--cancels", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    engine = DockerEngine.start()
    started = time.perf_counter() - start
    os.environ["DOCKER_HOST"] = engine.host  # for the executor's docker calls
    try:
        with tempfile.TemporaryDirectory(prefix="bench-docker-") as tmp:
            host_root = Path(tmp)
            start = time.perf_counter()
            container = engine.run_container("bench", {host_root: "/data"})
            container_s = time.perf_counter() - start
            report = {
                "bench": "docker_engine",
                "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
                "engine_start_and_image_import_s": round(started, 3),
                "container_start_s": round(container_s, 3),
                "exec_round_trip": summary_ms(exec_round_trips(engine, container, args.round_trips)),
                "stdin_closed_after_client_kill_9": summary_ms(stdin_close_after_client_kill(engine, container,
                                                                                             args.kills)),
                "cancel_to_group_gone_sigterm": summary_ms(asyncio.run(
                    cancel_times(engine, container, host_root, args.cancels, stubborn=False))),
                "cancel_to_group_gone_sigkill_after_0.5s_grace": summary_ms(asyncio.run(
                    cancel_times(engine, container, host_root, args.cancels, stubborn=True))),
            }
            engine.remove(container)
    finally:
        engine.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
