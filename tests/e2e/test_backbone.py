"""A run travels gateway → JetStream → runner → Postgres → SSE, through a real `trainforge up`."""

from __future__ import annotations

import json
import os
import signal
import time

import anyio
import httpx
import nats
import pytest

from shared.subjects import Subjects
from tests.e2e.stackctl import Stack, pid_alive

pytestmark = pytest.mark.slow

TERMINAL = {"completed", "failed", "canceled"}


def start_run(stack: Stack, command: str, project: str = "e2e") -> dict:
    with stack.api() as api:
        found = api.get(f"/projects/{project}")
        if found.status_code == 404:
            found = api.post("/projects", json={"name": project, "description": "end-to-end"})
            assert found.status_code == 201, found.text
        created = api.post(f"/projects/{project}/runs",
                           json={"kind": "container", "backend": "local", "start_command": command})
        assert created.status_code == 201, created.text
        return created.json()


def test_container_run_streams_its_logs_and_status_in_order_and_completes(stack: Stack) -> None:
    run = start_run(stack, "for i in 1 2 3; do echo line $i; sleep 0.2; done; echo done >&2")
    events = list(stack.sse(f"/runs/{run['id']}/events"))

    ids = [int(e.id) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    types = [e.event for e in events]
    assert types[0] == "run.queued" and types[-1] == "run.completed"
    assert types.index("run.claimed") < types.index("run.started") < types.index("run.log")
    lines = [line["text"] for e in events if e.event == "run.log" for line in json.loads(e.data)["lines"]]
    assert [t for t in lines if t.startswith("line")] == ["line 1", "line 2", "line 3"]
    assert "done" in lines
    assert json.loads(events[-1].data)["exit_code"] == 0
    assert stack.wait_run(run["id"], TERMINAL)["status"] == "completed"


def test_a_failing_command_fails_the_run_with_its_exit_code_blamed_on_the_user(stack: Stack) -> None:
    run = start_run(stack, "echo about to fail; exit 3")
    final = stack.wait_run(run["id"], TERMINAL)
    assert final["status"] == "failed"
    assert final["exit_code"] == 3 and final["failure_cause"] == "user"


def test_canceling_a_sleeping_run_ends_it_within_5s_and_kills_its_processes(stack: Stack) -> None:
    run = start_run(stack, "sleep 600 & echo $! > child.pid; echo $$ > shell.pid; wait")
    stack.wait_run(run["id"], {"running"})
    workdir = (stack.state_dir / "work" / run["id"]).resolve()
    deadline = time.monotonic() + 10
    while not ((workdir / "child.pid").exists() and (workdir / "shell.pid").exists()):
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.1)
    pids = [int((workdir / name).read_text()) for name in ("child.pid", "shell.pid")]
    assert all(pid_alive(p) for p in pids)

    started = time.monotonic()
    with stack.api() as api:
        assert api.post(f"/runs/{run['id']}/cancel").status_code == 202
    final = stack.wait_run(run["id"], TERMINAL, timeout=5)
    assert final["status"] == "canceled"
    assert time.monotonic() - started < 5
    assert not any(pid_alive(p) for p in pids)


@pytest.mark.parametrize("stack", [2], indirect=True)
def test_a_runner_killed_mid_run_loses_nothing_the_next_attempt_finishes_it(stack: Stack) -> None:
    run = start_run(stack, "for i in $(seq 1 8); do echo tick $i; sleep 0.5; done")
    running = stack.wait_run(run["id"], {"running"})
    first_runner = running["runner_id"]
    victim = stack.child("", runner_id=first_runner)
    os.kill(victim["pid"], signal.SIGKILL)

    final = stack.wait_run(run["id"], TERMINAL, timeout=60)
    assert final["status"] == "completed"
    assert final["attempt"] == 2
    # Another runner, or the killed one's replacement that `up` started (same id, new process).
    finisher = stack.child("", runner_id=final["runner_id"])
    assert final["runner_id"] != first_runner or finisher["pid"] != victim["pid"]


def test_gateway_restart_mid_run_sse_resumes_with_no_gap_and_no_duplicate(stack: Stack, settings) -> None:
    run = start_run(stack, "for i in $(seq 1 12); do echo tick $i; sleep 0.5; done")
    path = f"/runs/{run['id']}/events"
    first_part = []
    for event in stack.sse(path):
        first_part.append(event)
        if event.event == "run.log":
            break
    gateway = stack.child("gateway")
    os.kill(gateway["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30  # the supervisor restarts it
    while True:
        try:
            if httpx.get(stack.url + "/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, stack.log()
        time.sleep(0.2)

    second_part = list(stack.sse(path, last_event_id=first_part[-1].id))
    assert second_part[-1].event == "run.completed"
    replay = list(stack.sse(path))  # everything, from the start, after the fact
    assert [e.id for e in first_part + second_part] == [e.id for e in replay]
    assert [e.data for e in first_part + second_part] == [e.data for e in replay]

    published = anyio.run(count_published_events, settings.nats_url, settings.bus_prefix, run)
    assert len(replay) == published


async def count_published_events(nats_url: str, prefix: str, run: dict) -> int:
    """Distinct (attempt, seq) published for the run, read straight from the events stream."""
    names = Subjects(prefix)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(names.run_events(run["project_id"], run["id"]), ordered_consumer=True)
        seen = set()
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except TimeoutError:
                break
            body = json.loads(msg.data)
            seen.add((body["attempt"], body["seq"]))
        await sub.unsubscribe()
        return len(seen)
    finally:
        await nc.close()
