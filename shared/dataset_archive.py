"""A prepared dataset as one content-addressed archive, and the runner host's cache of them.

Runners on other hosts do not see the gateway's `<state_dir>/datasets`. For them the gateway packs a prepared
dataset into a deterministic tar (`pack`): the files Ultralytics reads, links followed, names sorted, times,
owners and modes fixed, and the data YAML's `path` made relative. Its SHA-256 is the dataset's content hash: the
same prepared content always gives the same bytes and so the same hash, whoever packs it. The job carries that
hash (`dataset_sha256` of the yolo specs); the archive lies in the artifact store under
`datasets/<sha256>.tar` and is served by the gateway at `GET /api/v1/fleet/datasets/<sha256>` to runners.

`DatasetCache` keeps unpacked archives on a runner host, one folder per hash, bounded in size (least recently
used folders go first), each verified against its hash before it is used: an archive is downloaded into
`.partial/`, hashed while written, unpacked there and only then renamed into place, so an interrupted download
or unpack leaves nothing that looks ready. A lock file per hash (`flock`) lets the runners of one host share
the folder: one downloads, the others wait and use its result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import yaml

SHA256_RE = re.compile(r"[0-9a-f]{64}")
TOP_LEVEL = ("yolo", "classify")
DATA_YAML = "data.yaml"
READY = ".ready"
USED = ".used"
PARTIAL = ".partial"


class DatasetArchiveError(Exception):
    """A dataset archive cannot be made, fetched or used."""


def check_sha256(value: str) -> str:
    if not SHA256_RE.fullmatch(value):
        raise DatasetArchiveError(f"not a SHA-256 content hash: {value!r}")
    return value


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content, hex (read in chunks by the standard library)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def store_key(sha256: str) -> str:
    """The artifact-store key of a dataset archive."""
    return f"datasets/{check_sha256(sha256)}.tar"


# -- packing (the gateway) --------------------------------------------------------------------------------


def _members(prepared: Path) -> Iterator[tuple[str, Path | None]]:
    """(name in the archive, file or None for a folder) of a prepared layout, sorted."""
    for top in TOP_LEVEL:
        base = prepared / top
        if not base.is_dir():
            continue
        yield top, None
        for folder, dirs, files in os.walk(base, followlinks=False):
            dirs.sort()
            rel = Path(folder).relative_to(prepared)
            for name in dirs:
                yield (rel / name).as_posix(), None
            for name in sorted(files):
                yield (rel / name).as_posix(), Path(folder) / name


def pack(prepared: Path, out: Path) -> tuple[str, int]:
    """Write the archive of the prepared folder `prepared` (the layout of `gateway.datasets.layout`) to `out`
    (atomically); returns (sha256, size). Blocking."""
    prepared = prepared.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            data_yaml = prepared / DATA_YAML
            if data_yaml.is_file():
                data = yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}
                data["path"] = "yolo"
                _add_bytes(tar, DATA_YAML, yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode())
            for name, path in _members(prepared):
                if path is None:
                    _add_folder(tar, name)
                    continue
                target = path.resolve()
                if not target.is_file():
                    raise DatasetArchiveError(f"{name}: its file is missing ({target})")
                info = _info(name, target.stat().st_size, 0o644)
                with target.open("rb") as handle:
                    tar.addfile(info, handle)
        sha256 = file_sha256(Path(tmp))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256, out.stat().st_size


def _info(name: str, size: int, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.mtime = size, mode, kind, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_folder(tar: tarfile.TarFile, name: str) -> None:
    tar.addfile(_info(name, 0, 0o755, tarfile.DIRTYPE))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data), 0o644), io.BytesIO(data))


# -- the runner host's cache ------------------------------------------------------------------------------

Download = Callable[[Path], Awaitable[None]]
"""Writes the archive's bytes to the file it is given (a source: the artifact store, the gateway)."""


