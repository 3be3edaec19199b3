"""A real Docker engine for the tests (test code): a private `dockerd` and a small local image.

`DockerEngine.start()` runs Debian's `dockerd` (package `docker.io`, installed with apt when it is missing and we
are root) with everything of its own in a temporary folder: data root, exec root, pid file, a Unix socket
(clients reach it with `DOCKER_HOST=unix://...`), and nothing that touches the host's network
(`--iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none --userland-proxy=false`;
containers run with `--network none`). No image registry is reachable, so the test image is made here, in about
a second: a root filesystem of BusyBox (`busybox-static`) plus the host's `bash` and its libraries, and the test
training script `tests/fakes/train_llm.sh` as `/usr/local/bin/train-llm`, `docker import`ed once per session.
The image has no `setsid`, no GNU `tail`, no procps: the executor must do with bash and BusyBox.

`stop()` removes every container, stops the daemon (it stops its containerd) and deletes the folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tests.apt_support import AptUnavailable, apt_install

IMAGE = "trainforge-test/busybox-bash:1"
TRAIN_SCRIPT = Path(__file__).resolve().parent / "fakes" / "train_llm.sh"
PACKAGES = {"dockerd": "docker.io", "busybox": "busybox-static"}
DAEMON_FLAGS = [
    "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none",
    "--userland-proxy=false",
]  # fmt: skip
READY_TIMEOUT_S = 30.0


class EngineUnavailable(Exception):
    """A Docker engine cannot run on this machine."""


def _apt_install(packages: list[str]) -> None:
    try:
        apt_install(packages)
    except AptUnavailable as exc:
        raise EngineUnavailable(str(exc)) from None


def _tools() -> tuple[str, str, str]:
    """(dockerd, docker CLI, busybox), installed when missing and possible."""
    missing = [pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None]
    if shutil.which("docker") is None and "docker.io" not in missing:
        missing.append("docker.io")
    if missing:
        _apt_install(missing)
    found = [shutil.which(tool) for tool in ("dockerd", "docker", "busybox")]
    if None in found:
        raise EngineUnavailable(f"still missing after installing {missing}: dockerd, docker, busybox")
    return found[0], found[1], found[2]  # type: ignore[return-value]


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return re.findall(r"(/\S+)\s+\(0x", out)


def image_tarball(busybox: str) -> bytes:
    """A root filesystem as a tar: BusyBox with a link per applet, the host's bash and its libraries, the test
    training script. Built in memory (a few MB)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def folder(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        def file(name: str, data: bytes, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        def link(name: str, target: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)

        made: set[str] = set()

        def folders(path: str) -> None:
            parts = Path(path).parts
            for depth in range(1, len(parts) + 1):
                name = "/".join(parts[:depth])
                if name not in made:
                    made.add(name)
                    folder(name)

        for name in ("bin", "usr/bin", "usr/local/bin", "lib", "lib64", "etc", "proc", "sys", "dev", "app", "data",
                     "root", "var", "run"):
            folders(name)
        made.add("tmp")
        folder("tmp", 0o1777)
        file("etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n", 0o644)
        file("etc/group", b"root:x:0:\n", 0o644)
        file("bin/busybox", Path(busybox).read_bytes())
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
        for applet in sorted(set(applets) - {"bash", "sh", "busybox"}):
            link(f"bin/{applet}", "busybox")
        bash = shutil.which("bash") or "/bin/bash"
        file("bin/bash", Path(bash).read_bytes())
        link("bin/sh", "bash")
        for library in sorted(set(_libraries(bash) + _libraries(busybox))):
            name = library.lstrip("/")
            folders(str(Path(name).parent))
            file(name, Path(library).resolve().read_bytes())
        file("usr/local/bin/train-llm", TRAIN_SCRIPT.read_bytes())
    return buffer.getvalue()


@dataclass
class Dockerd:
    """A private `dockerd` (test code) with its own folder: its socket, exec root, pid file and log; and the
    `docker` CLI pointed at it. `DockerEngine` below, and `tests.compose_support.ComposeEngine` (in a network
    namespace, on a cached data root), are the two kinds of engine the tests run."""

    folder: Path
    dockerd: str
    docker: str
    process: subprocess.Popen[bytes] | None = field(default=None, kw_only=True)

    unavailable: ClassVar[type[Exception]] = EngineUnavailable
    """What `_launch` raises when the daemon does not come up."""

    @property
    def host(self) -> str:
        return f"unix://{self.folder / 'dockerd.sock'}"

    @property
    def env(self) -> dict[str, str]:
        """The environment a `docker` client needs to talk to this engine."""
        return {**os.environ, "DOCKER_HOST": self.host}

    def daemon_argv(self, data_root: Path, *flags: str) -> list[str]:
        f = self.folder
        return [
            self.dockerd, "--storage-driver=overlay2", *flags, "--data-root", str(data_root),
            "--exec-root", str(f / "exec"), "--pidfile", str(f / "dockerd.pid"), "--host", self.host,
        ]  # fmt: skip

    def _launch(self, argv: list[str], *, new_session: bool = False) -> None:
        """Start the daemon (`argv`: `daemon_argv`, maybe behind a wrapper) and wait until its API answers."""
        log = open(self.folder / "dockerd.log", "ab")  # noqa: SIM115 - closed with the daemon
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=new_session)
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.cli("version", check=False, timeout=10).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise self.unavailable(f"dockerd did not start: {self.log()[-2000:]}")
            time.sleep(0.1)

    def log(self) -> str:
        return (self.folder / "dockerd.log").read_text(errors="replace")

    def cli(self, *args: str, check: bool = True, timeout: float = 60, input: bytes | None = None,
            ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.docker, *args], env=self.env, capture_output=True, timeout=timeout, input=input)
        result = subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                             done.stderr.decode(errors="replace"))
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])} failed ({done.returncode}): {result.stderr[-3000:]}")
        return result

    def _stop_daemon(self, *mount_roots: Path) -> None:
        """SIGTERM (it stops its containerd), SIGKILL after 30 s; then unmount what a killed daemon left under
        its folder and `mount_roots` (nothing after a clean stop)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
            roots = tuple(str(root) for root in (self.folder, *mount_roots))
            for mount in sorted((m for m in mounts if m.startswith(roots)), reverse=True):
                subprocess.run(["umount", "-l", mount], capture_output=True)


@dataclass
class DockerEngine(Dockerd):
    containers: set[str] = field(default_factory=set)

    @classmethod
    def start(cls) -> DockerEngine:
        dockerd, docker, busybox = _tools()
        folder = Path(tempfile.mkdtemp(prefix="tf-dockerd-", dir="/tmp"))  # short: a socket path has 108 bytes
        engine = cls(folder=folder, dockerd=dockerd, docker=docker)
        try:
            engine._launch(engine.daemon_argv(folder / "data", *DAEMON_FLAGS))
            engine.cli("import", "-", IMAGE, input=image_tarball(busybox))
        except BaseException:
            engine.stop()
            raise
        return engine

    def run_container(self, label: str, mounts: dict[Path, str] | None = None) -> str:
        """Start a container of the test image that sleeps (with an init, no network); returns its name."""
        name = f"tf-{re.sub(r'[^a-zA-Z0-9_.-]+', '-', label)[:40]}-{uuid.uuid4().hex[:6]}"
        volumes = [arg for host, inside in (mounts or {}).items() for arg in ("-v", f"{host}:{inside}")]
        self.containers.add(name)
        self.cli("run", "-d", "--init", "--network", "none", "--name", name, *volumes, IMAGE, "sleep", "infinity")
        return name

    def remove(self, name: str) -> None:
        self.cli("rm", "-f", "-v", name, check=False)
        self.containers.discard(name)

    @contextlib.contextmanager
    def container(self, label: str, mounts: dict[Path, str] | None = None) -> Iterator[str]:
        name = self.run_container(label, mounts)
        try:
            yield name
        finally:
            self.remove(name)

    def sh(self, container: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a bash script in the container (not checked)."""
        return self.cli("exec", container, "bash", "-c", script, "test", *args, check=False)

    def holds(self, container: str, script: str, *args: str) -> bool:
        """Whether a test script holds in the container (exit 0) or not (exit 1). An exec that fails otherwise
        (the engine, the container) is an error of the test's bench, never read as a "no"."""
        done = self.sh(container, script, *args)
        if done.returncode not in (0, 1):
            raise AssertionError(f"docker exec in {container} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.returncode == 0

    def alive(self, container: str, pid: int) -> bool:
        return self.holds(container, 'kill -0 "$1" 2>/dev/null', str(pid))

    def group_alive(self, container: str, pgid: int) -> bool:
        return self.holds(container, 'kill -0 -- "-$1" 2>/dev/null', str(pgid))

    def read(self, container: str, path: str) -> str | None:
        done = self.cli("exec", container, "cat", path, check=False)
        return done.stdout if done.returncode == 0 else None

    def stop(self) -> None:
        for name in list(self.containers):
            self.remove(name)
        self._stop_daemon()
        shutil.rmtree(self.folder, ignore_errors=True)
