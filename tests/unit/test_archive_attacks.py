"""The attack corpus of `extract_archive`: every refused archive leaves the whole tree around the destination
exactly as it was (no file created, changed or linked outside it, no destination), and answers an
`ArchiveError` whose message names no server path. Accepted links arrive as plain copies."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from gateway.datasets.archive import ArchiveLimits, extract_archive
from gateway.datasets.errors import ArchiveError
from tests.dataset_factories import make_yolo_yaml, tar_folder, tar_member, tar_with, zip_folder, zip_with

LIMITS = ArchiveLimits(max_archive_bytes=10 << 20, max_total_bytes=2 << 20, max_members=1000)
SYM, HARD, FILE = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.REGTYPE

# a -> . then a/u1 -> .., u1/u2 -> .., u1/u2/u3 -> .., u1/u2/u3/u4 -> ..: on a disk that creates links in
# member order, u1/u2/u3 is <state> and u1/u2/u3/u4 is the folder above it, for the destination
# <state>/datasets/<id>/source.
CHAIN = [("a", "."), ("a/u1", ".."), ("u1/u2", ".."), ("u1/u2/u3", ".."), ("u1/u2/u3/u4", "..")]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path below `root`, never following a link: its type, and for non-folders its size and mtime."""
    seen: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            seen[os.path.relpath(path, root)] = (kind,) if stat.S_ISDIR(st.st_mode) else (
                kind, st.st_size, st.st_mtime_ns)
    return seen


def symlinks_below(root: Path) -> list[str]:
    return [os.path.join(folder, name) for folder, dirs, files in os.walk(root, followlinks=False)
            for name in dirs + files if os.path.islink(os.path.join(folder, name))]


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """<tmp>/outer/state/datasets/d1/source, with a secret in the state folder and a victim above it."""
    state = tmp_path / "outer" / "state"
    (state / "datasets").mkdir(parents=True)
    (state / "secret").write_bytes(b"admin-token")
    (tmp_path / "outer" / "victim").write_bytes(b"victim")
    (tmp_path / "archives").mkdir()
    return state / "datasets" / "d1" / "source"


def refused(archive: Path, dest: Path, limits: ArchiveLimits = LIMITS,
            match: str | None = None) -> ArchiveError:
    root = dest.parents[4]
    before = snapshot(root)
    with pytest.raises(ArchiveError, match=match) as caught:
        extract_archive(archive, dest, limits)
    assert snapshot(root) == before
    assert not os.path.lexists(dest)
    assert symlinks_below(root) == []
    message = str(caught.value)
    assert str(root) not in message and "/tmp" not in message, message
    return caught.value


def accepted(archive: Path, dest: Path, limits: ArchiveLimits = LIMITS) -> None:
    root = dest.parents[4]
    before = snapshot(root)
    extract_archive(archive, dest, limits)
    inside = os.path.relpath(dest, root)
    after = {p: v for p, v in snapshot(root).items() if p != inside and not p.startswith(inside + os.sep)}
    assert after == {**before, os.path.relpath(dest.parent, root): (stat.S_IFDIR,)}
    assert symlinks_below(root) == []


def tar_of(dest: Path, entries: list[tuple[str, bytes, str | bytes]], name: str = "a.tar") -> Path:
    """entries: (name, type, target or content)."""
    members, data = [], {}
    for member, kind, value in entries:
        if kind == FILE:
            members.append(tar_member(member))
            data[member] = value if isinstance(value, bytes) else value.encode()
        else:
            members.append(tar_member(member, kind, str(value)))
    return tar_with(dest.parents[4] / "archives" / name, members, data)


def zip_of(dest: Path, entries: list[tuple[str, str, str | bytes]], name: str = "a.zip") -> Path:
    """entries: (name, "file" | "symlink" | "fifo", content or target); zip symlinks carry S_IFLNK bits."""
    archive = dest.parents[4] / "archives" / name
    modes = {"file": stat.S_IFREG | 0o644, "symlink": stat.S_IFLNK | 0o777, "fifo": stat.S_IFIFO | 0o644}
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, kind, value in entries:
            info = zipfile.ZipInfo("placeholder")
            info.filename = member
            info.create_system = 3
            info.external_attr = modes[kind] << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, value if isinstance(value, bytes) else value.encode())
    return archive


def chain_tar(dest: Path, *tail: tuple[str, bytes, str | bytes]) -> Path:
    return tar_of(dest, [(n, SYM, t) for n, t in CHAIN] + list(tail))


def chain_zip(dest: Path, *tail: tuple[str, str, str | bytes]) -> Path:
    return zip_of(dest, [(n, "symlink", t) for n, t in CHAIN] + list(tail))


