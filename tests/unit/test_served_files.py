"""Files served from disk stay inside the folder they are served from and are never symlinks
(`gateway.files`, the dataset image route, artifact and weights downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.datasets import prepare_from_archive
from gateway.db.models import Dataset
from gateway.errors import NotFound
from gateway.files import servable_artifact, servable_file
from gateway.services.datasets import image_path
from shared.artifacts import LocalArtifactStore
from shared.settings import Settings
from tests.dataset_factories import make_yolo_yaml, zip_folder


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "cli-token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"admin-token")
    return path


def test_only_regular_files_really_inside_the_root_are_servable(tmp_path: Path, secret: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(b"a")
    os.symlink(secret, root / "out.jpg")
    os.symlink(root / "sub" / "a.jpg", root / "in.jpg")
    os.symlink(secret.parent, root / "dirlink")
    assert servable_file(root / "sub" / "a.jpg", root) == (root / "sub" / "a.jpg").resolve()
    assert servable_file(root / "sub" / ".." / "sub" / "a.jpg", root) is not None
    for refused in (root / "out.jpg", root / "in.jpg", root / "dirlink" / "cli-token", root / "sub", root,
                    root / "missing.jpg", secret, root / ".." / "state" / "cli-token"):
        assert servable_file(refused, root) is None, refused


def test_a_planted_link_in_the_artifact_store_is_not_served(tmp_path: Path, secret: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    (store.root / "runs" / "r1").mkdir(parents=True)
    (store.root / "runs" / "r1" / "best.pt").write_bytes(b"weights")
    os.symlink(secret, store.root / "runs" / "r1" / "last.pt")
    assert servable_artifact(store, store.uri_for("runs/r1/best.pt"))
    assert not servable_artifact(store, store.uri_for("runs/r1/last.pt"))
    assert not servable_artifact(store, secret.as_uri())
    assert not servable_artifact(store, "s3://bucket/x")
    assert servable_artifact(object(), "nats://bucket/x")  # type: ignore[arg-type]


@pytest.fixture
def uploaded(tmp_path: Path) -> Dataset:
    make_yolo_yaml(tmp_path / "ds", 2, 1)
    settings = Settings(state_dir=tmp_path / "state")
    prepared = prepare_from_archive(zip_folder(tmp_path / "ds", tmp_path / "up.zip"), settings, "d1")
    return Dataset(id="d1", name="d1", source="upload", root_path=prepared.root, status="ready")


def _entry(row: Dataset, index: int) -> Path:
    line = (Path(row.root_path or "") / "index" / "train.txt").read_text().splitlines()[index]
    return Path(row.root_path or "") / line.split("\t")[0]


async def test_dataset_images_are_served_from_the_source_folder(uploaded: Dataset) -> None:
    served = await image_path(uploaded, "train", 0)
    assert served.is_relative_to(Path(uploaded.root_path or "").parent / "source")
    with pytest.raises(NotFound):
        await image_path(uploaded, "train", 99)


async def test_a_link_planted_in_the_prepared_folder_is_a_missing_image(
    uploaded: Dataset, secret: Path
) -> None:
    entry = _entry(uploaded, 0)
    entry.unlink()
    os.symlink(secret, entry)
    with pytest.raises(NotFound):
        await image_path(uploaded, "train", 0)
    entry.unlink()
    entry.write_bytes(b"a regular file in the prepared folder is served")
    assert await image_path(uploaded, "train", 0) == entry


async def test_a_link_planted_in_the_source_folder_is_a_missing_image(
    uploaded: Dataset, secret: Path
) -> None:
    image = Path(os.readlink(_entry(uploaded, 1)))
    image.unlink()
    os.symlink(secret, image)
    with pytest.raises(NotFound):
        await image_path(uploaded, "train", 1)
    image.unlink()
    os.symlink(image.parent / "elsewhere.jpg", image)  # inside, but a link all the same
    (image.parent / "elsewhere.jpg").write_bytes(b"x")
    with pytest.raises(NotFound):
        await image_path(uploaded, "train", 1)
