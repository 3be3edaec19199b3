"""Isolation between users, checked on every route of the application's route table (so a route added later
is checked too): anonymous callers get 401 everywhere but the public routes; a second user gets exactly the
answer a resource that does not exist would get (never 2xx, never a 403 that would confirm it exists), and
lists and fleet views never show the first user's things."""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient
from PIL import Image

from gateway.auth.access import admin_only
from gateway.auth.middleware import PUBLIC_PATHS
from shared.settings import Settings
from tests.auth_support import bearer, create_user
from tests.dataset_factories import make_yolo_yaml, zip_folder
from tests.integration.rest_helpers import api
from tests.library_support import sql

pytestmark = pytest.mark.slow  # builds a full set of resources for one user; ~15 s

SECRET = "zz-alice-secret"
"""Part of every name alice gives: it must never appear in what bob or the fleet views show him."""


def http_routes(app: Litestar) -> list[tuple[str, str, HTTPRoute, Any]]:
    """(method, path, route, handler) for every HTTP route of the app (HEAD/OPTIONS aside)."""
    found = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            for method in sorted(handler.http_methods - {"HEAD", "OPTIONS"}):
                found.append((method, route.path, route, handler))
    return found


def is_public(path: str) -> bool:
    return any(re.search(pattern, path) for pattern in PUBLIC_PATHS)


def admin_guarded(handler: Any) -> bool:
    return any(guard is admin_only for layer in handler.ownership_layers for guard in (layer.guards or []))


def fill(path: str, ids: dict[str, str]) -> str:
    """The path with each `{name:type}` replaced by the resource of that name for the path's collection."""
    collection = path.removeprefix("/api/v1/").split("/")[0]

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        return ids.get(f"{collection}.{name}") or ids[name]

    return re.sub(r"\{(\w+):\w+\}", value, path)


async def alice_resources(client: AsyncTestClient, settings: Settings, tmp_path: Path, token: str) -> dict[str, str]:  # type: ignore[type-arg]
    """Everything alice can own, made through the API where a user can make it, else as rows."""
    me = bearer(token)
    alice_id = (await client.get("/api/v1/auth/me", headers=me)).json()["id"]
    project = (await client.post("/api/v1/projects", json={"name": f"{SECRET}-project"}, headers=me)).json()
    make_yolo_yaml(tmp_path / "ds", n_train=2, n_val=1)
    archive = zip_folder(tmp_path / "ds", tmp_path / "ds.zip")
    dataset = await client.post("/api/v1/datasets", data={"name": f"{SECRET}-data"}, headers=me,
                                files={"file": ("ds.zip", archive.read_bytes(), "application/zip")})
    assert dataset.status_code == 201, dataset.text
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    upload = await client.post("/api/v1/uploads", headers=me, files={"file": ("a.png", png.getvalue(), "image/png")})
    assert upload.status_code == 201, upload.text
    config = await client.post(f"/api/v1/projects/{project['id']}/configs", headers=me,
                               json={"name": f"{SECRET}-cfg", "kind": "yolo.train", "params": {"epochs": 1}})
    assert config.status_code == 201, config.text
    api_token = (await client.post("/api/v1/tokens", json={"name": f"{SECRET}-token"}, headers=me)).json()
    run_id, checkpoint_id, artifact_id, model_id = (uuid.uuid4().hex for _ in range(4))
    await sql(settings, "insert into runs (id, project_id, kind, pool, status, spec, progress, latest_metrics, "
                        "attempt, cancel_requested, gateway_seq, priority, owner_id) values (:id, :p, 'container', "
                        "'cpu', 'completed', '{\"kind\": \"container\"}', 1, '{}', 1, false, 1, 50, :o)",
              id=run_id, p=project["id"], o=alice_id)
    await sql(settings, "insert into checkpoints (id, run_id, attempt, uri, resumable, meta, created_at) "
                        "values (:id, :r, 1, 'file:///nowhere', true, '{}', now())", id=checkpoint_id, r=run_id)
    await sql(settings, "insert into artifacts (id, run_id, project_id, name, kind, uri, meta, created_at) "
                        "values (:id, :r, :p, 'x.txt', 'file', 'file:///nowhere', '{}', now())",
              id=artifact_id, r=run_id, p=project["id"])
    await sql(settings, "insert into models (id, name, task, description, owner_id, last_version) "
                        "values (:id, :n, 'detect', '', :o, 1)", id=model_id, n=f"{SECRET}-model", o=alice_id)
    await sql(settings, "insert into model_versions (id, model_id, version, uri, size_bytes, sha256, task, "
                        "class_names, metrics, format) values (:id, :m, 1, 'file:///nowhere', 1, '', 'detect', "
                        "'[]', '{}', 'pt')", id=uuid.uuid4().hex, m=model_id)
    await sql(settings, "insert into architectures (id, name, description, yaml, task, summary, owner_id) "
                        "values (:id, :n, '', 'x', 'detect', '{}', :o)", id=uuid.uuid4().hex, n=f"{SECRET}-arch",
              o=alice_id)
    samples = await client.get(f"/api/v1/datasets/{dataset.json()['id']}/samples", headers=me)
    assert samples.status_code == 200, samples.text
    return {
        "datasets.sample_id": samples.json()["items"][0]["id"], "number": "1",
        "projects.ref": project["id"], "datasets.ref": dataset.json()["id"], "models.ref": model_id,
        "architectures.ref": f"{SECRET}-arch", "users.ref": "alice", "run_id": run_id, "artifact_id": upload.json()["id"],
        "upload_id": upload.json()["id"],
        "name": f"{SECRET}-cfg", "username": "alice", "token_id": api_token["id"], "runner_id": "no-such-runner",
        "webhook_id": "no-such-webhook", "sweep_id": "no-such-sweep",
        "version": "1", "split": "train", "index": "0", "run_artifact": artifact_id,
        "dataset": dataset.json()["id"], "model": model_id,
    }


