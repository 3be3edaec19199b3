"""Content-addressed dataset archives (`shared.dataset_archive`): packing is deterministic; the runner host's
cache verifies what it downloads, leaves nothing behind a failed or corrupt download, falls back to the next
source, and stays within its bound."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from shared.dataset_archive import DatasetArchiveError, DatasetCache, pack


def prepared(root: Path, images: int = 3, payload: bytes = b"x") -> Path:
    """A prepared layout as the gateway makes it: images linked to a source folder, labels, a data YAML with
    an absolute path."""
    source = root / "source"
    source.mkdir(parents=True)
    out = root / "prepared"
    for split in ("train", "val"):
        (out / "yolo/images" / split).mkdir(parents=True)
        (out / "yolo/labels" / split).mkdir(parents=True)
        for i in range(images):
            image = source / f"{split}{i}.jpg"
            image.write_bytes(payload * (100 + i))
            os.symlink(image, out / "yolo/images" / split / image.name)
            (out / "yolo/labels" / split / f"{split}{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (out / "index").mkdir()
    (out / "data.yaml").write_text(yaml.safe_dump({"path": str(out / "yolo"), "train": "images/train",
                                                   "val": "images/val", "nc": 1, "names": {0: "a"}}))
    return out


def test_packing_the_same_content_twice_gives_the_same_bytes_and_hash(tmp_path: Path) -> None:
    one = pack(prepared(tmp_path / "a"), tmp_path / "a.tar")
    other = pack(prepared(tmp_path / "b"), tmp_path / "b.tar")  # other paths, other times, same content
    assert one == other and one[0] == hashlib.sha256((tmp_path / "a.tar").read_bytes()).hexdigest()
    changed = pack(prepared(tmp_path / "c", payload=b"y"), tmp_path / "c.tar")
    assert changed[0] != one[0]


def copier(path: Path):  # noqa: ANN201
    async def download(dest: Path) -> None:
        dest.write_bytes(path.read_bytes())

    return download


async def test_the_cache_unpacks_a_verified_archive_with_a_local_data_yaml_and_reuses_it(tmp_path: Path) -> None:
    sha, _ = pack(prepared(tmp_path / "g"), tmp_path / "d.tar")
    cache = DatasetCache(tmp_path / "cache", 10**9)
    calls = []

    async def counted(dest: Path) -> None:
        calls.append(dest)
        await copier(tmp_path / "d.tar")(dest)

    data = await cache.ensure(sha, [("store", counted)])
    assert data == cache.folder(sha) / "data.yaml"
    assert yaml.safe_load(data.read_text())["path"] == str((cache.folder(sha) / "yolo").resolve())
    images = sorted(p.name for p in (cache.folder(sha) / "yolo/images/train").iterdir())
    assert images == ["train0.jpg", "train1.jpg", "train2.jpg"]
    assert not (cache.folder(sha) / "yolo/images/train/train0.jpg").is_symlink()
    assert await cache.ensure(sha, [("store", counted)]) == data and len(calls) == 1


async def test_a_corrupt_or_interrupted_download_leaves_nothing_and_the_next_source_is_tried(tmp_path: Path) -> None:
    sha, _ = pack(prepared(tmp_path / "g"), tmp_path / "d.tar")
    cache = DatasetCache(tmp_path / "cache", 10**9)

    async def corrupt(dest: Path) -> None:
        dest.write_bytes((tmp_path / "d.tar").read_bytes()[:-1] + b"!")

    async def interrupted(dest: Path) -> None:
        dest.write_bytes((tmp_path / "d.tar").read_bytes()[:1000])
        raise ConnectionResetError("link down")

    with pytest.raises(DatasetArchiveError) as failed:
        await cache.ensure(sha, [("store", interrupted), ("gateway", corrupt)])
    assert "store: ConnectionResetError" in str(failed.value) and "gateway: DatasetArchiveError" in str(failed.value)
    assert cache.data_of(sha) is None and not cache.folder(sha).exists()
    assert list((cache.root / ".partial").iterdir()) == []
    assert await cache.ensure(sha, [("store", interrupted), ("gateway", copier(tmp_path / "d.tar"))])


async def test_the_cache_drops_least_recently_used_datasets_beyond_its_bound(tmp_path: Path) -> None:
    archives = []
    for n in range(3):
        path = tmp_path / f"{n}.tar"
        archives.append((pack(prepared(tmp_path / f"g{n}", payload=bytes([65 + n]) * 40), path)[0], path))
    size = sum(p.stat().st_size for p in (tmp_path / "g0/source").iterdir()) + 12 * 20  # images + labels
    cache = DatasetCache(tmp_path / "cache", int(size * 2.5))
    for sha, path in archives[:2]:
        await cache.ensure(sha, [("store", copier(path))])
    await cache.ensure(archives[0][0], [])  # used again: the second is now the least recent
    await cache.ensure(*[archives[2][0]], [("store", copier(archives[2][1]))])
    present = {sha for sha, _ in archives if cache.data_of(sha) is not None}
    assert present == {archives[0][0], archives[2][0]}


async def test_a_dataset_a_job_uses_is_not_evicted_until_the_job_lets_it_go(tmp_path: Path) -> None:
    archives = []
    for n in range(2):
        path = tmp_path / f"{n}.tar"
        archives.append((pack(prepared(tmp_path / f"g{n}", payload=bytes([65 + n]) * 40), path)[0], path))
    (first, first_tar), (second, second_tar) = archives
    size = sum(p.stat().st_size for p in (tmp_path / "g0/source").iterdir()) + 12 * 20
    cache = DatasetCache(tmp_path / "cache", int(size * 1.5))  # room for one
    async with cache.using(first, [("store", copier(first_tar))]) as data:
        assert cache.pinned(first)
        # another job's dataset arrives: the first is the least recently used, but in use
        async with cache.using(second, [("store", copier(second_tar))]):
            assert data.is_file() and cache.data_of(first) == data
        assert cache.data_of(second) is not None  # just used: kept, the bound is exceeded for now
    assert not cache.pinned(first)
    third = tmp_path / "2.tar"
    sha3 = pack(prepared(tmp_path / "g2", payload=b"C" * 40), third)[0]
    await cache.ensure(sha3, [("store", copier(third))])  # now the unpinned older ones go
    assert cache.data_of(first) is None and cache.data_of(sha3) is not None


async def test_a_hash_that_is_not_sha256_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetArchiveError):
        await DatasetCache(tmp_path, 1).ensure("../../etc", [])
