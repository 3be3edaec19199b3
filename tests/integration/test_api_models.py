"""/api/v1/models over the real app (NATS + Postgres) with real Ultralytics checkpoints: upload (checked by a
safe load), versions, download with ranges, delete guarded by active runs; `register_version` and
`resolve_model_version` as the projector and run creation use them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from gateway.auth.caller import Caller
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.services.models import register_version, resolve_model_version
from runner.yolo.offline import prepare_ultralytics
from shared.artifacts import LocalArtifactStore
from shared.settings import Settings
from tests.integration.rest_helpers import api
from tests.library_support import insert_run, sql

API = "/api/v1/models"


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real Ultralytics checkpoints built from model YAMLs (no training, nothing downloaded)."""
    folder = tmp_path_factory.mktemp("weights")
    prepare_ultralytics(folder / "state")
    from ultralytics import YOLO

    out = {}
    for key, cfg, names in (("detect", "yolov8n.yaml", ["cat", "dog", "bird"]),
                            ("classify", "yolov8n-cls.yaml", ["a", "b"])):
        model = YOLO(cfg)
        model.model.names = dict(enumerate(names))
        out[key] = folder / f"{key}.pt"
        model.save(out[key])
    return out


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:
    async with api(settings) as c:
        yield c


def _upload(name: str, path: Path, filename: str | None = None, **fields: str) -> dict:
    return {"files": {"file": (filename or path.name, path.read_bytes(), "application/octet-stream")},
            "data": {"name": name, **fields}}


def _library_files(settings: Settings) -> list[Path]:
    root = settings.artifacts_dir / "models"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def test_uploads_become_numbered_versions_with_task_and_classes(
    client: AsyncTestClient, settings: Settings, checkpoints: dict[str, Path]
) -> None:
    first = await client.post(API, **_upload("shapes", checkpoints["detect"], description="tiny detector"))
    assert first.status_code == 201, first.text
    v1 = first.json()
    assert v1["version"] == 1 and v1["ref"] == "shapes:1" and v1["format"] == "pt"
    assert v1["task"] == "detect" and v1["class_names"] == ["cat", "dog", "bird"]
    data = checkpoints["detect"].read_bytes()
    assert v1["size_bytes"] == len(data) and v1["sha256"] == hashlib.sha256(data).hexdigest()
    assert "uri" not in v1

    v2 = (await client.post(API, **_upload("shapes", checkpoints["detect"]))).json()
    assert v2["version"] == 2 and v2["model_id"] == v1["model_id"]

    model = (await client.get(f"{API}/shapes")).json()
    assert model["task"] == "detect" and model["description"] == "tiny detector"
    assert [v["version"] for v in model["versions"]] == [2, 1] and model["latest"]["version"] == 2
    assert (await client.get(f"{API}/{v1['model_id']}")).json()["name"] == "shapes"
    assert (await client.get(f"{API}/shapes/versions/1")).json() == v1
    assert (await client.get(f"{API}/shapes/versions/9")).status_code == 404

    page = (await client.get(API)).json()
    assert page["total"] == 1 and page["items"][0]["latest"]["version"] == 2
    assert page["items"][0]["versions_count"] == 2
    assert (await client.get(API, params={"task": "classify"})).json()["total"] == 0
    assert len(_library_files(settings)) == 2

    other_task = await client.post(API, **_upload("shapes", checkpoints["classify"]))
    assert other_task.status_code == 409 and "detect" in other_task.json()["detail"]
    classify = (await client.post(API, **_upload("letters", checkpoints["classify"]))).json()
    assert classify["task"] == "classify" and classify["class_names"] == ["a", "b"]