def nonexistent(ids: dict[str, str]) -> dict[str, str]:
    """The same shape of ids, for resources that do not exist."""
    fresh = {k: uuid.uuid4().hex for k in ids}
    fresh.update({"version": "1", "number": "1", "split": "train", "index": "0", "username": "nobody-here",
                  "users.ref": "nobody-here"})
    return fresh


BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/api/v1/projects/{ref:str}/datasets"): {"dataset": f"{SECRET}-data"},
    ("POST", "/api/v1/projects/{ref:str}/models"): {"model": f"{SECRET}-model"},
    ("POST", "/api/v1/datasets/{ref:str}/augment"): {"count": 1, "imgsz": 64},
    ("POST", "/api/v1/projects/{ref:str}/runs"): {"kind": "container", "backend": "docker", "target": "t",
                                                  "start_command": "true"},
    ("PATCH", "/api/v1/projects/{ref:str}"): {"description": "mine now"},
    ("PUT", "/api/v1/projects/{ref:str}/members/{username:str}"): {"role": "owner"},
    ("POST", "/api/v1/projects/{ref:str}/configs"): {"name": "c", "kind": "yolo.train", "params": {}},
    ("POST", "/api/v1/projects/{ref:str}/webhooks"): {"url": "https://8.8.8.8/hook"},
    ("POST", "/api/v1/projects/{ref:str}/sweeps"): {"spec": {"dataset": "d"}, "space": {"lr0": [0.01]}},
    ("PATCH", "/api/v1/datasets/{ref:str}/samples/{sample_id:str}"): {"split": "val"},
    ("PUT", "/api/v1/datasets/{ref:str}/samples/{sample_id:str}/annotations"): {"annotations": []},
    ("POST", "/api/v1/datasets/{ref:str}/classes"): {"name": "x"},
    ("PATCH", "/api/v1/datasets/{ref:str}/classes/{name:str}"): {"name": "x"},
    ("POST", "/api/v1/datasets/{ref:str}/classes/{name:str}/merge"): {"into": "x"},
}
"""Valid bodies where the route has one: bob's request must fail on access, not on validation."""


