"""/api/v1/datasets over the real app (NATS + Postgres): register by server path or upload, inspect, page
images, serve image bytes, delete; refused input leaves nothing behind."""

from __future__ import annotations

import json
import os
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from gateway.auth.caller import Caller
from gateway.services.datasets import resolve_dataset
from shared.settings import Settings
from tests.auth_support import bearer, create_user
from tests.dataset_factories import (
    CLASSES,
    make_coco,
    make_voc,
    make_yolo_flat,
    make_yolo_yaml,
    tar_member,
    tar_with,
    zip_folder,
    zip_with,
)
from tests.integration.rest_helpers import api, in_app
from tests.library_support import insert_run, sql
from tests.unit.test_archive_attacks import snapshot, symlinks_below

API = "/api/v1/datasets"


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def lib_settings(settings: Settings, data_root: Path) -> Settings:
    return msgspec.structs.replace(settings, data_roots=[data_root], max_upload_mb=1)


@pytest.fixture
async def client(lib_settings: Settings) -> AsyncIterator[AsyncTestClient]:
    async with api(lib_settings) as c:
        yield c


async def _count_datasets(settings: Settings) -> int:
    return (await sql(settings, "select count(*) from datasets"))[0][0]


def _stored(settings: Settings) -> list[Path]:
    """Everything left below the datasets folder (uploads in waiting included)."""
    root = settings.datasets_dir
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _upload(name: str, archive: Path, **fields: str) -> dict:
    return {"files": {"file": (archive.name, archive.read_bytes(), "application/zip")},
            "data": {"name": name, **fields}}


async def test_registering_a_yolo_folder_by_path_answers_its_inspection(
    client: AsyncTestClient, data_root: Path
) -> None:
    make_yolo_yaml(data_root / "shapes", n_train=4, n_val=2)
    response = await client.post(API, json={"name": "shapes", "path": str(data_root / "shapes")})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "shapes" and body["status"] == "ready" and body["source"] == "path"
    assert body["format"] == "yolo" and body["task"] == "detect" and body["classes"] == CLASSES
    assert body["splits"] == {"train": 4, "val": 2} and body["images"] == 6
    assert body["split_by"] == "source" and body["instances"] > 0
    report = body["report"]
    assert set(report["splits"]) == {"train", "val"}
    per_class = {c["name"]: c for c in report["splits"]["train"]["classes"]}
    assert set(per_class) <= set(CLASSES) and sum(c["instances"] for c in per_class.values()) > 0
    assert "root_path" not in body and "data_yaml" not in body

    detail = (await client.get(f"{API}/{body['id']}")).json()
    by_name = (await client.get(f"{API}/shapes")).json()
    assert detail == by_name == body


