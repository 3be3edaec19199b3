"""Curating a dataset over the real app (NATS + Postgres): the working copy's samples and annotations, class
edits and what they do to labels, frozen versions (immutable, content-addressed, with their changes), runs on
`name:N` recorded on the run and the model version, isolation."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from shared.settings import Settings
from tests.auth_support import bearer, create_user
from tests.datagen import make_detect_dataset
from tests.integration.rest_helpers import api, new_project, problem
from tests.library_support import sql

API = "/api/v1/datasets"


@pytest.fixture
def lib_settings(settings: Settings, tmp_path: Path) -> Settings:
    (tmp_path / "data").mkdir()
    return msgspec.structs.replace(settings, data_roots=[tmp_path / "data"])


@pytest.fixture
async def client(lib_settings: Settings) -> AsyncIterator[AsyncTestClient]:
    async with api(lib_settings) as c:
        yield c


async def _register(client: AsyncTestClient, tmp_path: Path, name: str = "rects") -> dict[str, Any]:
    data = make_detect_dataset(tmp_path / "data" / name, n_train=4, n_val=2, imgsz=64)
    response = await client.post(API, json={"name": name, "path": str(data.parent)})
    assert response.status_code == 201, response.text
    return response.json()


def _png(size: tuple[int, int] = (80, 60), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


async def _samples(client: AsyncTestClient, query: str = "", **kw: Any) -> dict[str, Any]:
    response = await client.get(f"{API}/rects/samples{query}", **kw)
    assert response.status_code == 200, response.text
    return response.json()


def _fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


async def test_edits_go_to_the_working_copy_and_a_frozen_version_never_changes(
    client: AsyncTestClient, lib_settings: Settings, tmp_path: Path
) -> None:
    dataset = await _register(client, tmp_path)
    assert dataset["last_version"] == 1
    versions = (await client.get(f"{API}/rects/versions")).json()
    assert [v["number"] for v in versions["items"]] == [1] and versions["items"][0]["images"] == 6

    page = await _samples(client)
    assert page["total"] == 6 and len(page["items"]) == 6
    first, second, third = page["items"][:3]
    assert first["split"] == "train" and (first["width"], first["height"]) == (64, 64)
    box = first["annotations"][0]["box"]
    assert first["annotations"][0]["class"] in ("a", "b") and 0 <= box[0] < box[2] <= 64
    assert (await _samples(client, "?split=val"))["total"] == 2
    assert (await _samples(client, "?no_labels=true"))["total"] == 0

    # bad annotations: 422 naming each field, nothing changed
    url = f"{API}/rects/samples/{first['id']}/annotations"
    bad = problem(await client.put(url, json={"annotations": [
        {"class": "zebra", "box": [1, 1, 10, 10]}, {"class": "a", "box": [10, 10, 70, 20]},
        {"class": 7, "box": [1, 1, 2, 2]}, {"class": "a"}, {"class": "a", "box": [1, 1, 2, 2], "mask": 1}]}), 422)
    assert _fields(bad) == {"annotations[0].class", "annotations[1].box", "annotations[2].class",
                            "annotations[3].box", "annotations[4].mask"}, bad
    assert (await client.get(f"{API}/rects/samples/{first['id']}")).json()["annotations"] == first["annotations"]
    problem(await client.put(url, json={"boxes": []}), 422)

    # relabel one, move one, delete one, upload one
    relabelled = await client.put(url, json={"annotations": [{"class": "b", "box": [2, 3, 30, 40]},
                                                             {"class": 0, "box": [40, 40, 60, 63.5]}]})
    assert relabelled.status_code == 200, relabelled.text
    assert relabelled.json()["annotations"] == [{"class": "b", "box": [2.0, 3.0, 30.0, 40.0]},
                                                {"class": "a", "box": [40.0, 40.0, 60.0, 63.5]}]
    moved = await client.patch(f"{API}/rects/samples/{second['id']}", json={"split": "val", "tags": ["blurry"]})
    assert moved.status_code == 200 and moved.json()["split"] == "val" and moved.json()["tags"] == ["blurry"]
    assert (await _samples(client, "?tag=blurry"))["total"] == 1
    assert (await client.delete(f"{API}/rects/samples/{third['id']}")).status_code == 204
    uploaded = await client.post(f"{API}/rects/samples", files=[("file", ("new.png", _png(), "image/png"))],
                                 data={"split": "val",
                                       "annotations": json.dumps({"new.png": [{"class": "a", "box": [5, 5, 50, 40]}]})})
    assert uploaded.status_code == 201, uploaded.text
    new = uploaded.json()["items"][0]
    assert (new["split"], new["width"], new["height"], new["name"]) == ("val", 80, 60, "new.png")
    file = await client.get(f"{API}/rects/samples/{new['id']}/file")
    assert file.status_code == 200 and file.content == _png()
    bad_upload = problem(await client.post(f"{API}/rects/samples", files=[
        ("file", ("ok.png", _png(), "image/png")), ("file", ("bad.png", _png((20, 20)), "image/png"))],
        data={"annotations": json.dumps([[], [{"class": "a", "box": [0, 0, 25, 5]}]])}), 422)
    assert _fields(bad_upload) == {"annotations[1][0].box"}
    problem(await client.post(f"{API}/rects/samples", files=[("file", ("x.png", b"not a png", "image/png"))]), 422)
    assert (await _samples(client))["total"] == 6  # 6 - 1 + 1: the refused uploads added nothing

    # freeze: version 2, with what changed since version 1
    frozen = await client.post(f"{API}/rects/versions")
    assert frozen.status_code == 201, frozen.text
    v2 = frozen.json()
    assert v2["number"] == 2 and v2["ref"] == "rects:2" and v2["images"] == 6
    assert v2["changes"]["since"] == 1
    assert v2["changes"]["totals"] == {"added": 1, "removed": 1, "relabelled": 1, "moved": 1}
    s1 = (await client.get(f"{API}/rects/stats?version=1")).json()
    s2 = (await client.get(f"{API}/rects/stats")).json()
    assert (s1["version"], s2["version"]) == (1, 2) and s1["images"] == s2["images"] == 6, (s1, s2)
    assert s2["splits"]["val"]["images"] == s1["splits"]["val"]["images"] + 2  # one moved there, one uploaded
    assert (await client.get(f"{API}/rects/stats?version=3")).status_code == 404
    assert (v2["changes"]["added"], v2["changes"]["removed"]) == ([new["id"]], [third["id"]])
    assert (v2["changes"]["relabelled"], v2["changes"]["moved"]) == ([first["id"]], [second["id"]])
    assert v2["splits"]["train"]["images"] == 2 and v2["splits"]["val"]["images"] == 4
    assert (await client.get(f"{API}/rects/versions/2")).json() == v2

    # the version's folder: labels written, images hard links to the blobs (stored once)
    folder = lib_settings.datasets_dir / dataset["id"]
    v2_dir = folder / "versions" / "2"
    label = (v2_dir / "yolo" / "labels" / "train" / f"{first['id']}.txt").read_text()
    assert label.splitlines()[0].startswith("1 ") and label.splitlines()[1].startswith("0 ")
    image = next((v2_dir / "yolo" / "images" / "train").glob(f"{first['id']}.*"))
    assert image.stat().st_ino == (folder / "blobs" / first["sha256"][:2] / image.name.replace(
        first["id"], first["sha256"])).stat().st_ino
    data_yaml = (v2_dir / "data.yaml").read_text()
    assert str(v2_dir / "yolo") in data_yaml and "images/val" in data_yaml
    before = {p: p.read_bytes() for p in v2_dir.rglob("*") if p.is_file()}

    # the working copy changes afterwards: version 2 does not
    assert (await client.put(url, json={"annotations": []})).status_code == 200
    assert (await client.delete(f"{API}/rects/samples/{new['id']}")).status_code == 204
    assert (await client.post(f"{API}/rects/classes", json={"name": "c"})).status_code == 200
    assert {p: p.read_bytes() for p in v2_dir.rglob("*") if p.is_file()} == before
    assert (await client.get(f"{API}/rects/versions/2")).json() == v2
    v3 = (await client.post(f"{API}/rects/versions")).json()
    assert v3["number"] == 3 and v3["changes"]["totals"] == {"added": 0, "removed": 1, "relabelled": 1, "moved": 0}
    assert v3["changes"]["classes_added"] == ["c"] and v3["classes"] == ["a", "b", "c"]
    same = next((folder / "versions" / "3" / "yolo" / "images" / "val").glob(f"{second['id']}.*"))
    assert same.stat().st_ino == next((v2_dir / "yolo" / "images" / "val").glob(f"{second['id']}.*")).stat().st_ino
    assert [v["number"] for v in (await client.get(f"{API}/rects/versions")).json()["items"]] == [3, 2, 1]

    # versions: unknown → 404; deleting an unused one frees its folder
    problem(await client.get(f"{API}/rects/versions/9"), 404)
    assert (await client.delete(f"{API}/rects/versions/3")).status_code == 204
    assert not (folder / "versions" / "3").exists()
    assert (await client.post(f"{API}/rects/versions")).json()["number"] == 4  # numbers are never reused


async def test_class_edits_rename_merge_and_delete_carry_their_labels(
    client: AsyncTestClient, tmp_path: Path
) -> None:
    await _register(client, tmp_path)
    page = await _samples(client)
    count = {c: sum(a["class"] == c for s in page["items"] for a in s["annotations"]) for c in ("a", "b")}
    assert count["a"] and count["b"]

    added = (await client.post(f"{API}/rects/classes", json={"name": "c"})).json()
    assert added == {"classes": ["a", "b", "c"], "samples_changed": 0, "annotations_changed": 0}
    problem(await client.post(f"{API}/rects/classes", json={"name": "c"}), 409)
    problem(await client.post(f"{API}/rects/classes", json={"name": "a/b"}), 422)

    renamed = (await client.patch(f"{API}/rects/classes/a", json={"name": "apple"})).json()
    assert renamed["classes"] == ["apple", "b", "c"] and renamed["annotations_changed"] == count["a"]
    assert (await _samples(client, "?class=apple"))["total"] > 0 and (await _samples(client, "?class=a"))["total"] == 0
    problem(await client.patch(f"{API}/rects/classes/apple", json={"name": "b"}), 409)  # taken: merge instead
    problem(await client.patch(f"{API}/rects/classes/zebra", json={"name": "z"}), 404)

    merged = (await client.post(f"{API}/rects/classes/apple/merge", json={"into": "b"})).json()
    assert merged["classes"] == ["b", "c"] and merged["annotations_changed"] == count["a"]
    page = await _samples(client)
    assert sum(a["class"] == "b" for s in page["items"] for a in s["annotations"]) == count["a"] + count["b"]
    assert problem(await client.post(f"{API}/rects/classes/b/merge", json={"into": "nope"}), 422)["errors"][0][
        "field"] == "into"

    one = page["items"][0]
    assert (await client.put(f"{API}/rects/samples/{one['id']}/annotations",
                             json={"annotations": [{"class": "c", "box": [1, 1, 9, 9]}]})).status_code == 200
    deleted = (await client.delete(f"{API}/rects/classes/b")).json()
    assert deleted["classes"] == ["c"] and deleted["annotations_changed"] == count["a"] + count["b"] - len(
        one["annotations"])
    page = await _samples(client)
    assert [s["annotations"] for s in page["items"] if s["annotations"]] == [[{"class": "c", "box": [1.0, 1.0, 9.0, 9.0]}]]
    assert (await _samples(client, "?no_labels=true"))["total"] == 5
    problem(await client.delete(f"{API}/rects/classes/c"), 409)  # the last class stays
    v2 = (await client.post(f"{API}/rects/versions")).json()
    assert v2["classes"] == ["c"] and v2["changes"]["classes_removed"] == ["a", "b"]
    assert v2["splits"]["train"]["classes"] == {"c": {"images": 1, "instances": 1}}
    actions = {e["action"] for e in (await client.get("/api/v1/audit?action=dataset")).json()["items"]}
    assert {"dataset.class_add", "dataset.class_rename", "dataset.class_merge", "dataset.class_delete",
            "dataset.version_create"} <= actions, actions


async def test_another_user_gets_404_on_every_curation_route(client: AsyncTestClient, tmp_path: Path) -> None:
    await _register(client, tmp_path)
    sample = (await _samples(client))["items"][0]["id"]
    eve = bearer(await create_user(client, "eve"))
    s = f"{API}/rects/samples/{sample}"
    calls = [
        client.get(f"{API}/rects/samples", headers=eve),
        client.post(f"{API}/rects/samples", files=[("file", ("x.png", _png(), "image/png"))], headers=eve),
        client.get(s, headers=eve), client.get(f"{s}/file", headers=eve),
        client.patch(s, json={"split": "val"}, headers=eve), client.delete(s, headers=eve),
        client.put(f"{s}/annotations", json={"annotations": []}, headers=eve),
        client.post(f"{API}/rects/classes", json={"name": "x"}, headers=eve),
        client.patch(f"{API}/rects/classes/a", json={"name": "x"}, headers=eve),
        client.post(f"{API}/rects/classes/a/merge", json={"into": "b"}, headers=eve),
        client.delete(f"{API}/rects/classes/a", headers=eve),
        client.post(f"{API}/rects/versions", headers=eve), client.get(f"{API}/rects/versions", headers=eve),
        client.get(f"{API}/rects/versions/1", headers=eve), client.delete(f"{API}/rects/versions/1", headers=eve),
    ]
    for call in calls:
        response = await call
        problem(response, 404)
    assert (await _samples(client))["total"] == 6  # nothing changed
    await new_project(client, "p")
    refused = await client.post("/api/v1/projects/p/runs", json={"kind": "yolo.train", "dataset": "rects:1"},
                                headers=eve)
    assert refused.status_code in (404, 422) and "rects" not in refused.text.replace("rects:1", "")


async def test_a_run_names_a_version_and_an_unknown_version_is_a_422(
    client: AsyncTestClient, tmp_path: Path, lib_settings: Settings
) -> None:
    await _register(client, tmp_path)
    await new_project(client, "p")
    v2 = (await client.post(f"{API}/rects/versions")).json()
    train = {"kind": "yolo.train", "model": "yolov8n.yaml", "epochs": 1, "imgsz": 64}
    latest = (await client.post("/api/v1/projects/p/runs", json={**train, "dataset": "rects"})).json()
    assert latest["spec"]["dataset_version"] == 2 and latest["options"]["dataset_version"] == 2
    assert latest["spec"]["data"].endswith("/versions/2/data.yaml")
    first = (await client.post("/api/v1/projects/p/runs", json={**train, "dataset": "rects:1"})).json()
    assert first["spec"]["dataset_version"] == 1 and "/prepared/" in first["spec"]["data"]
    missing = problem(await client.post("/api/v1/projects/p/runs", json={**train, "dataset": "rects:9"}), 422)
    assert _fields(missing) == {"dataset"}
    problem(await client.post("/api/v1/projects/p/runs", json={**train, "dataset": "rects",
                                                                "dataset_version": 1}), 422)
    # unfinished runs hold their versions
    problem(await client.delete(f"{API}/rects/versions/1"), 409)
    problem(await client.delete(f"{API}/rects/versions/{v2['number']}"), 409)
    for run in (latest, first):  # queued, no runner: canceled at once
        assert (await client.post(f"/api/v1/runs/{run['id']}/cancel")).status_code in (200, 202)
        assert (await client.get(f"/api/v1/runs/{run['id']}")).json()["status"] == "canceled"
    assert (await client.delete(f"{API}/rects/versions/1")).status_code == 204
    assert [v["number"] for v in (await client.get(f"{API}/rects/versions")).json()["items"]] == [2]
    problem(await client.post("/api/v1/projects/p/runs", json={**train, "dataset": "rects:1"}), 422)


async def until(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if (value := await check()) is not None:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.5)


async def test_a_classify_dataset_is_curated_by_class_and_frozen_into_class_folders(
    client: AsyncTestClient, lib_settings: Settings, tmp_path: Path
) -> None:
    from tests.datagen import make_classify_dataset

    root = make_classify_dataset(tmp_path / "data" / "letters", n_train=2, n_val=1, imgsz=32)
    registered = await client.post(API, json={"name": "letters", "path": str(root)})
    assert registered.status_code == 201, registered.text
    dataset = registered.json()
    page = (await client.get(f"{API}/letters/samples?split=train&class=a")).json()
    assert page["total"] == 2 and all(s["annotations"] == [{"class": "a"}] for s in page["items"])
    one = page["items"][0]
    url = f"{API}/letters/samples/{one['id']}/annotations"
    problem(await client.put(url, json={"annotations": [{"class": "a"}, {"class": "b"}]}), 422)
    problem(await client.put(url, json={"annotations": [{"class": "a", "box": [1, 1, 2, 2]}]}), 422)
    assert (await client.put(url, json={"annotations": [{"class": "b"}]})).status_code == 200
    v2 = (await client.post(f"{API}/letters/versions")).json()
    assert v2["splits"]["train"]["classes"] == {"a": {"images": 1, "instances": 1}, "b": {"images": 3, "instances": 3}}
    folder = lib_settings.datasets_dir / dataset["id"] / "versions" / "2" / "classify"
    assert [p.name for p in (folder / "train" / "b").iterdir() if p.stem == one["id"]]
    deleted = (await client.delete(f"{API}/letters/classes/a")).json()
    assert deleted["classes"] == ["b"] and deleted["samples_changed"] == 2  # 1 train + 1 val image of a
    v3 = (await client.post(f"{API}/letters/versions")).json()  # images without a class stay out
    assert v3["images"] == 4 and v3["splits"]["train"]["classes"] == {"b": {"images": 3, "instances": 3}}
    assert (await client.get(f"{API}/letters/samples?no_labels=true")).json()["total"] == 2


async def test_the_python_client_lists_uploads_annotates_and_freezes(lib_settings: Settings, tmp_path: Path) -> None:
    import anyio

    from tests.auth_support import ADMIN, ADMIN_PASSWORD
    from tests.integration.rest_helpers import served_gateway
    from trainforge.client import Client, Invalid

    folder = make_detect_dataset(tmp_path / "data" / "rects", n_train=4, n_val=2, imgsz=64).parent
    (tmp_path / "new.png").write_bytes(_png())

    def tour(url: str) -> None:
        with Client.login(url, ADMIN, ADMIN_PASSWORD) as client:
            client.upload_dataset(folder, "rects")
            samples = list(client.samples("rects", split="train"))
            assert len(samples) == 4 and not list(client.samples("rects", no_labels=True))
            (added,) = client.upload_samples("rects", [tmp_path / "new.png"], split="val",
                                             annotations=[[{"class": "b", "box": [1, 2, 30, 40]}]])
            assert (added.split, added.annotations) == ("val", [{"class": "b", "box": [1.0, 2.0, 30.0, 40.0]}])
            changed = client.set_annotations("rects", samples[0], [{"class": "a", "box": [0, 0, 64, 64]}])
            assert changed.annotations == [{"class": "a", "box": [0.0, 0.0, 64.0, 64.0]}]
            with pytest.raises(Invalid) as bad:
                client.set_annotations("rects", samples[0], [{"class": "zebra", "box": [0, 0, 1, 1]}])
            assert set(bad.value.fields) == {"annotations[0].class"}
            version = client.create_version("rects")
            assert version.ref == "rects:2" and version.changes and version.changes["totals"]["added"] == 1
            assert [v.number for v in client.dataset_versions("rects")] == [2, 1]

    async with served_gateway(lib_settings) as url:
        await anyio.to_thread.run_sync(tour, url)


async def test_odd_input_to_the_curation_routes_is_a_4xx_problem_and_changes_nothing(
    client: AsyncTestClient, tmp_path: Path
) -> None:
    await _register(client, tmp_path)
    sample = (await _samples(client))["items"][0]
    s = f"{API}/rects/samples/{sample['id']}"
    put = [[1], [{"class": "a", "box": ["x", 1, 2, 3]}], [{"class": "a", "box": [1e308, 1, 2, 3]}],
           [{"class": None, "box": [1, 1, 2, 2]}], [{"class": "a", "box": [1, 1, 2]}], [{"class": 1.5, "box": [1, 1, 2, 2]}],
           [{"class": -1, "box": [1, 1, 2, 2]}], [{"class": "a", "box": [1, 1, 2, 2], "polygon": [[1]]}], "boxes"]
    calls = [client.put(f"{s}/annotations", json={"annotations": body}) for body in put] + [
        client.put(f"{s}/annotations", content=b"{", headers={"content-type": "application/json"}),
        client.patch(s, json={"split": "holdout"}), client.patch(s, json={"tags": ["a\u0000b"]}),
        client.patch(s, json={"name": "../x"}), client.patch(s, json={"owner": "me"}),
        client.get(f"{API}/rects/samples?split=holdout"), client.get(f"{API}/rects/samples?no_labels=maybe"),
        client.get(f"{API}/rects/samples?class=a%00b"), client.get(f"{API}/rects/samples?limit=0"),
        client.get(f"{API}/rects/samples/nope"), client.get(f"{API}/rects/versions/0"),
        client.get(f"{API}/rects/versions/99999999999"), client.delete(f"{API}/rects/versions/-1"),
        client.post(f"{API}/rects/classes", json={"name": ".."}), client.post(f"{API}/rects/classes", json={}),
        client.post(f"{API}/rects/classes/a/merge", json={"into": "a"}),
        client.post(f"{API}/rects/samples", json={"file": "x"}),
        client.post(f"{API}/rects/samples", files=[("file", ("x.png", _png(), "image/png"))], data={"split": "x"}),
        client.post(f"{API}/rects/samples", files=[("file", ("x.png", _png(), "image/png"))],
                    data={"annotations": "{"}),
        client.post(f"{API}/rects/samples", files=[("file", ("x.png", _png(), "image/png"))],
                    data={"annotations": "5"}),
        client.post(f"{API}/rects/samples", files=[("file", ("x.png", _png(), "image/png"))],
                    data={"annotations": json.dumps({"other.png": []})}),
        client.post(f"{API}/rects/samples", files=[("file", ("x.txt", b"text", "text/plain"))]),
        client.post(f"{API}/rects/samples", files=[("nofile", ("x.png", _png(), "image/png"))]),
        client.post(f"{API}/rects/samples", data={"split": "train"}),
    ]
    for call in calls:
        response = await call
        assert 400 <= response.status_code < 500, f"{response.request.method} {response.request.url}: {response.text}"
        assert response.headers["content-type"].startswith("application/problem+json"), response.text
    after = (await client.get(s)).json()
    assert (after["annotations"], after["split"], after["tags"], after["name"]) == (
        sample["annotations"], sample["split"], [], sample["name"])
    assert (await _samples(client))["total"] == 6
    assert (await client.get(f"{API}/rects")).json()["classes"] == ["a", "b"]


@pytest.mark.slow
async def test_a_training_on_name_2_records_version_2_on_the_run_its_weights_and_its_model(
    lib_settings: Settings, tmp_path: Path
) -> None:
    from tests.integration.runner_support import running_agent

    async with api(lib_settings) as client:
        await _register(client, tmp_path)
        await new_project(client, "p")
        sample = (await _samples(client, "?split=train"))["items"][0]
        relabelled = await client.put(f"{API}/rects/samples/{sample['id']}/annotations",
                                      json={"annotations": [{"class": "b", "box": [4, 4, 40, 30]}]})
        assert relabelled.status_code == 200, relabelled.text
        assert (await client.post(f"{API}/rects/versions")).json()["changes"]["relabelled"] == [sample["id"]]
        async with running_agent(lib_settings):
            created = await client.post("/api/v1/projects/p/runs", json={
                "kind": "yolo.train", "dataset": "rects:2", "model": "yolov8n.yaml", "epochs": 1, "imgsz": 64,
                "batch": 4, "device": "cpu", "register_as": "rects-model",
                "extra": {"mosaic": 0.0, "plots": False}})
            assert created.status_code == 201, created.text
            run_id = created.json()["id"]

            async def registered() -> Any:
                run = (await client.get(f"/api/v1/runs/{run_id}")).json()
                assert run["status"] not in ("failed", "canceled"), run
                return run if run["status"] == "completed" and run["registration"] else None

            run = await until(registered, timeout=600)
        assert run["spec"]["dataset_version"] == 2 and run["options"]["dataset_version"] == 2
        assert run["registration"]["model"] == "rects-model", run["registration"]
        model = (await client.get("/api/v1/models/rects-model")).json()
        version = model["versions"][0]
        assert (version["dataset_id"], version["dataset_version"]) == (run["spec"]["dataset_id"], 2)
        artifacts = (await client.get(f"/api/v1/runs/{run_id}/artifacts")).json()["items"]
        weights = [a for a in artifacts if a["kind"] == "weights"]
        assert weights and all(a["meta"]["dataset_version"] == 2 for a in weights), weights
        assert (await client.get(f"{API}/rects/versions/2")).json()["used_by_models"] == 1
        problem(await client.delete(f"{API}/rects/versions/2"), 409)  # a model version was trained on it
        assert (await client.delete(f"{API}/rects/versions/1")).status_code == 204  # nothing uses it


async def test_the_migration_makes_every_ready_dataset_its_version_1(settings: Settings) -> None:
    import importlib.util

    import anyio
    from alembic import command

    from migrations import HERE, alembic_config, upgrade

    spec = importlib.util.spec_from_file_location("curation_migration", HERE / "versions" / "2026_12_03_curation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    url = settings.database_url or ""
    await anyio.to_thread.run_sync(command.downgrade, alembic_config(url), module.down_revision)
    await sql(settings, "insert into datasets (id, name, source, status, root_path, data_yaml, classes) values "
                        "('d1', 'old', 'path', 'ready', '/x/prepared', '/x/prepared/data.yaml', '[\"a\"]'), "
                        "('d2', 'half', 'upload', 'preparing', null, null, '[]')")
    await anyio.to_thread.run_sync(upgrade, url)
    versions = await sql(settings, "select dataset_id, number, data_yaml, materialised from dataset_versions")
    assert [tuple(v) for v in versions] == [("d1", 1, "/x/prepared/data.yaml", False)]
    assert sorted(tuple(r) for r in await sql(settings, "select id, last_version from datasets")) == [
        ("d1", 1), ("d2", 0)]
