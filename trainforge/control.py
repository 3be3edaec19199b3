"""The stack as a service: `up --detach`, `status`, `down` and `logs`, all working from a state folder.

They find the stack through its manifest (`<state_dir>/stack.json`, see trainforge.manifest): `up --detach`
starts `trainforge up` in a session of its own with its output in `<state_dir>/logs/up.log` and returns once
the manifest says it runs; `down` sends that `up` SIGTERM (what Ctrl-C does: runners, then the gateway, then
NATS and Postgres) and waits until every process the manifest names is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec

from shared.logredact import redact
from trainforge import manifest as manifests
from trainforge.manifest import StackManifest, alive_pid, pid_alive

NOT_RUNNING_EXIT = 3
"""`status` when no stack runs for the state folder (as `systemctl status` does)."""
POLL_S = 0.2
LOG_KEEP = 1
"""Logs of earlier detached runs kept beside the current one (`up.log.1`)."""


class RunnerRow(msgspec.Struct, kw_only=True):
    """The fields of the gateway's runner view that `status` shows."""

    id: str
    pool: str
    device: str
    state: str
    current_run: str | None = None
    active_runs: list[str] = []
    restarts: int = 0


class RunnerPage(msgspec.Struct, kw_only=True):
    items: list[RunnerRow]
    total: int


# -- up --detach -----------------------------------------------------------------------------------------


def detach(up_args: Sequence[str], state_dir: Path, *, wait_s: float) -> int:
    """Start `trainforge up <up_args>` in the background and wait until it runs. 0 with the URLs printed;
    1 when it exited (its last log lines printed) or was not running within `wait_s`."""
    running = alive_pid(manifests.read(state_dir))
    if running is not None:
        print(f"trainforge up: a stack already runs in {state_dir} (pid {running}); "
              f"see `trainforge status --state-dir {state_dir}`", file=sys.stderr)
        return 1
    log = manifests.log_path(state_dir)
    log.parent.mkdir(parents=True, exist_ok=True)
    _rotate(log)
    argv = [sys.executable, "-m", "trainforge.cli", *up_args, "--detached-log", str(log)]
    with open(log, "ab") as out:
        process = subprocess.Popen(  # noqa: S603 - our own CLI
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # no Ctrl-C or hang-up of this terminal reaches it
        )
    print(f"starting the stack in the background (pid {process.pid}); log {log}", flush=True)
    try:
        return _wait_running(process, state_dir, log, wait_s)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; the stack keeps starting in the background (pid {process.pid}): "
              f"`trainforge down --state-dir {state_dir}` stops it", file=sys.stderr)
        return 130


def _wait_running(process: subprocess.Popen[bytes], state_dir: Path, log: Path, wait_s: float) -> int:
    deadline = time.monotonic() + wait_s
    while True:
        code = process.poll()
        if code is not None:
            print(f"trainforge up: the stack did not start (exit status {code}); its last log lines:",
                  file=sys.stderr)
            print(_tail_text(log, 30), file=sys.stderr)
            return 1
        manifest = manifests.read(state_dir)
        if manifest is not None and manifest.pid == process.pid and manifest.status == "running":
            print(_summary(manifest, state_dir))
            return 0
        if time.monotonic() > deadline:
            print(f"trainforge up: the stack was not running after {wait_s:.0f} s; it keeps starting in the "
                  f"background (pid {process.pid}): see `trainforge logs --state-dir {state_dir}`, or stop it "
                  f"with `trainforge down --state-dir {state_dir}`", file=sys.stderr)
            return 1
        time.sleep(POLL_S)


def _rotate(log: Path) -> None:
    if not log.exists():
        return
    for n in range(LOG_KEEP, 0, -1):
        older = log.with_name(f"{log.name}.{n}")
        newer = log if n == 1 else log.with_name(f"{log.name}.{n - 1}")
        if newer.exists():
            newer.replace(older)


def _tail_text(log: Path, lines: int) -> str:
    try:
        return "".join(log.read_text(errors="replace").splitlines(keepends=True)[-lines:]).rstrip()
    except OSError:
        return "(no log)"


def _summary(manifest: StackManifest, state_dir: Path) -> str:
    base = manifest.api_url
    password = (f"password in {manifest.admin_password_file}" if manifest.admin_password_file
                else "the configured TRAINFORGE_ADMIN_PASSWORD")
    flag = f" --state-dir {state_dir}"
    return "\n".join([
        f"Trainforge is up in the background (pid {manifest.pid}).",
        f"  API        {base}/api/v1",
        f"  OpenAPI    {base}/schema",
        f"  Ready      {base}/ready",
        f"  Log in     {manifest.admin_username} / {password}",
        f"  Log        {manifest.log_file}",
        f"  Status     trainforge status{flag}",
        f"  Logs       trainforge logs -f{flag}",
        f"  Stop       trainforge down{flag}",
    ])