# -- links -------------------------------------------------------------------------------------------------


def test_a_link_to_the_archive_folder_is_refused(dest: Path) -> None:
    refused(tar_of(dest, [("a", SYM, ".")]), dest, match="'a' points to a folder")
    refused(zip_of(dest, [("a", "symlink", ".")]), dest, match="'a' points to a folder")


def test_the_nested_dotdot_chain_writes_nothing_through_it(dest: Path) -> None:
    refused(chain_tar(dest), dest, match="links to folders")
    refused(chain_tar(dest, ("ok.txt", FILE, b"x"), ("u1/u2/u3/secret", HARD, "ok.txt")), dest)
    refused(chain_tar(dest, ("u1/u2/u3/u4/victim", FILE, b"pwned")), dest)
    refused(chain_zip(dest, ("u1/u2/u3/secret", "file", b"pwned")), dest, match="links to folders")
    refused(chain_zip(dest, ("u1/u2/u3/u4/new.txt", "file", b"pwned")), dest)


def test_a_hard_link_through_a_chain_cannot_read_a_file_outside(dest: Path) -> None:
    refused(chain_tar(dest, ("stolen.jpg", HARD, "u1/u2/u3/secret")), dest)
    refused(tar_of(dest, [("stolen.jpg", HARD, "../../secret")]), dest, match="outside")
    refused(zip_of(dest, [("stolen.jpg", "symlink", "../../secret")]), dest, match="outside")


def test_links_to_links_are_followed_inside_the_archive_only(dest: Path) -> None:
    escape = [("l1", SYM, "l2"), ("l2", SYM, "d/l3"), ("d/l3", SYM, "../../../secret")]
    refused(tar_of(dest, escape), dest, match="outside")
    refused(zip_of(dest, [(n, "symlink", t) for n, _, t in escape]), dest, match="outside")
    through_a_folder_link = [("d/f.txt", FILE, b"x"), ("dir", SYM, "d"), ("l", SYM, "dir/f.txt")]
    refused(tar_of(dest, through_a_folder_link), dest, match="'dir' points to a folder|goes through")


@pytest.mark.parametrize("target", ["/etc/passwd", "//etc/passwd", "C:/Windows/win.ini", "..\\..\\secret"])
def test_links_to_absolute_paths_are_refused(dest: Path, target: str) -> None:
    refused(tar_of(dest, [("l", SYM, target)]), dest, match="absolute|outside")
    refused(tar_of(dest, [("h", HARD, target)]), dest, match="absolute|outside")
    refused(zip_of(dest, [("l", "symlink", target)]), dest, match="absolute|outside")


def test_the_absolute_path_of_the_secret_is_refused_too(dest: Path) -> None:
    secret = str(dest.parents[2] / "secret")
    refused(tar_of(dest, [("l", SYM, secret)]), dest, match="absolute")
    refused(zip_of(dest, [("l", "symlink", secret)]), dest, match="absolute")


@pytest.mark.parametrize("entries", [
    [("a", SYM, "b"), ("b", SYM, "a")],
    [("a", SYM, "a")],
    [("h", HARD, "h")],
    [("a", SYM, "b"), ("b", HARD, "a")],
], ids=["pair", "self", "hard-self", "mixed"])
def test_link_loops_are_refused(dest: Path, entries: list) -> None:
    refused(tar_of(dest, entries), dest, match="loop")


def test_zip_link_loops_are_refused(dest: Path) -> None:
    refused(zip_of(dest, [("a", "symlink", "b"), ("b", "symlink", "a")]), dest, match="loop")


def test_dangling_links_and_links_below_files_are_refused(dest: Path) -> None:
    refused(tar_of(dest, [("l", SYM, "nothing.txt")]), dest, match="points to nothing")
    refused(tar_of(dest, [("f", FILE, b"x"), ("l", SYM, "f/x")]), dest, match="through the file")
    refused(tar_of(dest, [("f", FILE, b"x"), ("f/x", FILE, b"y")]), dest, match="below the file")
    refused(tar_of(dest, [("l", SYM, "")]), dest, match="empty")


def test_a_link_bomb_does_not_multiply_the_size(dest: Path) -> None:
    entries = [("big.bin", FILE, b"\0" * (1 << 20))] + [(f"l{i}", HARD, "big.bin") for i in range(3)]
    refused(tar_of(dest, entries), dest, match="expands to more than 2 MB")


# -- names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/../../x", "a/../../../secret", "/abs/x", "C:/x", "C:\\x",
                                  "..\\x", "a\x1bb.txt", "a\nb.txt", "x\x7f", "a\x00/../../../victim"])
