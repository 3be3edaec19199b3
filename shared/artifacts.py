"""Artifact storage: files a run produces (weights, checkpoints, plots, exports) under a key, named by a URI.

Two stores:
- `LocalArtifactStore`: a folder (`settings.artifacts_dir`); URIs `file:///<abs path>` (also reads `local:<key>`).
  Enough when the gateway and the runners share a host or a file system.
- `NatsObjectStore`: a JetStream object store bucket; URIs `nats-os://<bucket>/<key>`, so a runner on another
  host can fetch weights to resume or validate. A call the bus cannot answer for a moment (a lost node, a leader
  moving) is retried for up to `retry_s`; then the bus error is raised as it is (an outage, not a bad artifact).

Keys are relative, `/`-separated, of letters, digits and `-_=.` (the object-store key alphabet); `..` is refused.
All methods are coroutines; ranged reads stream chunks (`open(uri, start, end)`).
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
import re
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import anyio

from shared import names as _names
from shared.bus import TRANSIENT_BUS_ERRORS
from shared.settings import Settings
from shared.subjects import Subjects

log = logging.getLogger(__name__)
T = TypeVar("T")

STORE_RETRY_S = 60.0
"""How long a `NatsObjectStore` call goes on retrying through transient bus errors."""

KEY_RE = re.compile(_names.whole(r"[-_=.A-Za-z0-9]+(/[-_=.A-Za-z0-9]+)*"))
CHUNK = 256 * 1024


class ArtifactError(Exception):
    """An artifact cannot be stored or read."""


class ArtifactNotFound(ArtifactError):
    """No artifact at this URI."""


@dataclass(frozen=True)
class ArtifactInfo:
    uri: str
    size: int
    media_type: str | None = None


def check_key(key: str) -> str:
    if not KEY_RE.match(key) or any(part in {".", ".."} for part in key.split("/")) or len(key) > 1024:
        raise ArtifactError(f"invalid artifact key {key!r}")
    return key


MEDIA_TYPES = {".pt": "application/octet-stream", ".yaml": "application/yaml", ".onnx": "application/octet-stream"}


def media_type(name: str) -> str | None:
    return MEDIA_TYPES.get(Path(name).suffix.lower()) or mimetypes.guess_type(name)[0]


@runtime_checkable
class ArtifactStore(Protocol):
    def owns(self, uri: str) -> bool:
        """Whether `uri` names an artifact of this store."""
        ...

    async def put_file(self, key: str, path: Path) -> str:
        """Store the file at `path` under `key` (replacing what was there); returns its URI."""
        ...

    async def fetch(self, uri: str, dest: Path) -> Path:
        """Copy the artifact to `dest` (written atomically); returns `dest`."""
        ...

    async def stat(self, uri: str) -> ArtifactInfo: ...

    def open(self, uri: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes `[start, end)` of the artifact (to its end when `end` is None), in chunks."""
        ...

    async def delete(self, uri: str) -> None:
        """Remove the artifact; no error if it is already gone."""
        ...