# -- status ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartRow:
    name: str
    pid: int | None
    state: str
    started_at: float | None
    restarts: int


def parts(manifest: StackManifest) -> list[PartRow]:
    """The embedded servers (when `up` started them), then the gateway and the runners."""
    rows: list[PartRow] = []
    for name, embedded, pid in (("nats-server", manifest.nats_embedded, manifest.nats_pid),
                                ("postgres", manifest.database_embedded, manifest.postgres_pid)):
        if embedded:
            rows.append(PartRow(name, pid, "running" if pid_alive(pid) else "down",
                                manifest.server_started_at.get(name), manifest.server_restarts.get(name, 0)))
    rows.extend(PartRow(c.name, c.pid, c.state, c.started_at, c.restarts) for c in manifest.children)
    return rows


def status(state_dir: Path, *, token: str | None, as_json: bool) -> int:
    manifest = manifests.read(state_dir)
    pid = alive_pid(manifest)
    if manifest is None or pid is None:
        if as_json:
            print(msgspec.json.encode({"running": False, "state_dir": str(state_dir)}).decode())
        elif manifest is None:
            print(f"no stack runs in {state_dir} (no {manifests.MANIFEST_FILE}: never started there)")
        elif manifest.status == "stopped":
            print(f"no stack runs in {state_dir} (the last one, pid {manifest.pid}, stopped)")
        else:
            print(f"no stack runs in {state_dir}: its {manifests.MANIFEST_FILE} is stale (pid {manifest.pid} is "
                  f"gone, it ended while {manifest.status}); `trainforge up` starts it again")
        return NOT_RUNNING_EXIT
    runners, fleet_error = _runners(manifest, token)
    if as_json:
        print(msgspec.json.encode({"running": True, "manifest": manifest, "runners": runners,
                                   "runners_error": fleet_error}).decode())
        return 0
    now = time.time()
    print(f"Trainforge {manifest.status} in {state_dir} (pid {pid}, up {_duration(now, manifest.started_at)})")
    print(f"  API        {manifest.api_url}/api/v1")
    print(f"  OpenAPI    {manifest.api_url}/schema")
    if manifest.nats_url:
        print(f"  NATS       {redact(manifest.nats_url)} ({'embedded' if manifest.nats_embedded else 'external'})")
    print(f"  Postgres   {'embedded' if manifest.database_embedded else 'external'}")
    print(f"  Log        {manifest.log_file or 'the terminal that started it (not detached)'}")
    print()
    print(f"  {'PART':<14}{'PID':>8}  {'STATE':<10}{'UPTIME':>10}  RESTARTS")
    for row in parts(manifest):
        uptime = _duration(now, row.started_at) if row.pid else "-"
        print(f"  {row.name:<14}{row.pid or '-':>8}  {row.state:<10}{uptime:>10}  {row.restarts}")
    print()
    if fleet_error is not None:
        print(f"  runners: {fleet_error}")
    elif not runners:
        print("  runners: none has reported to the gateway yet")
    else:
        print(f"  {'RUNNER':<28}{'POOL':<8}{'DEVICE':<10}{'STATE':<10}CURRENT RUN")
        for runner in runners:
            print(f"  {runner.id:<28}{runner.pool:<8}{runner.device:<10}{runner.state:<10}{runner.current_run or '-'}")
    return 0


def _runners(manifest: StackManifest, token: str | None) -> tuple[list[RunnerRow], str | None]:
    """The runners as the gateway's fleet API sees them, or why they could not be had."""
    if token is None and manifest.cli_token_file:
        try:
            token = Path(manifest.cli_token_file).read_text().strip()
        except OSError:
            token = None
    if not token:
        return [], "unknown (no API token: set TRAINFORGE_API_TOKEN or `trainforge login`)"
    try:
        response = httpx.get(f"{manifest.api_url}/api/v1/runners", params={"limit": 200},
                             headers={"Authorization": f"Bearer {token}"}, timeout=5.0)
    except httpx.HTTPError as exc:
        return [], f"the gateway did not answer ({type(exc).__name__})"
    if response.status_code != 200:
        return [], f"the gateway answered {response.status_code}"
    return msgspec.json.decode(response.content, type=RunnerPage).items, None