def test_zip_slip_absolute_and_malformed_names_are_refused(dest: Path, name: str) -> None:
    refused(zip_with(dest.parents[4] / "archives" / "n.zip", {"ok.txt": b"ok", name: b"pwned"}), dest)


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/abs/x", "C:/x", "a\\b", "a\x1bb.txt", "x\x7f"])
def test_tar_slip_absolute_and_malformed_names_are_refused(dest: Path, name: str) -> None:
    refused(tar_of(dest, [("ok.txt", FILE, b"ok"), (name, FILE, b"pwned")]), dest)


def test_a_name_used_twice_is_refused_without_showing_a_path(dest: Path) -> None:
    error = refused(tar_of(dest, [("images", FILE, b"x"), ("images", SYM, "x")]), dest, match="twice")
    assert "Errno" not in str(error)


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_device_files_and_fifos_are_refused(dest: Path, kind: bytes) -> None:
    refused(tar_of(dest, [("ok.txt", FILE, b"ok"), ("dev", kind, "")]), dest, match="device file or fifo")


def test_a_zip_fifo_is_refused(dest: Path) -> None:
    refused(zip_of(dest, [("fifo", "fifo", b"")]), dest, match="device file or fifo")


# -- sizes and counts --------------------------------------------------------------------------------------


def _patch_central_size(archive: Path, claimed: int) -> None:
    """Make the central directory claim `claimed` uncompressed bytes for the (only) member."""
    data = bytearray(archive.read_bytes())
    at = data.rindex(b"PK\x01\x02")
    data[at + 24:at + 28] = struct.pack("<I", claimed)
    archive.write_bytes(bytes(data))


def test_a_zip_that_lies_about_its_size_is_refused(dest: Path) -> None:
    archive = zip_with(dest.parents[4] / "archives" / "lie.zip", {"a.bin": b"\0" * (3 << 20)})
    _patch_central_size(archive, 100)
    refused(archive, dest, match="damaged")
    _patch_central_size(archive, 1 << 20)
    refused(archive, dest, match="damaged")


def test_highly_compressible_members_over_the_limit_are_refused(dest: Path) -> None:
    archives = dest.parents[4] / "archives"
    refused(zip_with(archives / "bomb.zip", {"a.bin": b"\0" * (3 << 20)}), dest, match="expands")
    folder = archives / "bomb"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"\0" * (3 << 20))
    for mode, name in (("w:gz", "b.tgz"), ("w:bz2", "b.tbz"), ("w:xz", "b.txz")):
        refused(tar_folder(folder, archives / name, mode), dest, match="expands")


def test_a_tar_header_claiming_a_terabyte_is_refused_before_decompressing_it(dest: Path) -> None:
    info = tarfile.TarInfo("huge.bin")
    info.size = 1 << 40
    archive = dest.parents[4] / "archives" / "huge.tgz"
    archive.write_bytes(gzip.compress(info.tobuf(tarfile.GNU_FORMAT) + b"\0" * 4096))
    refused(archive, dest, match="expands")


def test_a_giant_long_name_record_is_refused_before_it_is_read(dest: Path) -> None:
    info = tarfile.TarInfo("././@LongLink")
    info.type = tarfile.GNUTYPE_LONGNAME
    info.size = 20 << 20
    archive = dest.parents[4] / "archives" / "longname.tgz"
    archive.write_bytes(gzip.compress(info.tobuf(tarfile.GNU_FORMAT) + b"a" * (20 << 20), compresslevel=1))
    refused(archive, dest, match="too large|expands|damaged")


def test_three_hundred_thousand_members_are_refused_by_the_count(dest: Path) -> None:
    header = tar_member("same.txt").tobuf(tarfile.GNU_FORMAT)
    block = header * 1000
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # a gzip stream, built without 150 MB in memory
    parts = [packer.compress(block) for _ in range(300)]
    archive = dest.parents[4] / "archives" / "many.tgz"
    archive.write_bytes(b"".join(parts) + packer.compress(b"\0" * 1024) + packer.flush())
    limits = ArchiveLimits(max_archive_bytes=10 << 20, max_total_bytes=2 << 20, max_members=1000)
    refused(archive, dest, limits, match="at most 1000")