async def test_voc_difficult_objects_are_labels_unless_the_registration_drops_them(
    client: AsyncTestClient, data_root: Path, tmp_path: Path
) -> None:
    make_voc(data_root / "voc", 6)
    xmls = sorted((data_root / "voc" / "Annotations").glob("*.xml"))
    for xml in xmls:
        xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    kept = await client.post(API, json={"name": "voc-kept", "path": str(data_root / "voc")})
    assert kept.status_code == 201, kept.text
    dropped = await client.post(API, json={"name": "voc-dropped", "path": str(data_root / "voc"),
                                           "drop_difficult": True})
    assert dropped.status_code == 201, dropped.text
    assert dropped.json()["instances"] == kept.json()["instances"] - len(xmls)
    archive = zip_folder(data_root / "voc", tmp_path / "voc.zip")
    uploaded = await client.post(API, **_upload("voc-upload", archive, drop_difficult="true"))
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["instances"] == dropped.json()["instances"]
    bad = await client.post(API, json={"name": "voc-bad", "path": str(data_root / "voc"), "drop_difficult": "x"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"].endswith("drop_difficult"), bad.text


async def test_a_name_is_registered_once(client: AsyncTestClient, data_root: Path) -> None:
    make_yolo_yaml(data_root / "a", 2, 1)
    assert (await client.post(API, json={"name": "same", "path": str(data_root / "a")})).status_code == 201
    again = await client.post(API, json={"name": "same", "path": str(data_root / "a")})
    assert again.status_code == 409 and again.json()["code"] == "conflict"


async def test_a_coco_upload_is_converted_to_yolo_and_split_reproducibly(
    client: AsyncTestClient, lib_settings: Settings, tmp_path: Path
) -> None:
    make_coco(tmp_path / "coco", n=9, splits=False)
    archive = zip_folder(tmp_path / "coco", tmp_path / "coco.zip")
    ratios = json.dumps({"train": 0.7, "val": 0.3})
    first = await client.post(API, **_upload("coco-a", archive, ratios=ratios, seed="7"))
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["format"] == "coco" and body["task"] == "detect" and body["source"] == "upload"
    assert body["classes"] == CLASSES and body["split_by"] == "ratios"
    assert body["ratios"] == {"train": 0.7, "val": 0.3, "test": 0.0} and body["seed"] == 7
    assert sum(body["splits"].values()) == 9 and body["splits"]["val"] >= 1
    # the prepared copy is YOLO: a data.yaml training reads
    [(data_yaml,)] = await sql(lib_settings, "select data_yaml from datasets where id=:i", i=body["id"])
    assert data_yaml.endswith(".yaml") and Path(data_yaml).is_file()

    _second = (await client.post(API, **_upload("coco-b", archive, ratios=ratios, seed="7"))).json()
    _other_seed = (await client.post(API, **_upload("coco-c", archive, ratios=ratios, seed="8"))).json()

    async def split_of(ref: str) -> dict[str, str]:
        page = (await client.get(f"{API}/{ref}/images", params={"limit": 100})).json()
        return {item["path"].rsplit("/", 1)[-1]: item["split"] for item in page["items"]}

    assert await split_of("coco-a") == await split_of("coco-b")
    assert await split_of("coco-a") != await split_of("coco-c")
    assert not list(lib_settings.datasets_dir.joinpath(".uploads").iterdir())


async def test_images_are_paged_with_their_labels_and_served(
    client: AsyncTestClient, data_root: Path
) -> None:
    make_yolo_flat(data_root / "flat", n=10)
    created = await client.post(API, json={"name": "flat", "path": str(data_root / "flat"),
                                           "ratios": {"train": 0.8, "val": 0.2}, "seed": 1})
    assert created.status_code == 201, created.text
    assert created.json()["splits"] == {"train": 8, "val": 2}

    page = (await client.get(f"{API}/flat/images", params={"split": "train", "offset": 2, "limit": 3})).json()
    assert page["total"] == 8 and page["offset"] == 2 and page["limit"] == 3
    assert [i["index"] for i in page["items"]] == [2, 3, 4]
    item = page["items"][0]
    assert item["split"] == "train" and item["width"] and item["labels"]
    assert item["labels"][0]["class_name"].startswith("class_") and len(item["labels"][0]["values"]) == 4

    everything = (await client.get(f"{API}/flat/images", params={"limit": 100})).json()
    assert everything["total"] == 10
    # in a listing of all splits too, `index` is the position in the image's split: the file route's index
    assert [(i["split"], i["index"]) for i in everything["items"]] == [
        *(("train", n) for n in range(8)), ("val", 0), ("val", 1)]
    val = everything["items"][8]
    served = await client.get(f"{API}/flat/images/val/{val['index']}/file")
    assert served.status_code == 200 and served.content == (data_root / "flat" / val["path"]).read_bytes()

    image = await client.get(f"{API}/flat/images/train/2/file")
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.headers["content-type"] == "image/png"
    assert (await client.get(f"{API}/flat/images/train/99/file")).status_code == 404
    assert (await client.get(f"{API}/flat/images", params={"split": "nope"})).status_code == 400


async def test_listing_pages_and_filters_datasets(client: AsyncTestClient, data_root: Path) -> None:
    make_yolo_yaml(data_root / "y", 2, 1)
    make_coco(data_root / "c", n=6)
    for name, folder in (("y1", "y"), ("y2", "y"), ("c1", "c")):
        created = await client.post(API, json={"name": name, "path": str(data_root / folder)})
        assert created.status_code == 201
    page = (await client.get(API, params={"limit": 2})).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["limit"] == 2 and page["offset"] == 0
    coco = (await client.get(API, params={"format": "coco"})).json()
    assert [d["name"] for d in coco["items"]] == ["c1"] and coco["total"] == 1
    assert (await client.get(API, params={"task": "classify"})).json()["total"] == 0
    assert (await client.get(API, params={"limit": 0})).status_code == 400


@pytest.mark.parametrize("body, status", [
    ({"name": "x", "path": "/etc"}, 400),
    ({"name": "x", "path": "relative/path"}, 400),
    ({"name": "x", "path": "DATA/missing"}, 400),
    ({"name": "x", "path": "DATA/ds", "ratios": {"train": 0.5, "val": 0.2}}, 422),
    ({"name": "x", "path": "DATA/ds", "unknown": 1}, 422),
    ({"name": "bad name!", "path": "DATA/ds"}, 422),
    ({"path": "DATA/ds"}, 422),
])
async def test_refused_path_registrations_store_nothing(
    client: AsyncTestClient, lib_settings: Settings, data_root: Path, body: dict, status: int
) -> None:
    make_yolo_flat(data_root / "ds", n=4)
    if "path" in body:
        body = {**body, "path": body["path"].replace("DATA", str(data_root))}
    response = await client.post(API, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await _count_datasets(lib_settings) == 0 and _stored(lib_settings) == []


async def test_refused_uploads_store_nothing(
    client: AsyncTestClient, lib_settings: Settings, tmp_path: Path
) -> None:
    evil = zip_with(tmp_path / "evil.zip", {"images/a.jpg": b"x", "../escape.txt": b"owned"})
    response = await client.post(API, **_upload("evil", evil))
    assert response.status_code == 400 and "outside" in response.json()["detail"]
    assert not (lib_settings.datasets_dir / "escape.txt").exists()

    make_yolo_flat(tmp_path / "ds", n=4)
    good = zip_folder(tmp_path / "ds", tmp_path / "ds.zip")
    cases = [
        ({"files": {"file": ("ds.rar", b"Rar!", "application/octet-stream")}, "data": {"name": "x"}}, 400),
        ({"files": {"file": ("ds.zip", b"", "application/zip")}, "data": {"name": "x"}}, 400),
        ({"data": {"name": "x"}, "files": {"other": ("a.txt", b"a", "text/plain")}}, 400),
        (_upload("x", good, ratios="not json"), 400),
        (_upload("x", good, ratios=json.dumps({"train": 0.9, "val": 0.3})), 422),
        (_upload("x", good, seed="-1"), 422),
        (_upload("x", good, colour="red"), 400),
        ({"files": {"file": ("junk.zip", b"not a zip", "application/zip")}, "data": {"name": "x"}}, 400),
    ]
    for request, status in cases:
        response = await client.post(API, **request)
        assert response.status_code == status, (request.get("data"), response.text)
    no_form = await client.post(API, content=b"--b\r\nbroken",
                                headers={"content-type": "multipart/form-data"})
    assert no_form.status_code == 400
    plain = await client.post(API, content=b"hello", headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    assert await _count_datasets(lib_settings) == 0 and _stored(lib_settings) == []


async def test_an_upload_over_the_limit_is_413_and_stores_nothing(
    client: AsyncTestClient, lib_settings: Settings, tmp_path: Path
) -> None:
    big = tmp_path / "big.zip"
    big.write_bytes(b"\0" * (lib_settings.max_upload_mb * 1024 * 1024 + 10))
    response = await client.post(API, **_upload("big", big))
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"
    assert await _count_datasets(lib_settings) == 0 and _stored(lib_settings) == []


async def test_a_dataset_used_by_an_active_run_cannot_be_deleted(
    client: AsyncTestClient, lib_settings: Settings, data_root: Path
) -> None:
    make_yolo_yaml(data_root / "ds", 2, 1)
    dataset = (await client.post(API, json={"name": "busy", "path": str(data_root / "ds")})).json()
    await insert_run(lib_settings, "r1", "running", {"data": "x", "dataset_id": dataset["id"]})
    refused = await client.delete(f"{API}/busy")
    assert refused.status_code == 409 and "r1" in refused.json()["detail"]
    await sql(lib_settings, "update runs set status='completed' where id='r1'")
    engine = create_async_engine(lib_settings.database_url)
    try:
        async with AsyncSession(engine) as session:
            owner = Caller(user_id=dataset["owner_id"], username="admin")
            assert (await resolve_dataset(session, "busy", owner)).data_yaml.endswith(".yaml")
    finally:
        await engine.dispose()
    assert (await client.delete(f"{API}/busy")).status_code == 204
    assert (await client.get(f"{API}/busy")).status_code == 404
    assert await _count_datasets(lib_settings) == 0 and _stored(lib_settings) == []
    assert (data_root / "ds" / "data.yaml").is_file()  # the server-side source is left alone
    assert (await client.delete(f"{API}/busy")).status_code == 404



async def test_what_a_stopped_gateway_left_half_done_is_swept_a_day_later(
    client: AsyncTestClient, lib_settings: Settings, data_root: Path
) -> None:
    make_yolo_yaml(data_root / "kept", n_train=2, n_val=1)
    kept = await client.post(API, json={"name": "kept", "path": str(data_root / "kept")})
    assert kept.status_code == 201, kept.text
    # What a gateway that died while preparing leaves: a `preparing` row reserving the name, half the files,
    # the uploaded archive waiting; one a day old, one that another gateway may still be preparing now.
    for dataset_id, name, age in (("a" * 32, "abandoned", "25 hours"), ("b" * 32, "in-progress", "1 minute")):
        await sql(lib_settings, "insert into datasets (id, name, owner_id, source, status, classes, created_at) values "
                                f"(:id, :n, (select id from users where username = 'admin'), 'upload', 'preparing', '[]', "
                                f"now() - interval '{age}')", id=dataset_id, n=name)
        (lib_settings.datasets_dir / dataset_id / "source").mkdir(parents=True)
        (lib_settings.datasets_dir / dataset_id / "source" / "half.jpg").write_bytes(b"x")
    waiting = lib_settings.datasets_dir / ".uploads"
    waiting.mkdir(exist_ok=True)
    (waiting / "old.upload").write_bytes(b"zip")
    os.utime(waiting / "old.upload", (time.time() - 25 * 3600,) * 2)
    (waiting / "new.upload").write_bytes(b"zip")
    incoming = lib_settings.state_dir / "uploads"  # images and weights on their way in
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / "old.pt").write_bytes(b"weights")
    os.utime(incoming / "old.pt", (time.time() - 25 * 3600,) * 2)

    swept = in_app(client, client.app.state.gw.sweeper.sweep)

    assert swept["datasets"] == 1 and swept["incoming_files"] == 2 and not (incoming / "old.pt").exists()
    assert not (lib_settings.datasets_dir / ("a" * 32)).exists() and (lib_settings.datasets_dir / ("b" * 32)).exists()
    assert not (waiting / "old.upload").exists() and (waiting / "new.upload").exists()
    names = {d["name"]: d["status"] for d in (await client.get(API)).json()["items"]}
    assert names == {"kept": "ready", "in-progress": "preparing"}
    again = await client.post(API, json={"name": "abandoned", "path": str(data_root / "kept")})
    assert again.status_code == 201, again.text  # the name is free again


async def test_an_upload_climbing_out_through_a_link_chain_is_refused_and_touches_nothing(
    client: AsyncTestClient, lib_settings: Settings, tmp_path: Path
) -> None:
    token = await create_user(client, "eve")
    (lib_settings.state_dir / "cli-token").write_bytes(b"admin-token")
    links = [("a", "."), ("a/u1", ".."), ("u1/u2", ".."), ("u1/u2/u3", ".."), ("u1/u2/u3/u4", "..")]
    members = [tar_member(name, tarfile.SYMTYPE, target) for name, target in links] + [
        tar_member("images/stolen.jpg", tarfile.LNKTYPE, "u1/u2/u3/cli-token"),
        tar_member("u1/u2/u3/u4/victim.txt")]
    chain = tar_with(tmp_path / "chain.tar", members, {"u1/u2/u3/u4/victim.txt": b"owned"})
    warm_up = await client.post(API, **_upload("warm-up", zip_with(tmp_path / "w.zip", {"../x": b"x"})),
                                headers=bearer(token))
    assert warm_up.status_code == 400  # the upload folders now exist
    before = snapshot(tmp_path)

    response = await client.post(API, **_upload("chain", chain), headers=bearer(token))
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "links to folders" in response.json()["detail"] and str(tmp_path) not in response.text
    assert snapshot(tmp_path) == before
    assert symlinks_below(lib_settings.state_dir) == []
    assert await _count_datasets(lib_settings) == 0