class DatasetCache:
    """Unpacked dataset archives below `root`, at most `max_bytes` in all (one over-large dataset is still
    kept while it is the only one). A dataset a job uses is pinned (`using`) and never evicted meanwhile: the
    bound may be exceeded while more datasets are in use than fit."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def folder(self, sha256: str) -> Path:
        return self.root / check_sha256(sha256)

    def data_of(self, sha256: str) -> Path | None:
        """What Ultralytics' `data=` gets for a cached dataset (its data YAML or classification folder), or None
        when the hash is not (completely) in the cache."""
        folder = self.folder(sha256)
        if not (folder / READY).is_file():
            return None
        return folder / DATA_YAML if (folder / DATA_YAML).is_file() else folder / "classify"

    async def ensure(self, sha256: str, sources: list[tuple[str, Download]]) -> Path:
        """The local `data=` of the dataset `sha256`, downloading it from the first source that gives bytes with
        that hash. DatasetArchiveError (naming each source's failure) when none does."""
        check_sha256(sha256)
        self.root.mkdir(parents=True, exist_ok=True)
        async with self._locked(sha256):
            if (found := self.data_of(sha256)) is not None:
                await anyio.to_thread.run_sync(self._touch, sha256)
                return found
            failures = []
            for name, download in sources:
                try:
                    await self._download(sha256, download)
                except anyio.get_cancelled_exc_class():
                    raise
                except Exception as exc:  # noqa: BLE001 - the next source may have it; all failures are reported
                    failures.append(f"{name}: {type(exc).__name__}: {exc}")
                    continue
                await anyio.to_thread.run_sync(self._evict, sha256)
                found = self.data_of(sha256)
                assert found is not None
                return found
        tried = "; ".join(failures) or "no source configured (artifact store `nats` or runner_gateway_url)"
        raise DatasetArchiveError(f"dataset {sha256[:12]} could not be fetched: {tried}")

    @contextlib.asynccontextmanager
    async def using(self, sha256: str, sources: list[tuple[str, Download]]) -> AsyncIterator[Path]:
        """`ensure`, and the dataset pinned until the block ends: a shared lock on its pin file, which eviction
        (by any process on this host) must take exclusively. Taken before the dataset is looked at, so no
        eviction can come between finding it and using it."""
        check_sha256(sha256)
        self.root.mkdir(parents=True, exist_ok=True)
        async with self._flocked(f".{sha256}.pin", fcntl.LOCK_SH):
            yield await self.ensure(sha256, sources)

    def pinned(self, sha256: str) -> bool:
        """Whether a job on this host uses the dataset now (its pin is held)."""
        with (self.root / f".{check_sha256(sha256)}.pin").open("a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False

    def _locked(self, sha256: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._flocked(f".{sha256}.lock", fcntl.LOCK_EX)

    @contextlib.asynccontextmanager
    async def _flocked(self, name: str, mode: int) -> AsyncIterator[None]:
        path = self.root / name
        handle = await anyio.to_thread.run_sync(lambda: path.open("a+"))
        try:
            # flock blocks: in a worker thread, abandoned (and its lock file closed) if the waiter is cancelled
            await anyio.to_thread.run_sync(fcntl.flock, handle.fileno(), mode)
            yield
        finally:
            handle.close()  # releases the lock

    async def _download(self, sha256: str, download: Download) -> None:
        partial = self.root / PARTIAL
        partial.mkdir(exist_ok=True)
        scratch = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(dir=partial, prefix=sha256[:12])))
        try:
            archive = scratch / "archive.tar"
            await download(archive)
            await anyio.to_thread.run_sync(self._install, sha256, archive, scratch / "data")
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))

    def _install(self, sha256: str, archive: Path, unpacked: Path) -> None:
        if (found := file_sha256(archive)) != sha256:
            raise DatasetArchiveError(f"the archive's SHA-256 is {found[:12]}…, not {sha256[:12]}…")
        unpacked.mkdir()
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                top = member.name.split("/", 1)[0]
                if not (member.isfile() or member.isdir()) or top not in (*TOP_LEVEL, DATA_YAML):
                    raise DatasetArchiveError(f"unexpected member {member.name!r} in the dataset archive")
            tar.extractall(unpacked, filter="data")
        data_yaml = unpacked / DATA_YAML
        if data_yaml.is_file():
            final = self.folder(sha256)
            data = yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}
            data["path"] = str((final / "yolo").resolve())
            data_yaml.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        size = sum(p.stat().st_size for p in unpacked.rglob("*") if p.is_file())
        (unpacked / READY).write_text(f"{size}\n")
        (unpacked / USED).touch()
        final = self.folder(sha256)
        if final.exists():  # a leftover without its ready mark
            shutil.rmtree(final)
        os.replace(unpacked, final)

    def _touch(self, sha256: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.folder(sha256) / USED)

    def _evict(self, keep: str) -> None:
        """Remove least recently used datasets (never `keep`, never one being fetched, never one a job uses:
        `using`) until the cache fits its bound."""
        entries = []
        for folder in self.root.iterdir():
            if not SHA256_RE.fullmatch(folder.name):
                continue
            try:
                size = int((folder / READY).read_text().strip())
                used = (folder / USED).stat().st_mtime
            except (OSError, ValueError):
                continue
            entries.append((used, folder.name, size))
        total = sum(size for _, _, size in entries)
        for _, name, size in sorted(entries):
            if total <= self.max_bytes:
                return
            if name == keep:
                continue
            with (self.root / f".{name}.lock").open("a+") as lock, (self.root / f".{name}.pin").open("a+") as pin:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(pin.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being fetched, or a job uses it
                (self.folder(name) / READY).unlink(missing_ok=True)
                shutil.rmtree(self.folder(name), ignore_errors=True)
                total -= size

