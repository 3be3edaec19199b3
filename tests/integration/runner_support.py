"""Helpers for the runner tests: publish jobs like the gateway does, watch a run's events, run agents."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from runner.agent import RunnerAgent
from shared.contracts import ContainerSpec, Event, Job, event_decoder
from shared.jobsign import JobSigner
from shared.settings import Settings
from shared.subjects import Subjects

POOL = "cpu"
TERMINAL = ("run.completed", "run.failed", "run.canceled")


def container_job(command: str, *, project_id: str = "p1", **spec: Any) -> Job:
    return Job(
        run_id=uuid.uuid4().hex,
        project_id=project_id,
        pool=POOL,
        spec=ContainerSpec(start_command=command, **spec),
    )


def signed_job(settings: Settings, job: Job, subject: str | None = None) -> tuple[str, bytes, dict[str, str]]:
    """(subject, payload, headers) of `job` as the gateway publishes it: signed with the test key."""
    assert settings.job_signing_key_file is not None
    subject = subject or Subjects(settings.bus_prefix).job(job.pool)
    payload = msgspec.json.encode(job)
    headers = JobSigner.from_file(settings.job_signing_key_file).headers(subject, payload)
    return subject, payload, {**headers, "Nats-Msg-Id": job.run_id}


async def publish_job(js: JetStreamContext, settings: Settings, job: Job) -> None:
    """Publish `job` like the gateway does (signed)."""
    subject, payload, headers = signed_job(settings, job)
    await js.publish(subject, payload, headers=headers)


async def request_cancel(nc: NATS, js: JetStreamContext, settings: Settings, run_id: str) -> None:
    """What the gateway does: record the cancel in the bucket, then tell the runners."""
    names = Subjects(settings.bus_prefix)
    kv = await js.key_value(names.cancel_bucket)
    await kv.put(run_id, b"1")
    await nc.publish(names.cancel(run_id), b"")


class RunEvents:
    """The events of one run, read from the events stream with an ordered consumer."""

    def __init__(self, js: JetStreamContext, settings: Settings, job: Job | tuple[str, str]) -> None:
        """`job`: the run's job, or (project id, run id) of a run the gateway started."""
        project_id, run_id = (job.project_id, job.run_id) if isinstance(job, Job) else job
        self._js = js
        self._subject = Subjects(settings.bus_prefix).run_events(project_id, run_id)
        self.events: list[Event] = []
        self._sub: Any = None

    async def __aenter__(self) -> RunEvents:
        self._sub = await self._js.subscribe(self._subject, ordered_consumer=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sub.unsubscribe()

    async def wait_for(self, match: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        """The first event (already seen or next) that matches."""
        for event in self.events:
            if match(event):
                return event
        async with asyncio.timeout(timeout):
            while True:
                msg = await self._sub.next_msg(timeout=None)
                event = event_decoder.decode(msg.data)
                self.events.append(event)
                if match(event):
                    return event

    async def read_all(self, timeout: float = 10.0) -> list[Event]:
        """Every event of the run stored so far (the ordered consumer replays the run from its start)."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self._sub.next_msg(timeout=None)
                self.events.append(event_decoder.decode(msg.data))
                if msg.metadata.num_pending == 0:
                    return self.events

    async def read_through(self, last: Callable[[Event], bool], timeout: float = 30.0) -> list[Event]:
        """Every event of the run, read until one matching `last` has come and nothing is pending after it
        (`read_all` alone trusts the first message that says nothing is pending)."""
        seen = any(last(e) for e in self.events)
        async with asyncio.timeout(timeout):
            while True:
                msg = await self._sub.next_msg(timeout=None)
                event = event_decoder.decode(msg.data)
                self.events.append(event)
                seen = seen or last(event)
                if seen and msg.metadata.num_pending == 0:
                    return self.events

    async def wait_for_type(self, *types: str, attempt: int | None = None, timeout: float = 10.0) -> Event:
        return await self.wait_for(
            lambda e: e.type in types and (attempt is None or e.attempt == attempt), timeout=timeout
        )

    def of_attempt(self, attempt: int) -> list[Event]:
        return [e for e in self.events if e.attempt == attempt]

    def types(self, attempt: int | None = None) -> list[str]:
        return [e.type for e in self.events if attempt is None or e.attempt == attempt]

    def log_lines(self, stream: str = "stdout", attempt: int | None = None) -> list[str]:
        return [
            line.text
            for e in self.events
            if e.type == "run.log" and (attempt is None or e.attempt == attempt)
            for line in e.lines  # type: ignore[attr-defined]
            if line.stream == stream
        ]


@contextlib.asynccontextmanager
async def running_agent(settings: Settings, **kwargs: Any) -> AsyncIterator[RunnerAgent]:
    """An agent running in this event loop; stopped gracefully at the end."""
    kwargs.setdefault("runner_id", f"test-{uuid.uuid4().hex[:8]}")
    agent = RunnerAgent(settings, POOL, **kwargs)
    task = asyncio.create_task(agent.run())
    ready = asyncio.create_task(agent.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        await task  # it failed to start: raise why
    try:
        yield agent
    finally:
        try:
            await asyncio.wait_for(agent.stop(), STOP_WITHIN_S)
        except TimeoutError:
            raise AssertionError(f"the runner did not stop within {STOP_WITHIN_S:g}s; its tasks:\n"
                                 + task_stacks()) from None
        await task


STOP_WITHIN_S = 120.0
"""A graceful stop of a test's runner takes seconds; past this something hangs, and the tasks say where."""


def task_stacks() -> str:
    """Every task of this loop with where it waits (the stack a plain timeout would not show)."""
    out = io.StringIO()
    for pending in asyncio.all_tasks():
        pending.print_stack(limit=8, file=out)
    return out.getvalue()


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as TRAINFORGE_* variables, for a runner in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINFORGE_")}
    for name, var in Settings.env_names().items():
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list):
            value = ",".join(map(str, value))
        env[var] = str(value)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    return env


def start_runner_process(settings: Settings, runner_id: str, log_path: Path) -> subprocess.Popen[bytes]:
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')\n"
        "from runner.main import main\n"
        "from shared.settings import Settings\n"
        f"sys.exit(main(Settings.from_env(), pool={POOL!r}, device='cpu', slots=1, runner_id={runner_id!r}))\n"
    )
    log_file = open(log_path, "ab")  # noqa: SIM115 - closed with the process by the caller's cleanup
    return subprocess.Popen(
        [sys.executable, "-c", code], env=settings_env(settings), stdout=log_file, stderr=subprocess.STDOUT
    )


def live_group_members(pgid: int) -> list[int]:
    from runner.executors.local import group_members

    return group_members(pgid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def connect(url: str) -> NATS:
    """A client that keeps reconnecting (through outages of the server under test)."""
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(OSError, nats.errors.Error):
                return await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def bus_of(url: str) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    nc = await connect(url)
    try:
        yield nc, nc.jetstream()
    finally:
        await nc.close()


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll a condition of the OS (process table, files) until it holds; TimeoutError after `timeout`."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)
    return True


@contextlib.contextmanager
def reaped_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to append child processes to; each one still running is killed on the way out."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
