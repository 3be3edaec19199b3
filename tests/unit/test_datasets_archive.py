import tarfile
from pathlib import Path

import pytest

from gateway.datasets.archive import ArchiveLimits, extract_archive
from gateway.datasets.errors import ArchiveError
from tests.dataset_factories import make_yolo_yaml, tar_folder, tar_member, tar_with, zip_folder, zip_with

LIMITS = ArchiveLimits(max_archive_bytes=10 << 20, max_total_bytes=20 << 20, max_members=1000)


def test_zip_and_tar_gz_archives_extract(tmp_path: Path) -> None:
    make_yolo_yaml(tmp_path / "ds", 2, 1)
    for archive in (zip_folder(tmp_path / "ds", tmp_path / "a.zip"), tar_folder(tmp_path / "ds", tmp_path / "a.tgz")):
        dest = tmp_path / archive.suffix.lstrip(".")
        result = extract_archive(archive, dest, LIMITS)
        assert result.files == 7
        assert len(list(dest.rglob("*.jpg"))) == 3


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/abs/evil.txt"])
def test_zip_members_that_leave_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    archive = zip_with(tmp_path / "a.zip", {"ok.txt": b"fine", name: b"evil"})
    with pytest.raises(ArchiveError, match="outside|absolute"):
        extract_archive(archive, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("target", ["../../etc", "/etc", "sub/../../x"])
def test_tar_symlinks_that_leave_the_folder_are_refused(tmp_path: Path, target: str) -> None:
    archive = tar_with(tmp_path / "a.tar", [tar_member("link", tarfile.SYMTYPE, target)])
    with pytest.raises(ArchiveError, match="outside|absolute"):
        extract_archive(archive, tmp_path / "out", LIMITS)


def test_a_symlink_chain_escaping_through_another_link_is_refused(tmp_path: Path) -> None:
    members = [tar_member("here", tarfile.SYMTYPE, "."), tar_member("here/up", tarfile.SYMTYPE, "../x")]
    with pytest.raises(ArchiveError, match="outside|links to folders"):
        extract_archive(tar_with(tmp_path / "a.tar", members), tmp_path / "out", LIMITS)


def test_links_that_stay_inside_become_copies(tmp_path: Path) -> None:
    members = [tar_member("d/file.txt"), tar_member("d/alias.txt", tarfile.SYMTYPE, "file.txt"),
               tar_member("copy.txt", tarfile.LNKTYPE, "d/file.txt")]
    archive = tar_with(tmp_path / "a.tar", members, {"d/file.txt": b"hello"})
    assert extract_archive(archive, tmp_path / "out", LIMITS).files == 3
    alias = tmp_path / "out" / "d" / "alias.txt"
    assert not alias.is_symlink() and alias.read_bytes() == b"hello"
    assert (tmp_path / "out" / "copy.txt").read_bytes() == b"hello"


def test_hard_links_to_files_outside_are_refused(tmp_path: Path) -> None:
    archive = tar_with(tmp_path / "a.tar", [tar_member("h", tarfile.LNKTYPE, "/etc/passwd")])
    with pytest.raises(ArchiveError, match="absolute"):
        extract_archive(archive, tmp_path / "out", LIMITS)


def test_device_files_and_absolute_tar_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="device"):
        extract_archive(tar_with(tmp_path / "a.tar", [tar_member("dev", tarfile.CHRTYPE)]), tmp_path / "o1", LIMITS)
    archive = tar_with(tmp_path / "b.tar", [tar_member("/tmp/evil")], {"/tmp/evil": b"x"})
    with pytest.raises(ArchiveError, match="absolute"):
        extract_archive(archive, tmp_path / "o2", LIMITS)


def test_oversize_archives_and_too_many_members_are_refused(tmp_path: Path) -> None:
    big = zip_with(tmp_path / "big.zip", {"a.bin": b"\0" * (3 << 20)})  # compresses to a few KB
    with pytest.raises(ArchiveError, match="expands to more than 2 MB"):
        extract_archive(big, tmp_path / "o1", ArchiveLimits(max_archive_bytes=1 << 20, max_total_bytes=2 << 20,
                                                             max_members=10))
    with pytest.raises(ArchiveError, match="at most 1 MB"):
        extract_archive(big, tmp_path / "o2", ArchiveLimits(max_archive_bytes=1 << 10, max_total_bytes=2 << 20,
                                                             max_members=10))
    many = zip_with(tmp_path / "many.zip", {f"f{i}.txt": b"x" for i in range(11)})
    with pytest.raises(ArchiveError, match="at most 10"):
        extract_archive(many, tmp_path / "o3", ArchiveLimits(max_archive_bytes=1 << 20, max_total_bytes=2 << 20,
                                                              max_members=10))


def test_a_file_that_is_no_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"not an archive at all")
    with pytest.raises(ArchiveError, match="not a zip or tar"):
        extract_archive(tmp_path / "x.zip", tmp_path / "out", LIMITS)
