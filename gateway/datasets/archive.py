"""Safe extraction of dataset archives (.zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz).

Extraction cannot leave the destination by construction: no link is ever followed on disk and no symlink is
ever created. Every member's final place is decided from the archive's own names, in a virtual tree of the
archive, before anything is written:

1. Read the member list (`_read_zip`, `_read_tar`). The member count is checked while the list is read
   (a 300,000-member archive is refused after `max_members` headers, not after parsing it all), and a tar
   stream is read through `_Bounded`, which refuses to decompress more than the members can hold (a gzip
   bomb hidden in a header, or a seek to a claimed 1 TB offset, stops early).
2. Check every name (`_parts`): control characters (terminal/log injection, names no tool can type), NUL and
   backslashes (names that mean different files to different tools), absolute names and drive letters, and
   `..` (zip-slip) are refused; names that are not UTF-8 are refused (they break every JSON answer later).
   Device files and fifos are refused (a fifo blocks the reader forever; a device reads the server's disks).
   Tar members also pass `tarfile.data_filter` first, the standard library's own check.
3. Build the virtual tree (`_Tree`) and resolve every link inside it, following links to links with a bound
   (loops and endless chains are refused). A symlink or hard link naming a regular file becomes a *copy* of
   that file. A link to a folder, to nothing, to a place outside the archive, or a member stored below a
   link, is refused: that is what the 2025 tarfile escapes were made of (a link created through an earlier
   link lands higher than it was checked for).
4. Check the size: the files plus every copy a link makes (a link bomb cannot multiply the size) must fit
   `max_total_bytes`. Archives can lie about sizes, so the bytes are counted again while writing, and a
   member that yields more bytes than its header said is refused.
5. Write into a fresh private folder (`.extract-*`, mode 0700) next to the destination: directories with
   `os.mkdir` and files with `O_CREAT | O_EXCL | O_NOFOLLOW`, both of which fail on anything already there,
   so nothing is ever written through a link or over an existing file. The folder is renamed to the
   destination only when everything passed; a refused archive leaves nothing anywhere.

Every failure is an `ArchiveError` whose message names the member but never a server path: a damaged or
truncated archive's `BadZipFile`, `EOFError`, `zlib.error`, `OSError`, ... are all translated.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Literal

import msgspec

from gateway.datasets.errors import ArchiveError
from shared.settings import Settings

_CHUNK = 1 << 20
_MAX_HOPS = 40
"""Links followed while resolving one name (Linux's own bound); more is a loop or a chain nobody needs."""
_MAX_LINK_TARGET = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")
_TAR_HEADER_ROOM = 4096
"""Bytes of tar headers (pax and long-name records included) allowed per member by `_Bounded`."""
_MAX_READ = 16 * _CHUNK
"""The largest single read `_Bounded` serves: tarfile reads a header record at once, member data in chunks."""


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


Kind = Literal["file", "dir", "symlink", "hardlink"]


class _Member(msgspec.Struct, kw_only=True):
    name: str
    """As the archive spells it (for messages)."""
    parts: tuple[str, ...]
    """The normalised path below the destination; () is the destination itself."""
    kind: Kind
    size: int = 0
    target: str = ""
    """A link's target as the archive spells it (a hard link's is relative to the archive's root)."""
    ref: object = None
    source: tuple[str, ...] = ()
    """For a link: the file member it resolves to, whose bytes it gets a copy of."""


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> Extracted:
    """Extract `archive` into the new (or empty) folder `dest`. Raises `ArchiveError` and leaves nothing
    behind when the archive is too large, malformed, or holds a member that would land outside `dest`."""
    made: list[Path] = []
    staging: Path | None = None
    try:
        size = archive.stat().st_size
        if size > limits.max_archive_bytes:
            raise ArchiveError(
                f"the archive is {_mb(size)} MB; at most {_mb(limits.max_archive_bytes)} MB are accepted"
            )
        _check_destination(dest)
        _make_parents(dest.parent, made)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".extract-"))
        with _open(archive, limits, str(staging)) as (members, read):
            _plan(members, limits)
            extracted = _write(members, read, str(staging), limits)
        os.chmod(staging, 0o755)
        if os.path.lexists(dest):
            os.rmdir(dest)  # the empty folder `_check_destination` let through; fails if it filled up since
        os.rename(staging, dest)
        return extracted
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        if isinstance(exc, ArchiveError) or not isinstance(exc, Exception):
            raise
        # A damaged archive fails in many ways (BadZipFile, EOFError, zlib.error, OSError, ...): one answer,
        # without the server paths their messages may carry.
        raise ArchiveError(f"the archive is damaged or cannot be extracted ({_describe(exc)})") from exc


def _check_destination(dest: Path) -> None:
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        with os.scandir(dest) as entries:
            if next(entries, None) is None:
                return
    raise ArchiveError("the extraction folder already exists and is not empty")