async def test_every_route_isolates_users_and_needs_auth(settings: Settings, tmp_path: Path) -> None:
    async with api(settings) as client:
        alice = await create_user(client, "alice")
        bob = await create_user(client, "bob")
        ids = await alice_resources(client, settings, tmp_path, alice)
        missing = nonexistent(ids)
        routes = http_routes(client.app)
        assert len(routes) > 60
        checked = 0
        for method, path, _route, handler in routes:
            if not path.startswith("/api/v1") or is_public(path):
                continue
            body = BODIES.get((method, path), {} if method in ("POST", "PUT", "PATCH") else None)
            target = fill(path, ids)
            anonymous = await client.request(method, target, json=body, headers={"Authorization": ""})
            assert anonymous.status_code == 401, f"{method} {path} answers {anonymous.status_code} without a token"
            assert anonymous.json()["code"] == "unauthorized"

            if path == "/api/v1/auth/logout" or (method, path) == ("DELETE", "/api/v1/auth/session"):
                continue  # would end bob's session; logout only ever touches the caller's own
            if path.endswith("/events") and "{" not in path:
                continue  # a fleet-wide live stream (host samples): it has no user's data and never ends
            as_bob = await client.request(method, target, json=body, headers=bearer(bob))
            where = f"{method} {target} ({path}) as bob: {as_bob.status_code} {as_bob.text[:300]}"
            assert SECRET not in as_bob.text.replace(target, "").replace(target.rsplit("/", 1)[-1], ""), where
            if admin_guarded(handler):
                assert as_bob.status_code == 403, where
            elif "{" in path:
                # alice's resource looks exactly like one that does not exist
                ghost = await client.request(method, fill(path, missing), json=body, headers=bearer(bob))
                assert as_bob.status_code == ghost.status_code, f"{where}; a missing one: {ghost.status_code}"
                assert as_bob.json().get("code") == ghost.json().get("code"), where
                assert as_bob.status_code not in (200, 201, 202, 204, 206, 403), where
            checked += 1
        assert checked > 50


async def test_alice_reaches_her_own_resources(settings: Settings, tmp_path: Path) -> None:
    """The same ids are real: alice gets them (so the matrix above checks real resources)."""
    async with api(settings) as client:
        alice = await create_user(client, "alice")
        ids = await alice_resources(client, settings, tmp_path, alice)
        for path in ("/api/v1/projects/{ref:str}", "/api/v1/datasets/{ref:str}", "/api/v1/models/{ref:str}",
                     "/api/v1/architectures/{ref:str}", "/api/v1/runs/{run_id:str}",
                     "/api/v1/artifacts/{artifact_id:str}", "/api/v1/projects/{ref:str}/configs/{name:str}",
                     "/api/v1/datasets/{ref:str}/samples/{sample_id:str}", "/api/v1/datasets/{ref:str}/versions",
                     "/api/v1/datasets/{ref:str}/versions/{number:int}"):
            response = await client.get(fill(path, ids), headers=bearer(alice))
            assert response.status_code == 200, f"{path}: {response.text}"
        run_artifact = await client.get(f"/api/v1/artifacts/{ids['run_artifact']}", headers=bearer(alice))
        assert run_artifact.status_code == 200


