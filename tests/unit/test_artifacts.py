"""Artifact stores: the local folder and the NATS JetStream object store (a real nats-server)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import nats
import pytest

from shared.artifacts import (
    ArtifactError,
    ArtifactNotFound,
    ArtifactStore,
    LocalArtifactStore,
    NatsObjectStore,
    artifact_store,
)
from shared.settings import Settings
from trainforge.embedded import EmbeddedNats

PAYLOAD = bytes(range(256)) * 2000  # 512 000 bytes: several object-store chunks


async def exercise(store: ArtifactStore, tmp_path: Path) -> str:
    source = tmp_path / "weights.pt"
    source.write_bytes(PAYLOAD)
    uri = await store.put_file("runs/r1/attempt-1/weights/best.pt", source)
    assert store.owns(uri)

    info = await store.stat(uri)
    assert info.size == len(PAYLOAD) and info.uri == uri

    fetched = await store.fetch(uri, tmp_path / "out" / "copy.pt")
    assert fetched.read_bytes() == PAYLOAD

    ranged = b"".join([chunk async for chunk in store.open(uri, 1000, 300_000)])
    assert ranged == PAYLOAD[1000:300_000]
    tail = b"".join([chunk async for chunk in store.open(uri, len(PAYLOAD) - 10)])
    assert tail == PAYLOAD[-10:]

    await store.delete(uri)
    with pytest.raises(ArtifactNotFound):
        await store.stat(uri)
    await store.delete(uri)  # already gone: fine
    return uri


async def test_local_store_puts_fetches_reads_ranges_and_deletes(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    uri = await exercise(store, tmp_path)
    assert uri.startswith("file://") and uri.endswith("/runs/r1/attempt-1/weights/best.pt")


async def test_local_store_reads_local_scheme_keys(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    source = tmp_path / "a.txt"
    source.write_text("hello")
    await store.put_file("x/a.txt", source)
    assert (await store.stat("local:x/a.txt")).size == 5


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../../b", "a b", ""])
async def test_local_store_refuses_keys_that_leave_its_folder(tmp_path: Path, key: str) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    source = tmp_path / "a.txt"
    source.write_text("x")
    with pytest.raises(ArtifactError):
        await store.put_file(key, source)


async def test_local_store_refuses_uris_outside_its_folder(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    (tmp_path / "secret").write_text("x")
    assert not store.owns((tmp_path / "secret").as_uri())
    with pytest.raises(ArtifactError):
        await store.stat((tmp_path / "artifacts" / ".." / "secret").as_uri())


async def test_nats_object_store_puts_fetches_reads_ranges_and_deletes(nats_url: str, tmp_path: Path) -> None:
    nc = await nats.connect(nats_url)
    try:
        settings = Settings.from_mapping({"artifact_store": "nats", "bus_prefix": f"t{tmp_path.name[-8:]}"})
        store = artifact_store(settings, nc.jetstream())
        assert isinstance(store, NatsObjectStore)
        uri = await exercise(store, tmp_path)
        assert uri == f"nats-os://{store.bucket}/runs/r1/attempt-1/weights/best.pt"
        await nc.jetstream().delete_object_store(store.bucket)
    finally:
        await nc.close()


def test_artifact_store_defaults_to_the_local_folder(tmp_path: Path) -> None:
    store = artifact_store(Settings.from_mapping({"state_dir": tmp_path}))
    assert isinstance(store, LocalArtifactStore) and store.root == (tmp_path / "artifacts").resolve()


async def test_nats_object_store_fetch_goes_on_through_a_bus_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fetch that starts while the server is down (a lost node, a leader moving) is retried until the bus is
    back, instead of failing the run that needed the file."""
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        store = NatsObjectStore(nc.jetstream(), "outage", retry_s=120)
        source = tmp_path / "last.pt"
        source.write_bytes(PAYLOAD)
        uri = await store.put_file("runs/r1/attempt-1/weights/last.pt", source)
        server.stop()
        with caplog.at_level(logging.WARNING, logger="shared.artifacts"):
            fetch = asyncio.create_task(store.fetch(uri, tmp_path / "out" / "last.pt"))
            async with asyncio.timeout(120):
                while not any("retrying" in r.getMessage() for r in caplog.records):
                    assert not fetch.done(), fetch
                    await asyncio.sleep(0.05)
            server.start()
            assert (await fetch).read_bytes() == PAYLOAD
    finally:
        await nc.close()
        server.stop()