def _make_parents(folder: Path, made: list[Path]) -> None:
    """Create the missing folders down to `folder`, adding each to `made` (outermost first)."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        os.mkdir(path)
        made.append(path)


def _describe(exc: BaseException) -> str:
    """What went wrong, without the file names an `OSError` or a library message may carry."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


# -- reading the member list ---------------------------------------------------------------------------


Reader = Callable[[object], IO[bytes]]


@contextmanager
def _open(archive: Path, limits: ArchiveLimits, staging: str) -> Iterator[tuple[list[_Member], Reader]]:
    with archive.open("rb") as fh:
        head = fh.read(6)
        if zipfile.is_zipfile(fh):
            _check_zip_count(fh, limits)
            with zipfile.ZipFile(fh) as zf:
                yield _read_zip(zf, limits), zf.open  # type: ignore[misc]
            return
    if head.startswith(b"PK\x03\x04"):
        raise ArchiveError("the zip archive is damaged or truncated (its table of contents is missing)")
    with _tar_stream(archive, head, limits) as stream:
        try:
            tf = tarfile.open(fileobj=stream, mode="r:")  # type: ignore[call-overload]
        except tarfile.TarError as exc:
            raise ArchiveError(
                "the upload is not a zip or tar archive (.zip, .tar, .tar.gz, .tar.bz2, .tar.xz)") from exc
        with tf:
            yield _read_tar(tf, limits, staging), tf.extractfile  # type: ignore[misc]


def _check_zip_count(fh: IO[bytes], limits: ArchiveLimits) -> None:
    """Refuse a zip with too many members from its end record, before `ZipFile` parses (and holds in
    memory) the whole table of contents."""
    end_record = getattr(zipfile, "_EndRecData", None)  # private, but stable since Python 2
    if end_record is None:
        return
    end = end_record(fh)
    if end and end[zipfile._ECD_ENTRIES_TOTAL] > limits.max_members:
        raise _too_many(limits)


@contextmanager
def _tar_stream(archive: Path, head: bytes, limits: ArchiveLimits) -> Iterator[_Bounded]:
    raw: IO[bytes]
    if head.startswith(b"\x1f\x8b"):
        raw = gzip.open(archive, "rb")
    elif head.startswith(b"BZh"):
        raw = bz2.open(archive, "rb")
    elif head.startswith(b"\xfd7zXZ\x00"):
        raw = lzma.open(archive, "rb")
    else:
        raw = archive.open("rb")
    with raw:
        yield _Bounded(raw, limits.max_total_bytes + _TAR_HEADER_ROOM * (limits.max_members + 2), limits)


class _Bounded:
    """A read-only view of a (decompressed) tar stream that refuses to read or seek past `bound` bytes,
    or to read more than `_MAX_READ` at once.

    Defends against decompression bombs that tarfile itself would swallow before any member check runs:
    gigabytes of zeros in a long-name or pax record (which tarfile reads into memory in one call), or a
    header claiming a huge size, after which tarfile seeks (decompresses) that far to find the next header.
    Member data is read through it in chunks of `_CHUNK`."""

    def __init__(self, raw: IO[bytes], bound: int, limits: ArchiveLimits) -> None:
        self._raw, self._bound, self._limits = raw, bound, limits

    def _refuse(self) -> ArchiveError:
        return ArchiveError(f"the archive expands to more than {_mb(self._limits.max_total_bytes)} MB")

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0 or n > _MAX_READ:
            raise ArchiveError("the archive holds a header record that is too large")
        room = self._bound - self._raw.tell()
        if n > room:
            data = self._raw.read(room + 1)
            if len(data) > room:
                raise self._refuse()
            return data
        return self._raw.read(n)

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET:
            raise io.UnsupportedOperation("only absolute seeks")
        if pos > self._bound:
            raise self._refuse()
        return self._raw.seek(pos)

    def tell(self) -> int:
        return self._raw.tell()

    def seekable(self) -> bool:
        return True


def _too_many(limits: ArchiveLimits) -> ArchiveError:
    return ArchiveError(f"the archive holds more than {limits.max_members} members; "
                        f"at most {limits.max_members} are allowed")


