"""Safe extraction of dataset archives (.zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz).

Every member is checked before anything is written: no absolute names, no `..`, no device files or
fifos, no more than `max_members` members and `max_total_bytes` in all. Links are created last, only when
their target stays inside the folder, and every created link is checked again with its real path.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Literal

import msgspec

from gateway.datasets.errors import ArchiveError
from shared.settings import Settings

_CHUNK = 1 << 20


class ArchiveLimits(msgspec.Struct, frozen=True, kw_only=True):
    max_archive_bytes: int
    max_total_bytes: int
    max_members: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        mb = 1024 * 1024
        return cls(
            max_archive_bytes=settings.max_upload_mb * mb,
            max_total_bytes=4 * settings.max_upload_mb * mb,
            max_members=settings.max_upload_files,
        )


class Extracted(msgspec.Struct, frozen=True, kw_only=True):
    files: int
    bytes: int


class _Member(msgspec.Struct, kw_only=True):
    name: str
    kind: Literal["file", "dir", "symlink", "hardlink"]
    size: int = 0
    target: str = ""
    ref: object = None


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> Extracted:
    """Extract `archive` into the (new or empty) folder `dest`. Raises `ArchiveError` and leaves nothing
    behind when the archive is too large, malformed, or holds a member that would land outside `dest`."""
    size = archive.stat().st_size
    if size > limits.max_archive_bytes:
        raise ArchiveError(
            f"the archive is {_mb(size)} MB; at most {_mb(limits.max_archive_bytes)} MB are accepted"
        )
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ArchiveError(f"extraction folder {dest} is not empty")
    try:
        with _open(archive) as (members, read):
            _check(members, limits)
            return _write(members, read, dest.resolve(), limits)
    except OSError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveError(f"the archive could not be extracted: {exc}") from exc
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


@contextmanager
def _open(archive: Path) -> Iterator[tuple[list[_Member], object]]:
    if zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as zf:
                yield [_zip_member(info) for info in zf.infolist()], zf.open
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
            raise ArchiveError(f"the zip archive is damaged: {exc}") from exc
        return
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError as exc:
        raise ArchiveError("the upload is not a zip or tar archive (.zip, .tar, .tar.gz, .tar.bz2, .tar.xz)") from exc
    try:
        with tf:
            yield [_tar_member(info) for info in tf.getmembers()], tf.extractfile
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"the tar archive is damaged: {exc}") from exc


def _zip_member(info: zipfile.ZipInfo) -> _Member:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return _Member(name=info.filename, kind="symlink", ref=info)
    if info.is_dir():
        return _Member(name=info.filename, kind="dir")
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        raise ArchiveError(f"archive member {info.filename!r} is a special file; only files and folders are allowed")
    return _Member(name=info.filename, kind="file", size=info.file_size, ref=info)


def _tar_member(info: tarfile.TarInfo) -> _Member:
    if info.isreg():
        return _Member(name=info.name, kind="file", size=info.size, ref=info)
    if info.isdir():
        return _Member(name=info.name, kind="dir")
    if info.issym():
        return _Member(name=info.name, kind="symlink", target=info.linkname)
    if info.islnk():
        return _Member(name=info.name, kind="hardlink", target=info.linkname)
    raise ArchiveError(f"archive member {info.name!r} is a device file or fifo; only files and folders are allowed")


def _safe_name(name: str) -> str:
    """The member name as a normalised relative posix path, or ArchiveError."""
    if "\x00" in name or "\\" in name:
        raise ArchiveError(f"archive member {name!r} has a malformed name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"archive member {name!r} has an absolute path")
    if ".." in name.split("/"):
        raise ArchiveError(f"archive member {name!r} points outside the archive folder ('..')")
    norm = posixpath.normpath(name)
    return "" if norm == "." else norm


def _check(members: list[_Member], limits: ArchiveLimits) -> None:
    if len(members) > limits.max_members:
        raise ArchiveError(f"the archive holds {len(members)} members; at most {limits.max_members} are allowed")
    total = 0
    for m in members:
        m.name = _safe_name(m.name)
        total += m.size
        if total > limits.max_total_bytes:
            raise ArchiveError(f"the archive expands to more than {_mb(limits.max_total_bytes)} MB")
        if m.kind == "hardlink":
            m.target = _safe_name(m.target)
        elif m.kind == "symlink" and m.target:
            _link_target(m)


def _link_target(m: _Member) -> str:
    """The symlink's target relative to the archive folder; refuses targets that leave it."""
    if m.target.startswith("/") or "\x00" in m.target:
        raise ArchiveError(f"archive link {m.name!r} points to an absolute path")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(m.name), m.target))
    if resolved == ".." or resolved.startswith("../"):
        raise ArchiveError(f"archive link {m.name!r} points outside the archive folder")
    return resolved


def _write(members: list[_Member], read: object, dest: Path, limits: ArchiveLimits) -> Extracted:
    written = files = 0
    for m in members:
        if not m.name:
            continue
        path = dest / m.name
        if m.kind == "dir":
            path.mkdir(parents=True, exist_ok=True)
        elif m.kind == "file":
            path.parent.mkdir(parents=True, exist_ok=True)
            src: IO[bytes] = read(m.ref)  # type: ignore[operator]
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with src, os.fdopen(fd, "wb") as out:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if written > limits.max_total_bytes:
                        raise ArchiveError(f"the archive expands to more than {_mb(limits.max_total_bytes)} MB")
                    out.write(chunk)
            files += 1
    # Links last, so that no file is ever written through one.
    for m in members:
        if m.kind == "hardlink":
            target = dest / m.target
            if not target.is_file() or target.is_symlink():
                raise ArchiveError(f"archive hard link {m.name!r} does not point to a file of the archive")
            (dest / m.name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(target, dest / m.name)
            files += 1
        elif m.kind == "symlink":
            if m.ref is not None:  # zip: the target is the member's content
                with read(m.ref) as src:  # type: ignore[operator]
                    m.target = src.read(4096).decode("utf-8", "replace")
            relative = _link_target(m)
            (dest / m.name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(dest / relative, (dest / m.name).parent), dest / m.name)
    for m in members:
        if m.kind == "symlink" and not (dest / m.name).resolve().is_relative_to(dest):
            raise ArchiveError(f"archive link {m.name!r} points outside the archive folder")
    return Extracted(files=files, bytes=written)


def _mb(n: int) -> int:
    return -(-n // (1024 * 1024))