async def test_project_members_read_the_datasets_and_models_it_links_and_change_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    """alice links her dataset and model to her project: bob, a viewer of it, may read them (not change,
    delete or link them elsewhere); carol, no member, gets 404 as before; unlinked, bob gets 404 again."""
    async with api(settings) as client:
        alice, bob, carol = [bearer(await create_user(client, name)) for name in ("alice", "bob", "carol")]
        alice_id = (await client.get("/api/v1/auth/me", headers=alice)).json()["id"]
        project = (await client.post("/api/v1/projects", json={"name": "shared-work"}, headers=alice)).json()
        mine = (await client.post("/api/v1/projects", json={"name": "bobs-own"}, headers=bob)).json()
        make_yolo_yaml(tmp_path / "ds", n_train=2, n_val=1)
        archive = zip_folder(tmp_path / "ds", tmp_path / "ds.zip")
        dataset = (await client.post("/api/v1/datasets", data={"name": "alices-data"}, headers=alice,
                                     files={"file": ("ds.zip", archive.read_bytes(), "application/zip")})).json()
        model_id = uuid.uuid4().hex
        await sql(settings, "insert into models (id, name, task, description, owner_id, last_version) "
                            "values (:id, 'alices-model', 'detect', '', :o, 1)", id=model_id, o=alice_id)
        await sql(settings, "insert into model_versions (id, model_id, version, uri, size_bytes, sha256, task, "
                            "class_names, metrics, format) values (:id, :m, 1, 'file:///nowhere', 1, '', 'detect', "
                            "'[]', '{}', 'pt')", id=uuid.uuid4().hex, m=model_id)
        reads = [f"/api/v1/datasets/{dataset['id']}", f"/api/v1/datasets/{dataset['id']}/images",
                 f"/api/v1/datasets/{dataset['id']}/images/train/0/file", f"/api/v1/datasets/{dataset['id']}/stats",
                 f"/api/v1/models/{model_id}", f"/api/v1/models/{model_id}/versions/1"]
        writes = [("DELETE", f"/api/v1/datasets/{dataset['id']}", None), ("DELETE", f"/api/v1/models/{model_id}", None),
                  ("DELETE", f"/api/v1/models/{model_id}/versions/1", None),
                  ("POST", f"/api/v1/projects/{mine['id']}/datasets", {"dataset": dataset["id"]}),
                  ("POST", f"/api/v1/projects/{mine['id']}/models", {"model": model_id})]
        links = f"/api/v1/projects/{project['id']}"

        async def bob_reads(expected: int) -> None:
            for path in reads:
                response = await client.get(path, headers=bob)
                assert response.status_code == expected, f"{path}: {response.status_code} {response.text[:200]}"

        await bob_reads(404)
        assert (await client.post(f"{links}/datasets", json={"dataset": "alices-data"}, headers=bob)).status_code == 404
        assert (await client.post(f"{links}/datasets", json={"dataset": "alices-data"}, headers=alice)).status_code == 201
        assert (await client.post(f"{links}/datasets", json={"dataset": "alices-data"}, headers=alice)).status_code == 201
        assert (await client.post(f"{links}/models", json={"model": "alices-model"}, headers=alice)).status_code == 201
        await bob_reads(404)  # linked, but bob is no member yet
        member = await client.put(f"{links}/members/bob", json={"role": "viewer"}, headers=alice)
        assert member.status_code == 200, member.text

        await bob_reads(200)
        listed = (await client.get(f"{links}/datasets", headers=bob)).json()
        assert [d["name"] for d in listed["items"]] == ["alices-data"] and listed["items"][0]["images"] == 3
        models = (await client.get(f"{links}/models", headers=bob)).json()
        assert [(m["name"], m["versions_count"]) for m in models["items"]] == [("alices-model", 1)]
        for method, path, body in writes:
            response = await client.request(method, path, json=body, headers=bob)
            assert response.status_code == 404, f"{method} {path}: {response.status_code} {response.text[:200]}"
        assert (await client.delete(f"{links}/datasets/alices-data", headers=bob)).status_code == 403  # a viewer
        for path in [*reads, f"{links}/datasets", f"{links}/models"]:
            assert (await client.get(path, headers=carol)).status_code == 404, path
        assert SECRET not in str((await client.get("/api/v1/datasets", headers=bob)).json())
        assert (await client.get("/api/v1/datasets", headers=bob)).json()["total"] == 0  # his own list stays his

        assert (await client.delete(f"{links}/datasets/alices-data", headers=alice)).status_code == 204
        assert (await client.delete(f"{links}/models/{model_id}", headers=alice)).status_code == 204
        assert (await client.delete(f"{links}/models/{model_id}", headers=alice)).status_code == 404
        await bob_reads(404)
        assert (await client.get(f"/api/v1/datasets/{dataset['id']}", headers=alice)).status_code == 200  # it stays
        assert (await client.get(f"{links}/datasets", headers=bob)).json() == {"items": [], "total": 0}