# -- local file system ----------------------------------------------------------------------------------


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def uri_for(self, key: str) -> str:
        return (self.root / check_key(key)).as_uri()

    def owns(self, uri: str) -> bool:
        try:
            self.path_of(uri)
        except ArtifactError:
            return False
        return True

    def path_of(self, uri: str) -> Path:
        """The file behind a `file:` or `local:` URI, confined to the store's root."""
        parsed = urllib.parse.urlsplit(uri)
        if parsed.scheme == "local":
            path = self.root / check_key(urllib.parse.unquote(parsed.path).lstrip("/"))
        elif parsed.scheme == "file" and parsed.netloc in {"", "localhost"}:
            path = Path(urllib.parse.unquote(parsed.path))
        else:
            raise ArtifactError(f"not a local artifact URI: {uri!r}")
        path = path.resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ArtifactError(f"artifact URI {uri!r} is outside the artifact store")
        return path

    async def put_file(self, key: str, path: Path) -> str:
        target = self.root / check_key(key)
        await anyio.to_thread.run_sync(_copy_atomic, Path(path), target)
        return target.as_uri()

    async def fetch(self, uri: str, dest: Path) -> Path:
        source = self.path_of(uri)
        if not source.is_file():
            raise ArtifactNotFound(uri)
        await anyio.to_thread.run_sync(_copy_atomic, source, Path(dest))
        return Path(dest)

    async def stat(self, uri: str) -> ArtifactInfo:
        path = self.path_of(uri)
        try:
            size = (await anyio.Path(path).stat()).st_size
        except FileNotFoundError as exc:
            raise ArtifactNotFound(uri) from exc
        return ArtifactInfo(uri=uri, size=size, media_type=media_type(path.name))

    async def open(self, uri: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self.path_of(uri)
        try:
            handle = await anyio.open_file(path, "rb")
        except FileNotFoundError as exc:
            raise ArtifactNotFound(uri) from exc
        async with handle:
            await handle.seek(start)
            remaining = None if end is None else max(end - start, 0)
            while remaining is None or remaining > 0:
                data = await handle.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not data:
                    return
                if remaining is not None:
                    remaining -= len(data)
                yield data

    async def delete(self, uri: str) -> None:
        path = self.path_of(uri)
        await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            while data := src.read(1 << 20):
                out.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- NATS JetStream object store --------------------------------------------------------------------------


class NatsObjectStore:
    """Artifacts in one JetStream object-store bucket (created on first use)."""

    SCHEME = "nats-os"

    def __init__(self, js, bucket: str, replicas: int = 1,  # noqa: ANN001 - nats.js.JetStreamContext
                 retry_s: float = STORE_RETRY_S) -> None:
        self.js = js
        self.bucket = bucket
        self.replicas = replicas
        self.retry_s = retry_s
        self._store = None

    async def _obs(self):  # noqa: ANN202
        if self._store is None:
            from nats.js.errors import BucketNotFoundError

            try:
                self._store = await self.js.object_store(self.bucket)
            except BucketNotFoundError:
                from nats.js.api import ObjectStoreConfig

                config = ObjectStoreConfig(bucket=self.bucket, replicas=self.replicas)
                self._store = await self.js.create_object_store(self.bucket, config=config)
        return self._store

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`await call()`, again (with backoff) after a transient bus error, until `retry_s` has passed."""
        deadline = time.monotonic() + self.retry_s
        delay = 0.2
        while True:
            try:
                return await call()
            except TRANSIENT_BUS_ERRORS as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                log.warning("object store: %s failed (%r); retrying", what, exc)
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 2.0)

    def uri_for(self, key: str) -> str:
        return f"{self.SCHEME}://{self.bucket}/{check_key(key)}"

    def owns(self, uri: str) -> bool:
        try:
            self._key(uri)
        except ArtifactError:
            return False
        return True

    def _key(self, uri: str) -> str:
        parsed = urllib.parse.urlsplit(uri)
        if parsed.scheme != self.SCHEME or parsed.netloc != self.bucket:
            raise ArtifactError(f"not an artifact of bucket {self.bucket!r}: {uri!r}")
        return check_key(parsed.path.lstrip("/"))

    async def put_file(self, key: str, path: Path) -> str:
        key = check_key(key)

        async def put() -> None:
            obs = await self._obs()
            with Path(path).open("rb") as handle:  # noqa: ASYNC230
                await obs.put(key, handle)

        await self._retrying(f"put {key}", put)
        return self.uri_for(key)

    async def fetch(self, uri: str, dest: Path) -> Path:
        from nats.js.errors import ObjectNotFoundError

        key = self._key(uri)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)

        async def get() -> None:
            obs = await self._obs()
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
            try:
                with os.fdopen(fd, "wb") as handle:
                    await obs.get(key, writeinto=handle)
                os.replace(tmp, dest)
            except ObjectNotFoundError as exc:
                raise ArtifactNotFound(uri) from exc
            finally:
                Path(tmp).unlink(missing_ok=True)  # noqa: ASYNC240

        await self._retrying(f"fetch {key}", get)
        return dest

    async def _info(self, uri: str):  # noqa: ANN202 - nats.js.api.ObjectInfo
        from nats.js.errors import ObjectNotFoundError

        key = self._key(uri)

        async def get_info():  # noqa: ANN202
            obs = await self._obs()
            try:
                return await obs.get_info(key)
            except ObjectNotFoundError as exc:
                raise ArtifactNotFound(uri) from exc

        return await self._retrying(f"stat {key}", get_info)

    async def stat(self, uri: str) -> ArtifactInfo:
        info = await self._info(uri)
        return ArtifactInfo(uri=uri, size=info.size or 0, media_type=media_type(info.name or ""))

    async def open(self, uri: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Streams the object's chunks in order, skipping those before `start` (the object store has no
        random access: skipped chunks still cross the wire)."""
        info = await self._info(uri)
        end = info.size if end is None else min(end, info.size or 0)
        if not info.size or start >= end:
            return
        from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE

        subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self.bucket, obj=info.nuid)
        sub = await self.js.subscribe(subject, ordered_consumer=True)
        position = 0
        try:
            async for msg in sub.messages:
                data, chunk_start = msg.data, position
                position += len(data)
                if position > start:
                    yield data[max(start - chunk_start, 0) : end - chunk_start]
                if position >= end:
                    return
        finally:
            await sub.unsubscribe()

    async def delete(self, uri: str) -> None:
        from nats.js.errors import ObjectNotFoundError

        key = self._key(uri)

        async def delete() -> None:
            obs = await self._obs()
            try:
                await obs.delete(key)
            except ObjectNotFoundError:
                pass

        await self._retrying(f"delete {key}", delete)


def artifact_store(settings: Settings, js=None) -> ArtifactStore:  # noqa: ANN001 - JetStreamContext | None
    """The store `settings.artifact_store` names: `local` (default) or `nats` (needs a JetStream context)."""
    if settings.artifact_store == "nats":
        if js is None:
            raise ArtifactError("artifact_store 'nats' needs a JetStream connection")
        return NatsObjectStore(js, Subjects(settings.bus_prefix).artifacts_bucket, settings.nats_replicas)
    if settings.artifact_store != "local":
        raise ArtifactError(f"unknown artifact_store {settings.artifact_store!r}: local or nats")
    return LocalArtifactStore(settings.artifacts_dir)