def test_a_zip_claiming_three_hundred_thousand_members_is_refused_from_its_end_record(dest: Path) -> None:
    archive = zip_with(dest.parents[4] / "archives" / "many.zip", {"a.txt": b"a"})
    data = bytearray(archive.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    data[end + 8:end + 12] = struct.pack("<HH", 65535, 65535)
    archive.write_bytes(bytes(data))
    limits = ArchiveLimits(max_archive_bytes=1 << 20, max_total_bytes=1 << 20, max_members=1000)
    refused(archive, dest, limits, match="at most 1000")


# -- damaged archives --------------------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    make_yolo_yaml(tmp_path / "ds", 2, 1)
    return tmp_path / "ds"


@pytest.mark.parametrize("kind", ["zip", "w:gz", "w:bz2", "w:xz", "w"])
def test_truncated_archives_are_refused(dest: Path, dataset: Path, kind: str) -> None:
    archives = dest.parents[4] / "archives"
    if kind == "zip":
        archive = zip_folder(dataset, archives / "full.zip")
    else:
        archive = tar_folder(dataset, archives / "full.tar", kind)
    data = archive.read_bytes()
    cut = archives / "half"
    cut.write_bytes(data[:len(data) // 2])
    refused(cut, dest)


def test_bytes_flipped_in_a_zip_are_refused(dest: Path, dataset: Path) -> None:
    archive = zip_folder(dataset, dest.parents[4] / "archives" / "full.zip")
    data = bytearray(archive.read_bytes())
    size, name, extra = struct.unpack("<I4xHH", data[18:30])  # the first member's local header
    data[30 + name + extra + size // 2] ^= 0xFF  # in the middle of its data
    archive.write_bytes(bytes(data))
    refused(archive, dest, match="damaged")


def test_a_zip_whose_local_name_differs_from_its_directory_name_is_refused(dest: Path) -> None:
    archive = zip_with(dest.parents[4] / "archives" / "names.zip", {"okay.txt": b"x"})
    data = bytearray(archive.read_bytes())
    data[30:38] = b"../x.txt"  # the local header's name; the central directory still says okay.txt
    archive.write_bytes(bytes(data))
    refused(archive, dest, match="damaged")


def test_os_errors_are_answered_without_server_paths(dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tar_of(dest, [("a.txt", FILE, b"a")])

    def fail(src: str, dst: str) -> None:
        raise FileExistsError(17, "File exists", src, None, dst)

    monkeypatch.setattr(os, "rename", fail)
    error = refused(archive, dest)
    assert "File exists" in str(error)


def test_a_full_destination_is_refused(dest: Path) -> None:
    dest.mkdir(parents=True)
    (dest / "old.txt").write_bytes(b"old")
    archive = tar_of(dest, [("a.txt", FILE, b"a")])
    before = snapshot(dest.parents[4])
    with pytest.raises(ArchiveError, match="not empty") as caught:
        extract_archive(archive, dest, LIMITS)
    assert snapshot(dest.parents[4]) == before and str(dest) not in str(caught.value)


# -- what is accepted --------------------------------------------------------------------------------------


def test_tar_links_to_files_become_copies(dest: Path) -> None:
    entries = [("d/img.jpg", FILE, b"jpeg"), ("d/alias.jpg", SYM, "img.jpg"),
               ("e/up.jpg", SYM, "../d/alias.jpg"),
               ("hard.jpg", HARD, "d/img.jpg"), ("hard2.jpg", HARD, "e/up.jpg"), ("f/", tarfile.DIRTYPE, "")]
    accepted(tar_of(dest, entries), dest)
    for name in ("d/img.jpg", "d/alias.jpg", "e/up.jpg", "hard.jpg", "hard2.jpg"):
        assert not (dest / name).is_symlink() and (dest / name).read_bytes() == b"jpeg"
    assert (dest / "f").is_dir()
    assert oct(dest.stat().st_mode & 0o777) == "0o755"


def test_zip_symlinks_to_files_become_copies(dest: Path) -> None:
    entries = [("d/img.jpg", "file", b"jpeg"), ("alias.jpg", "symlink", "d/img.jpg"),
               ("d/again.jpg", "symlink", "./../alias.jpg")]
    accepted(zip_of(dest, entries), dest)
    assert (dest / "alias.jpg").read_bytes() == (dest / "d" / "again.jpg").read_bytes() == b"jpeg"


def test_an_existing_empty_destination_is_filled(dest: Path) -> None:
    dest.mkdir(parents=True)
    extract_archive(tar_of(dest, [("a.txt", FILE, b"a")]), dest, LIMITS)
    assert (dest / "a.txt").read_bytes() == b"a"
    assert [p.name for p in dest.parent.iterdir()] == ["source"]


def test_every_compression_is_read(dest: Path, dataset: Path) -> None:
    archives = dest.parents[4] / "archives"
    plain = tar_folder(dataset, archives / "p.tar", "w").read_bytes()
    for i, packed in enumerate((gzip.compress(plain), bz2.compress(plain), lzma.compress(plain), plain)):
        (archives / f"{i}.bin").write_bytes(packed)
        out = dest.parent / f"out{i}"
        assert extract_archive(archives / f"{i}.bin", out, LIMITS).files == 7
