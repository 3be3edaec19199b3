"""A bounded, seeded fuzzer over `extract_archive`: random tar and zip archives (names from a small alphabet
with '.', '..' and '/', links of every kind to random targets) and random byte mutations of valid ones.
Whatever the input, extraction returns or raises `ArchiveError`, nothing appears or changes outside the
destination, and no symlink exists anywhere."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from gateway.datasets.archive import ArchiveLimits, extract_archive
from gateway.datasets.errors import ArchiveError

LIMITS = ArchiveLimits(max_archive_bytes=1 << 20, max_total_bytes=64 << 10, max_members=40)
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

part = st.sampled_from(["a", "b", "c.txt", ".", "..", "", "secret", "victim"])
path = st.builds(lambda lead, parts: lead + "/".join(parts), st.sampled_from(["", "", "", "/", "./"]),
                 st.lists(part, min_size=1, max_size=5))
kind = st.sampled_from(["file", "dir", "symlink", "hardlink"])
member = st.tuples(path, kind, path, st.binary(max_size=64))
members = st.lists(member, min_size=1, max_size=12)


def build_tar(entries: list[tuple[str, str, str, bytes]], compress: bool) -> bytes:
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, k, target, data in entries:
            info = tarfile.TarInfo(name)
            info.type = types[k]
            if k == "file":
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                info.linkname = target if k in ("symlink", "hardlink") else ""
                tf.addfile(info)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def build_zip(entries: list[tuple[str, str, str, bytes]]) -> bytes:
    modes = {"file": stat.S_IFREG | 0o644, "dir": stat.S_IFDIR | 0o755, "symlink": stat.S_IFLNK | 0o777,
             "hardlink": stat.S_IFREG | 0o644}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are part of the game
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, k, target, data in entries:
                info = zipfile.ZipInfo("placeholder")
                info.filename = name + ("/" if k == "dir" and not name.endswith("/") else "")
                info.create_system = 3
                info.external_attr = modes[k] << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, target.encode() if k == "symlink" else data)
    return buf.getvalue()


def snapshot(root: str, skip: str) -> dict[str, tuple]:
    seen: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            full = os.path.join(folder, name)
            if full == skip or full.startswith(skip + os.sep):
                continue
            st_ = os.lstat(full)
            seen[full] = (stat.S_IFMT(st_.st_mode),) if stat.S_ISDIR(st_.st_mode) else (
                stat.S_IFMT(st_.st_mode), st_.st_size, st_.st_mtime_ns)
    return seen


def check(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "outer" / "state"
        (state / "datasets").mkdir(parents=True)
        (state / "secret").write_bytes(b"admin-token")
        (Path(tmp) / "outer" / "victim").write_bytes(b"victim")
        archive = Path(tmp) / "upload.bin"
        archive.write_bytes(data)
        dest = state / "datasets" / "d" / "source"
        before = snapshot(tmp, str(dest))
        try:
            extract_archive(archive, dest, LIMITS)
        except ArchiveError as exc:
            event("refused")
            assert tmp not in str(exc)
            assert not os.path.lexists(dest)
            assert snapshot(tmp, str(dest)) == before
        else:
            event("extracted")
            assert snapshot(tmp, str(dest)) == {**before, str(dest.parent): (stat.S_IFDIR,)}
        for folder, dirs, files in os.walk(tmp, followlinks=False):
            assert not any(os.path.islink(os.path.join(folder, n)) for n in dirs + files)


@FUZZ
@given(entries=members, fmt=st.sampled_from(["tar", "tgz", "zip"]))
def test_random_archives_extract_or_are_refused_and_never_leave_the_folder(entries, fmt) -> None:
    try:
        data = build_zip(entries) if fmt == "zip" else build_tar(entries, fmt == "tgz")
    except (ValueError, tarfile.TarError, UnicodeError):
        assume(False)
        return
    check(data)


VALID = [
    [("d/img.jpg", "file", "", b"jpeg" * 8), ("d/alias.jpg", "symlink", "img.jpg", b""),
     ("hard.jpg", "hardlink", "d/img.jpg", b""), ("e", "dir", "", b"")],
    [("a.txt", "file", "", b"x" * 100), ("b/c.txt", "file", "", bytes(range(64)))],
]


@FUZZ
@given(which=st.integers(0, len(VALID) - 1), fmt=st.sampled_from(["tar", "tgz", "zip"]),
       flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 1 << 16)))
def test_mutated_archives_extract_or_are_refused_and_never_leave_the_folder(which, fmt, flips, cut) -> None:
    entries = VALID[which]
    data = bytearray(build_zip(entries) if fmt == "zip" else build_tar(entries, fmt == "tgz"))
    for at, value in flips:
        data[at % len(data)] = value
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    check(bytes(data))