async def test_download_sends_the_file_and_honours_ranges(
    client: AsyncTestClient, checkpoints: dict[str, Path]
) -> None:
    data = checkpoints["detect"].read_bytes()
    assert (await client.post(API, **_upload("dl", checkpoints["detect"]))).status_code == 201
    url = f"{API}/dl/versions/1/download"

    full = await client.get(url)
    assert full.status_code == 200 and full.content == data
    assert full.headers["accept-ranges"] == "bytes" and full.headers["content-length"] == str(len(data))
    assert "dl-v1.pt" in full.headers["content-disposition"]

    part = await client.get(url, headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    assert part.headers["content-length"] == "1000"

    tail = await client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    open_ended = await client.get(url, headers={"Range": f"bytes={len(data) - 5}-"})
    assert open_ended.status_code == 206 and open_ended.content == data[-5:]

    beyond = await client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    ignored = await client.get(url, headers={"Range": "bytes=0-1,5-9"})
    assert ignored.status_code == 200 and ignored.content == data


async def test_a_malicious_pickle_is_refused_and_nothing_is_stored(
    client: AsyncTestClient, settings: Settings, tmp_path: Path
) -> None:
    marker = tmp_path / "owned"

    class Exploit:
        def __reduce__(self):  # noqa: ANN204
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.pt"
    torch.save({"model": Exploit(), "version": "8.4.0"}, evil)
    response = await client.post(API, **_upload("evil", evil))
    assert response.status_code == 422, response.text
    assert "not allowed" in response.json()["detail"]
    assert not marker.exists()
    assert await sql(settings, "select count(*) from models") == [(0,)]
    assert _library_files(settings) == [] and not any((settings.state_dir / "uploads").glob("*"))


@pytest.mark.parametrize("request_kwargs, status", [
    ({"files": {"file": ("w.onnx", b"onnx", "application/octet-stream")}, "data": {"name": "m"}}, 400),
    ({"files": {"file": ("w.pt", b"", "application/octet-stream")}, "data": {"name": "m"}}, 400),
    ({"files": {"file": ("w.pt", b"not a zip", "application/octet-stream")}, "data": {"name": "m"}}, 422),
    ({"data": {"name": "m"}, "files": {"weights": ("w.pt", b"x", "application/octet-stream")}}, 400),
    ({"files": {"file": ("w.pt", b"PK", "application/octet-stream")}, "data": {"name": "bad name"}}, 422),
    ({"files": {"file": ("w.pt", b"PK", "application/octet-stream")}, "data": {}}, 422),
])
async def test_bad_uploads_are_client_errors(
    client: AsyncTestClient, settings: Settings, request_kwargs: dict, status: int
) -> None:
    response = await client.post(API, **request_kwargs)
    assert response.status_code == status, response.text
    assert await sql(settings, "select count(*) from models") == [(0,)]


async def test_an_upload_over_the_limit_is_413(settings: Settings, tmp_path: Path) -> None:
    import msgspec

    small = msgspec.structs.replace(settings, max_upload_mb=1)
    big = tmp_path / "big.pt"
    big.write_bytes(b"\0" * (1024 * 1024 + 1))
    async with api(small) as client:
        response = await client.post(API, **_upload("big", big))
    assert response.status_code == 413
    assert not any((settings.state_dir / "uploads").glob("*"))


async def test_versions_used_by_active_runs_cannot_be_deleted(
    client: AsyncTestClient, settings: Settings, checkpoints: dict[str, Path]
) -> None:
    v1 = (await client.post(API, **_upload("busy", checkpoints["detect"]))).json()
    (await client.post(API, **_upload("busy", checkpoints["detect"]))).json()
    await insert_run(settings, "r1", "queued", {"data": "d", "model_version_id": v1["id"]})
    await insert_run(settings, "r0", "completed", {"data": "d", "model_version_id": v1["id"]})

    refused = await client.delete(f"{API}/busy/versions/1")
    assert refused.status_code == 409 and "r1" in refused.json()["detail"]
    assert (await client.delete(f"{API}/busy")).status_code == 409
    assert (await client.delete(f"{API}/busy/versions/2")).status_code == 204
    assert [v["version"] for v in (await client.get(f"{API}/busy")).json()["versions"]] == [1]

    await sql(settings, "update runs set status='failed' where id='r1'")
    assert (await client.delete(f"{API}/busy")).status_code == 204
    assert (await client.get(f"{API}/busy")).status_code == 404
    assert _library_files(settings) == []


OWNER = Caller(user_id="u-owner", username="owner")


async def test_register_version_and_resolve_model_version_for_runs(
    client: AsyncTestClient, settings: Settings, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    store = LocalArtifactStore(settings.artifacts_dir)
    best = await store.put_file("runs/r9/weights/best.pt", checkpoints["detect"])  # as a run publishes it
    engine = create_async_engine(settings.database_url)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            first = await register_version(
                session, store, name="trained", file_path=best, task="detect",
                class_names=["cat", "dog", "bird"], metrics={"metrics/mAP50(B)": 0.5}, source_run_id="r9",
                dataset_id="d1", owner_id=OWNER.user_id)
            await session.commit()
            again = await register_version(
                session, store, name="trained", file_path=best, task="detect", class_names=["cat"],
                source_run_id="r9", owner_id=OWNER.user_id)
            await session.commit()
            assert again.id == first.id and first.version == 1
            second = await register_version(
                session, store, name="trained", file_path=checkpoints["detect"], task="detect",
                class_names=["cat", "dog", "bird"], parent_version_id=first.id, owner_id=OWNER.user_id)
            await session.commit()
            assert second.version == 2 and second.parent_version_id == first.id
            assert store.path_of(second.uri).is_relative_to(settings.artifacts_dir / "models")

            assert (await resolve_model_version(session, "trained", OWNER)).id == second.id
            assert (await resolve_model_version(session, "trained:1", OWNER)).id == first.id
            assert (await resolve_model_version(session, first.id, OWNER)).version == 1
            for ref, error in (("trained:x", BadRequest), ("trained:7", NotFound), ("nope", NotFound)):
                with pytest.raises(error):
                    await resolve_model_version(session, ref, OWNER)
            with pytest.raises(NotFound):  # another user's model is not there for them
                await resolve_model_version(session, "trained", Caller(user_id="someone-else", username="x"))
            with pytest.raises(Conflict):
                await register_version(session, store, name="trained", file_path=checkpoints["classify"],
                                       task="classify", class_names=["a", "b"], owner_id=OWNER.user_id)
            await session.rollback()
    finally:
        await engine.dispose()
    shown = (await client.get(f"{API}/trained/versions/1")).json()
    assert shown["source_run_id"] == "r9" and shown["dataset_id"] == "d1"
    assert shown["metrics"] == {"metrics/mAP50(B)": 0.5}
    downloaded = await client.get(f"{API}/trained/versions/1/download")
    assert downloaded.content == checkpoints["detect"].read_bytes()
