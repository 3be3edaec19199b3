"""Folders in the artifact store: a docker-backend checkpoint (`checkpoint-N/`, a folder the training script
wrote) travels as one tar, so a runner on another host can resume from it (`TRAINFORGE_ARTIFACT_STORE=nats`).

    uri = await put_folder(store, "runs/<run>/checkpoints/checkpoint-4.tar", folder)
    path = await fetch_folder(store, uri, into)   # -> into/checkpoint-4/
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

import anyio

from shared.artifacts import ArtifactError, ArtifactStore


def _tar(folder: Path, out: Path) -> None:
    with tarfile.open(out, "w") as tar:
        tar.add(folder, arcname=folder.name)


async def put_folder(store: ArtifactStore, key: str, folder: Path) -> str:
    """Store `folder` (with its name) as a tar under `key`; its URI."""
    with tempfile.TemporaryDirectory(prefix=".tf-upload-", dir=folder.parent) as scratch:
        archive = Path(scratch) / "folder.tar"
        await anyio.to_thread.run_sync(_tar, folder, archive)
        return await store.put_file(key, archive)


def _untar(archive: Path, into: Path, scratch: Path) -> Path:
    with tarfile.open(archive) as tar:
        names = {member.name.split("/", 1)[0] for member in tar.getmembers()}
        if len(names) != 1:
            raise ArtifactError(f"a folder artifact holds one folder, this one {sorted(names)}")
        tar.extractall(scratch, filter="data")
    name = names.pop()
    final = into / name
    if final.exists():
        shutil.rmtree(final)
    (scratch / name).rename(final)
    return final


async def fetch_folder(store: ArtifactStore, uri: str, into: Path) -> Path:
    """The folder stored at `uri`, unpacked (atomically) into `into`; its path."""
    await anyio.to_thread.run_sync(lambda: into.mkdir(parents=True, exist_ok=True))
    with tempfile.TemporaryDirectory(prefix=".tf-fetch-", dir=into) as scratch:
        archive = await store.fetch(uri, Path(scratch) / "folder.tar")
        return await anyio.to_thread.run_sync(_untar, archive, into, Path(scratch) / "unpacked")
