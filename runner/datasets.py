"""A job's dataset on this runner's host: read in place when it is this host's own (the gateway's datasets
folder is ours: `trainforge up`), otherwise fetched by its content hash into the host's dataset cache
(`shared.dataset_archive.DatasetCache`) from the artifact store (`nats`) or from the gateway over HTTP with the
runner's own credential."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx

from shared.artifacts import ArtifactStore, NatsObjectStore
from shared.dataset_archive import DatasetArchiveError, DatasetCache, Download, store_key
from shared.settings import Settings

log = logging.getLogger(__name__)
HTTP_TIMEOUT = httpx.Timeout(30.0, read=120.0)


def is_local(settings: Settings, data: str) -> bool:
    """Whether `data` (a job's dataset path) can be used in place here: it exists and lies in this runner's
    own datasets folder (the gateway's when both share a state folder)."""
    path = Path(data)
    return path.is_absolute() and path.exists() and path.resolve().is_relative_to(settings.datasets_dir)


def cache_of(settings: Settings) -> DatasetCache:
    return DatasetCache(settings.dataset_cache_dir, int(settings.dataset_cache_gb * 1024**3))


def sources(settings: Settings, store: ArtifactStore, sha256: str) -> list[tuple[str, Download]]:
    """Where this runner may fetch the archive `sha256` from, in order."""
    found: list[tuple[str, Download]] = []
    if isinstance(store, NatsObjectStore):
        uri = store.uri_for(store_key(sha256))

        async def from_store(dest: Path) -> None:
            await store.fetch(uri, dest)

        found.append((f"artifact store {uri}", from_store))
    if settings.runner_gateway_url:
        url = f"{settings.runner_gateway_url.rstrip('/')}/api/v1/fleet/datasets/{sha256}"

        async def from_gateway(dest: Path) -> None:
            await download_from_gateway(settings, url, dest)

        found.append((f"gateway {url}", from_gateway))
    return found


async def download_from_gateway(settings: Settings, url: str, dest: Path) -> None:
    headers = {}
    if settings.runner_gateway_token_file is not None:
        token = (await anyio.Path(settings.runner_gateway_token_file).read_text()).strip()
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client, client.stream("GET", url, headers=headers) as reply:
        if reply.status_code != 200:
            body = (await reply.aread())[:300].decode(errors="replace")
            raise DatasetArchiveError(f"HTTP {reply.status_code}: {body}")
        async with await anyio.open_file(dest, "wb") as out:
            async for chunk in reply.aiter_bytes(1 << 20):
                await out.write(chunk)


@contextlib.asynccontextmanager
async def dataset_data(settings: Settings, store: ArtifactStore, data: str, sha256: str | None) -> AsyncIterator[str]:
    """What Ultralytics' `data=` gets on this host for a job's `data` and `dataset_sha256`; a cached copy stays
    pinned (not evicted from the host's cache) until the block ends."""
    if sha256 is None or is_local(settings, data):
        yield data
        return
    async with cache_of(settings).using(sha256, sources(settings, store, sha256)) as found:
        log.info("dataset %s: using the cached copy %s", sha256[:12], found)
        yield str(found)