def _read_zip(zf: zipfile.ZipFile, limits: ArchiveLimits) -> list[_Member]:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise _too_many(limits)
    members = []
    for info in infos:
        name = info.orig_filename  # `filename` is cut at a NUL; the original shows it
        parts = _parts(name)
        mode = info.external_attr >> 16
        if info.flag_bits & 0x1:
            raise ArchiveError(f"archive member {name!r} is encrypted")
        if stat.S_ISLNK(mode):
            # A zip symlink is a member whose content is the target.
            if info.file_size > _MAX_LINK_TARGET:
                raise ArchiveError(f"archive link {name!r} has a malformed target")
            with zf.open(info) as src:
                raw = src.read(_MAX_LINK_TARGET + 1)
            try:
                target = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ArchiveError(f"archive link {name!r} has a malformed target") from None
            members.append(_Member(name=name, parts=parts, kind="symlink", target=target))
        elif info.is_dir() or stat.S_ISDIR(mode):
            members.append(_Member(name=name, parts=parts, kind="dir"))
        elif stat.S_IFMT(mode) and not stat.S_ISREG(mode):
            raise ArchiveError(f"archive member {name!r} is a device file or fifo; only files and folders "
                               "are allowed")
        else:
            members.append(_Member(name=name, parts=parts, kind="file", size=info.file_size, ref=info))
    return members


def _read_tar(tf: tarfile.TarFile, limits: ArchiveLimits, staging: str) -> list[_Member]:
    # The standard library's `data` filter is the first check, not the only one: Python 3.11.7 predates
    # the fixes for the 2025 filter bypasses (CVE-2025-4517, CVE-2025-4138, CVE-2025-4330: chains of
    # symlinks with long paths make its realpath() checks see a different tree than extraction builds).
    # That is why it only ever sees the still empty staging folder, and why no link is created on disk.
    members: list[_Member] = []
    while (info := tf.next()) is not None:
        if len(members) >= limits.max_members:
            raise _too_many(limits)
        parts = _parts(info.name)
        try:
            tarfile.data_filter(info, staging)
        except tarfile.FilterError as exc:
            raise _filter_refusal(info, exc) from None
        members.append(_tar_member(info, parts))
    return members


def _filter_refusal(info: tarfile.TarInfo, exc: tarfile.FilterError) -> ArchiveError:
    """The filter's refusal in words of our own (its messages name server paths)."""
    if isinstance(exc, tarfile.AbsoluteLinkError):
        return ArchiveError(f"archive link {info.name!r} points to an absolute path")
    if isinstance(exc, tarfile.LinkOutsideDestinationError):
        return ArchiveError(f"archive link {info.name!r} points outside the archive folder")
    if isinstance(exc, tarfile.SpecialFileError):
        return ArchiveError(f"archive member {info.name!r} is a device file or fifo; only files and folders "
                            "are allowed")
    if isinstance(exc, tarfile.AbsolutePathError):
        return ArchiveError(f"archive member {info.name!r} has an absolute path")
    return ArchiveError(f"archive member {info.name!r} points outside the archive folder")


def _tar_member(info: tarfile.TarInfo, parts: tuple[str, ...]) -> _Member:
    if info.isreg():
        return _Member(name=info.name, parts=parts, kind="file", size=info.size, ref=info)
    if info.isdir():
        return _Member(name=info.name, parts=parts, kind="dir")
    if info.issym():
        return _Member(name=info.name, parts=parts, kind="symlink", target=info.linkname)
    if info.islnk():
        return _Member(name=info.name, parts=parts, kind="hardlink", target=info.linkname)
    raise ArchiveError(f"archive member {info.name!r} is a device file or fifo; only files and folders "
                       "are allowed")


