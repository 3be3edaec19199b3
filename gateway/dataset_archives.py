"""Datasets for runners on other hosts: each dataset a run uses, packed once into its content-addressed archive
(`shared.dataset_archive.pack`), put into the artifact store (`nats`) and served to runners over HTTP.

    <datasets_dir>/.archives/<sha256>.tar    the archive (named by its content hash)
    <datasets_dir>/.archives/folders/<sha1 of the folder's path>.json  {"sha256", "size"}: which archive a
                                             prepared folder (a dataset, or one of its versions) packed to

Only when `settings.dataset_archives` (artifact store `nats`, or runner credentials configured): `trainforge
up` gives runners the dataset's path, zero-copy. A prepared folder (version) never changes, so its archive is made
once; each version of a dataset has its own folder, hence its own archive.
Runners authenticate with their own credential (`runner_tokens_file` holds the SHA-256 of each accepted one),
never a user's token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats.errors

from gateway.errors import RETRY_AFTER_S, NotFound, Unauthorized, Unavailable
from shared.artifacts import ArtifactError, ArtifactNotFound, artifact_store
from shared.dataset_archive import DatasetArchiveError, check_sha256, pack, store_key
from shared.settings import Settings

log = logging.getLogger(__name__)
_locks: dict[str, asyncio.Lock] = {}


class ArchiveInfo(msgspec.Struct, frozen=True):
    sha256: str
    size: int


def archives_dir(settings: Settings) -> Path:
    return settings.datasets_dir / ".archives"


def archive_path(settings: Settings, sha256: str) -> Path:
    return archives_dir(settings) / f"{check_sha256(sha256)}.tar"


def _folder_key(prepared: Path) -> str:
    return hashlib.sha1(str(prepared).encode(), usedforsecurity=False).hexdigest()


def _packed(settings: Settings, dataset_id: str, prepared: Path) -> ArchiveInfo:
    info_file = archives_dir(settings) / "folders" / f"{_folder_key(prepared)}.json"
    try:
        info = msgspec.json.decode(info_file.read_bytes(), type=ArchiveInfo)
        if archive_path(settings, info.sha256).is_file():
            return info
    except (OSError, msgspec.DecodeError, DatasetArchiveError):
        pass
    scratch = archives_dir(settings) / f".{dataset_id}-{_folder_key(prepared)}.tar"
    sha256, size = pack(prepared, scratch)
    scratch.replace(archive_path(settings, sha256))
    info = ArchiveInfo(sha256=sha256, size=size)
    info_file.parent.mkdir(parents=True, exist_ok=True)
    info_file.write_bytes(msgspec.json.encode(info))
    return info


async def ensure_archive(settings: Settings, js: Any, dataset_id: str, data: str) -> ArchiveInfo:
    """The archive of the prepared dataset `dataset_id` (whose `data=` is `data`), packed if not yet, and in the
    artifact store when that is `nats`."""
    prepared = Path(data).parent
    lock = _locks.setdefault(str(prepared), asyncio.Lock())
    async with lock:
        info = await anyio.to_thread.run_sync(_packed, settings, dataset_id, prepared)
        if settings.artifact_store == "nats":
            store = artifact_store(settings, js)
            uri = store.uri_for(store_key(info.sha256))  # type: ignore[attr-defined]
            try:
                try:
                    await store.stat(uri)
                except ArtifactNotFound:
                    await store.put_file(store_key(info.sha256), archive_path(settings, info.sha256))
                    log.info("dataset %s: archive %s (%d bytes) put into the artifact store", dataset_id,
                             info.sha256[:12], info.size)
            except (ArtifactError, nats.errors.Error, OSError, TimeoutError) as exc:
                raise Unavailable(f"the dataset cannot be put into the artifact store now ({type(exc).__name__}); "
                                  "try again shortly", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    return info


def _accepted(settings: Settings) -> set[str]:
    if settings.runner_tokens_file is None:
        return set()
    try:
        text = Path(settings.runner_tokens_file).read_text()
    except OSError:
        log.warning("runner_tokens_file %s is unreadable: no runner credential is accepted",
                    settings.runner_tokens_file)
        return set()
    return {line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#")}


def check_runner(settings: Settings, authorization: str | None) -> None:
    """Unauthorized unless `authorization` is `Bearer <a runner credential>` (one whose SHA-256 is in
    `runner_tokens_file`)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send `Authorization: Bearer <runner credential>` (runner/gateway-token)")
    sent = hashlib.sha256(token.strip().encode()).hexdigest()
    if not any(hmac.compare_digest(sent, known) for known in _accepted(settings)):
        raise Unauthorized("this runner credential is not accepted (runner_tokens_file)")


def served_archive(settings: Settings, sha256: str) -> Path:
    try:
        path = archive_path(settings, sha256)
    except DatasetArchiveError:
        raise NotFound(f"no dataset archive {sha256!r}") from None
    if not path.is_file():
        raise NotFound(f"no dataset archive {sha256}")
    return path
