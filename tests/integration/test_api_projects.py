"""Projects over REST: create, find by id or name, list, change, archive, delete; odd input never a 500."""

from __future__ import annotations

import pytest

from shared.settings import Settings
from tests.integration.rest_helpers import api, new_project, problem, set_run, start_run

P = "/api/v1/projects"


async def test_project_is_created_and_found_by_id_or_by_name(settings: Settings) -> None:
    async with api(settings) as client:
        created = await new_project(client, "llama-ft", description="d", objective="o", task_type="sft",
                                    owner="ana", dataset_name="alpaca", training_yaml_name="train.yaml",
                                    tags=["a", "b"])
        assert created["status"] == "active" and created["runs_started"] == 0
        assert created["tags"] == ["a", "b"] and created["created_at"] and created["updated_at"]
        by_id = (await client.get(f"{P}/{created['id']}")).json()
        by_name = (await client.get(f"{P}/llama-ft")).json()
    assert by_id == by_name == created


async def test_duplicate_project_name_is_a_conflict(settings: Settings) -> None:
    async with api(settings) as client:
        await new_project(client, "dup")
        problem(await client.post(P, json={"name": "dup"}), 409)
        other = await new_project(client, "other")
        problem(await client.patch(f"{P}/{other['id']}", json={"name": "dup"}), 409)


async def test_patch_changes_only_the_fields_sent_and_archives(settings: Settings) -> None:
    async with api(settings) as client:
        project = await new_project(client, "p1", description="old", owner="bo")
        response = await client.patch(f"{P}/p1", json={"description": "new", "status": "archived"})
        assert response.status_code == 200, response.text
        changed = response.json()
        assert changed["description"] == "new" and changed["owner"] == "bo" and changed["status"] == "archived"
        assert changed["updated_at"] >= project["updated_at"]
        renamed = (await client.patch(f"{P}/p1", json={"name": "p2"})).json()
        assert renamed["id"] == project["id"] and renamed["name"] == "p2"
        problem(await client.get(f"{P}/p1"), 404)


async def test_patch_rejects_unknown_fields_and_bad_values(settings: Settings) -> None:
    async with api(settings) as client:
        await new_project(client, "p")
        body = problem(await client.patch(f"{P}/p", json={"colour": "red"}), 422)
        assert body["errors"] and "colour" in body["errors"][0]["message"]
        problem(await client.patch(f"{P}/p", json={"status": "deleted"}), 422)
        problem(await client.patch(f"{P}/p", json={"runs_started": 7}), 422)
        problem(await client.patch(f"{P}/p", json={"tags": "x"}), 422)
        problem(await client.patch(f"{P}/p", json={"description": None}), 422)
        problem(await client.patch("/api/v1/projects/nope", json={}), 404)


async def test_run_cannot_start_in_an_archived_project(settings: Settings) -> None:
    async with api(settings) as client:
        await new_project(client, "arch")
        await client.patch(f"{P}/arch", json={"status": "archived"})
        assert "archived" in problem(await start_run(client, "arch"), 409)["detail"]
        await client.patch(f"{P}/arch", json={"status": "active"})
        assert (await start_run(client, "arch")).status_code == 201
        assert (await client.get(f"{P}/arch")).json()["runs_started"] == 1


async def test_delete_project_with_an_active_run_is_a_conflict_then_cascades(settings: Settings) -> None:
    async with api(settings) as client:
        await new_project(client, "gone")
        run = (await start_run(client, "gone")).json()
        problem(await client.delete(f"{P}/gone"), 409)
        await set_run(settings, run["id"], status="completed")
        assert (await client.delete(f"{P}/gone")).status_code == 204
        problem(await client.get(f"{P}/gone"), 404)
        problem(await client.get(f"/api/v1/runs/{run['id']}"), 404)
        problem(await client.delete(f"{P}/gone"), 404)


async def test_projects_list_newest_first_with_paging_and_status_filter(settings: Settings) -> None:
    async with api(settings) as client:
        for i in range(5):
            await new_project(client, f"p{i}")
        await client.patch(f"{P}/p1", json={"status": "archived"})
        page = (await client.get(P, params={"limit": 2, "offset": 1})).json()
        assert [p["name"] for p in page["items"]] == ["p3", "p2"]
        assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)
        archived = (await client.get(P, params={"status": "archived"})).json()
        assert [p["name"] for p in archived["items"]] == ["p1"] and archived["total"] == 1
        problem(await client.get(P, params={"status": "bogus"}), 400)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "has space"},
        {"name": "-leading-dash"},
        {"name": "x" * 129},
        {"name": 5},
        {"name": "ok", "unknown": 1},
        {"name": "ok", "tags": [""]},
        {"name": "ok", "tags": ["t"] * 51},
        {"name": "ok", "description": "nul\u0000byte"},
        {"name": "ok\n"},
        [],
        "name",
    ],
)
async def test_invalid_project_bodies_are_422_with_field_errors(settings: Settings, body: object) -> None:
    async with api(settings) as client:
        error = problem(await client.post(P, json=body), 422)
    assert error["code"] == "validation_error" and error["errors"][0]["message"]


async def test_malformed_json_wrong_content_type_and_odd_params_are_client_errors(settings: Settings) -> None:
    async with api(settings) as client:
        problem(await client.post(P, content=b'{"name": ', headers={"content-type": "application/json"}), 400)
        problem(await client.post(P, content=b"name=x", headers={"content-type": "application/x-www-form-urlencoded"}),
                400)
        problem(await client.get(P, params={"limit": 10**9}), 400)
        problem(await client.get(P, params={"limit": 0}), 400)
        problem(await client.get(P, params={"limit": "many"}), 400)
        problem(await client.get(P, params={"offset": -1}), 400)
        problem(await client.get(P, params={"offset": 10**30}), 400)
        for ref in ["no-such", "%00", "a%20b", "x" * 300, "..", "%F0%9F%92%A5"]:
            assert (await client.get(f"{P}/{ref}")).status_code in (400, 404), ref
        problem(await client.post(P, json={"name": "k"}, headers={"Idempotency-Key": "k" * 256}), 400)