def _parts(name: str) -> tuple[str, ...]:
    """The member name as normalised path components, or ArchiveError."""
    if _CONTROL.search(name) or "\\" in name:
        raise ArchiveError(f"archive member {name!r} has a malformed name (a control character or '\\')")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ArchiveError(f"archive member {name!r} has a name that is not UTF-8") from None
    if name.startswith("/") or _DRIVE.match(name):
        raise ArchiveError(f"archive member {name!r} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"archive member {name!r} points outside the archive folder ('..')")
    if any(len(p.encode("utf-8")) > 255 for p in parts):
        raise ArchiveError(f"archive member {name!r} has a name part longer than 255 bytes")
    return parts


# -- the virtual tree --------------------------------------------------------------------------------------


class _Unresolved(Exception):
    def __init__(self, why: str) -> None:
        self.why = why


class _Tree:
    """The archive's namespace: every member and the folders their names imply, with links resolved inside
    it. Nothing on disk is consulted, so nothing on disk can redirect a name."""

    def __init__(self, members: list[_Member]) -> None:
        self.nodes: dict[tuple[str, ...], _Member | None] = {(): None}  # None: a folder
        for m in members:
            if not m.parts:
                if m.kind != "dir":
                    raise ArchiveError(f"archive member {m.name!r} has an empty name")
                continue
            for i in range(1, len(m.parts)):
                above = self.nodes.setdefault(m.parts[:i], None)
                if above is not None and above.kind == "file":
                    raise ArchiveError(f"archive member {m.name!r} lies below the file {above.name!r}")
                if above is not None:
                    raise ArchiveError(f"archive member {m.name!r} lies below the link {above.name!r}; "
                                       "links to folders are not accepted")
            if m.parts in self.nodes:
                if self.nodes[m.parts] is None and m.kind == "dir":
                    continue
                raise ArchiveError(f"archive member {m.name!r} appears twice (or as a file and a folder)")
            self.nodes[m.parts] = None if m.kind == "dir" else m

    def resolve(self, link: _Member) -> tuple[str, ...]:
        """The path of the file member `link` names, following links to links; `_Unresolved` otherwise."""
        target = link.target
        if not target or "\x00" in target:
            raise _Unresolved("has an empty or malformed target")
        start = () if link.kind == "hardlink" else link.parts[:-1]
        hops = 0
        here: list[str] = list(start)
        queue = self._split(target)
        while queue:
            part = queue.pop(0)
            if part == "..":
                if not here:
                    raise _Unresolved("points outside the archive folder")
                here.pop()
                continue
            here.append(part)
            node = self.nodes.get(tuple(here), _ABSENT)
            if node is _ABSENT:
                raise _Unresolved("points to nothing in the archive")
            if node is None:
                continue
            assert isinstance(node, _Member)
            if node.kind in ("symlink", "hardlink"):
                hops += 1
                if hops > _MAX_HOPS:
                    raise _Unresolved("is part of a link loop (or a chain of more than 40 links)")
                here.pop()
                if node.kind == "hardlink":
                    here = []
                queue = self._split(node.target) + queue
            elif queue:
                raise _Unresolved(f"goes through the file {node.name!r} as if it were a folder")
        resolved = tuple(here)
        node = self.nodes.get(resolved)
        if not isinstance(node, _Member):
            raise _Unresolved("points to a folder; links to folders are not accepted")
        return resolved

    @staticmethod
    def _split(target: str) -> list[str]:
        if target.startswith("/") or _DRIVE.match(target) or "\\" in target:
            raise _Unresolved("points to an absolute path")
        if _CONTROL.search(target):
            raise _Unresolved("has an empty or malformed target")
        return [p for p in target.split("/") if p not in ("", ".")]


_ABSENT = object()


def _plan(members: list[_Member], limits: ArchiveLimits) -> None:
    """Resolve every link to the file it copies and check the total size, before anything is written."""
    tree = _Tree(members)
    sizes = {m.parts: m.size for m in members if m.kind == "file"}
    total = 0
    for m in members:
        if m.kind in ("symlink", "hardlink"):
            try:
                m.source = tree.resolve(m)
            except _Unresolved as exc:
                what = "hard link" if m.kind == "hardlink" else "link"
                raise ArchiveError(f"archive {what} {m.name!r} {exc.why}") from None
            m.size = sizes[m.source]
        total += m.size
        if total > limits.max_total_bytes:
            raise ArchiveError(f"the archive expands to more than {_mb(limits.max_total_bytes)} MB")


# -- writing -----------------------------------------------------------------------------------------------

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Writer:
    def __init__(self, root: str, limits: ArchiveLimits) -> None:
        self.root, self.limits = root, limits
        self.made: set[tuple[str, ...]] = {()}
        self.written = 0

    def path(self, parts: tuple[str, ...]) -> str:
        return os.path.join(self.root, *parts)

    def folder(self, parts: tuple[str, ...]) -> None:
        for i in range(1, len(parts) + 1):
            if parts[:i] not in self.made:
                os.mkdir(self.path(parts[:i]), 0o755)  # fails on anything already there, a link included
                self.made.add(parts[:i])

    def file(self, m: _Member, src: IO[bytes]) -> None:
        self.folder(m.parts[:-1])
        fd = os.open(self.path(m.parts), _NEW_FILE, 0o644)
        with os.fdopen(fd, "wb") as out:
            count = 0
            while chunk := src.read(_CHUNK):
                count += len(chunk)
                self.written += len(chunk)
                if self.written > self.limits.max_total_bytes:
                    limit = _mb(self.limits.max_total_bytes)
                    raise ArchiveError(f"the archive expands to more than {limit} MB")
                if count > m.size:
                    raise ArchiveError(f"archive member {m.name!r} holds more bytes than its header says")
                out.write(chunk)


def _write(members: list[_Member], read: Reader, root: str, limits: ArchiveLimits) -> Extracted:
    writer = _Writer(root, limits)
    files = 0
    for m in members:
        if m.kind == "dir":
            writer.folder(m.parts)
        elif m.kind == "file":
            with read(m.ref) as src:
                writer.file(m, src)
            files += 1
    # Links become copies of the files they resolve to, read back from what was just written: a folder
    # that is ours alone and holds no link, opened with O_NOFOLLOW all the same.
    for m in members:
        if m.kind in ("symlink", "hardlink"):
            fd = os.open(writer.path(m.source), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as src:
                writer.file(m, src)
            files += 1
    return Extracted(files=files, bytes=writer.written)


def _mb(n: int) -> int:
    return -(-n // (1024 * 1024))