def _duration(now: float, since: float | None) -> str:
    if since is None:
        return "-"
    seconds = max(0, int(now - since))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


# -- down ------------------------------------------------------------------------------------------------


def down(state_dir: Path, *, wait_s: float, force: bool) -> int:
    """SIGTERM to `up` (it stops its parts in order), then wait until `up` and every part it named are gone.
    0 when nothing runs any more (also when nothing ran), 1 when something still ran after `wait_s`."""
    manifest = manifests.read(state_dir)
    pid = alive_pid(manifest)
    if manifest is None or pid is None:
        print(f"no stack runs in {state_dir}: nothing to stop")
        return 0
    pids = _pids(manifest)
    print(f"stopping the stack in {state_dir} (pid {pid}): runners, then the gateway, then NATS and Postgres",
          flush=True)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    left = _wait_gone(pids, wait_s)
    if not left:
        print("stopped")
        return 0
    if not force:
        print(f"trainforge down: still running after {wait_s:.0f} s: pids {' '.join(map(str, left))}; "
              f"`trainforge down --force` kills them", file=sys.stderr)
        return 1
    print(f"killing what is left: pids {' '.join(map(str, left))}", file=sys.stderr)
    for victim in left:
        _kill(victim)
    left = _wait_gone(left, 10.0)
    if left:
        print(f"trainforge down: pids {' '.join(map(str, left))} survived SIGKILL", file=sys.stderr)
        return 1
    print("stopped (killed)")
    return 0


def _kill(pid: int) -> None:
    """SIGKILL to `pid` and, when it leads one, its process group (each part runs in a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _pids(manifest: StackManifest) -> list[int]:
    found = [manifest.pid, *(c.pid for c in manifest.children if c.pid), manifest.nats_pid, manifest.postgres_pid]
    return [pid for pid in dict.fromkeys(found) if pid]


def _wait_gone(pids: list[int], wait_s: float) -> list[int]:
    deadline = time.monotonic() + wait_s
    while (left := [pid for pid in pids if pid_alive(pid)]) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return left


# -- logs ------------------------------------------------------------------------------------------------

PREFIX_WIDTH = 12
"""`up` prefixes each line of a part with its name, padded to this width, and `| ` (trainforge.stack)."""


def part_of(line: str) -> str:
    """The part a line of `up.log` comes from: a child's name, or `up` for the supervisor's own lines."""
    head, sep, _ = line.partition("| ")
    if sep and len(head) >= PREFIX_WIDTH and head.strip() and " " not in head.strip():
        return head.strip()
    return "up"


def logs(state_dir: Path, *, part: str | None, follow: bool, tail: int | None) -> int:
    log = manifests.log_path(state_dir)
    manifest = manifests.read(state_dir)
    if not log.exists():
        where = ("its output goes to the terminal that started it" if alive_pid(manifest) is not None
                 else "start it with `trainforge up --detach`")
        print(f"trainforge logs: no log in {log.parent} ({where})", file=sys.stderr)
        return 1
    known = {"up", *(c.name for c in manifest.children)} if manifest is not None else None
    if part is not None and known is not None and part not in known:
        print(f"trainforge logs: no part {part!r}; the parts are {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    try:
        for line in _lines(log, part=part, follow=follow, tail=tail, state_dir=state_dir):
            sys.stdout.write(line)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `| head`
        sys.stderr.close()
    return 0


def _lines(log: Path, *, part: str | None, follow: bool, tail: int | None, state_dir: Path) -> Iterator[str]:
    def wanted(line: str) -> str | None:
        if part is None:
            return line
        if part_of(line) != part:
            return None
        return line.partition("| ")[2] if part != "up" else line

    with open(log, encoding="utf-8", errors="replace") as f:
        chosen = [kept for line in f if (kept := wanted(line)) is not None]
        yield from chosen[-tail:] if tail is not None else chosen
        if not follow:
            return
        inode = os.fstat(f.fileno()).st_ino
        pending = ""
        while True:
            chunk = f.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):
                    if (kept := wanted(pending)) is not None:
                        yield kept
                    pending = ""
                continue
            if alive_pid(manifests.read(state_dir)) is None:  # the stack ended: so does following it
                return
            try:
                if log.stat().st_ino != inode:  # a new `up --detach` rotated the log: follow the new one
                    yield from _lines(log, part=part, follow=True, tail=None, state_dir=state_dir)
                    return
            except FileNotFoundError:
                pass
            time.sleep(POLL_S)
