"""Users and access through the REST API: login, refresh, logout, API tokens, sign-up, roles in a project,
per-user data roots, rate limits with Retry-After, and the audit log."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
from sqlalchemy import func, update

from gateway.db.models import ApiToken
from shared.settings import Settings
from tests.auth_support import ADMIN_PASSWORD, PASSWORD, bearer, create_user, login
from tests.dataset_factories import make_yolo_yaml
from tests.integration.rest_helpers import api, database, problem


async def test_login_gives_tokens_that_work_until_logout_and_refresh_rotates(settings: Settings) -> None:
    async with api(settings) as client:
        await create_user(client, "carol")
        pair = await login(client, "carol", PASSWORD)
        assert pair["token_type"] == "Bearer" and pair["expires_in"] == 900
        me = await client.get("/api/v1/auth/me", headers=bearer(pair["access_token"]))
        assert me.json()["username"] == "carol" and not me.json()["is_admin"]

        refreshed = (await client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})).json()
        assert refreshed["refresh_token"] != pair["refresh_token"]
        reused = await client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert problem(reused, 401)["code"] == "unauthorized"  # a refresh token works once

        token = refreshed["access_token"]
        assert (await client.post("/api/v1/auth/logout", headers=bearer(token))).status_code == 204
        assert (await client.get("/api/v1/auth/me", headers=bearer(token))).status_code == 401
        assert (await client.post("/api/v1/auth/refresh",
                                  json={"refresh_token": refreshed["refresh_token"]})).status_code == 401


async def test_wrong_password_unknown_user_and_disabled_user_get_the_same_401(settings: Settings) -> None:
    async with api(settings) as client:
        token = await create_user(client, "dave")
        answers = []
        for username, password in (("dave", "wrong password"), ("nobody", PASSWORD)):
            response = await client.post("/api/v1/auth/login", json={"username": username, "password": password})
            answers.append((response.status_code, response.json()["detail"]))
        assert answers[0] == answers[1] == (401, "wrong username or password")

        disabled = await client.patch("/api/v1/users/dave", json={"disabled": True})
        assert disabled.json()["disabled"] is True
        assert (await client.get("/api/v1/auth/me", headers=bearer(token))).status_code == 401
        refused = await client.post("/api/v1/auth/login", json={"username": "dave", "password": PASSWORD})
        assert refused.json()["detail"] == "wrong username or password"


async def test_api_tokens_are_shown_once_work_and_stop_when_revoked(settings: Settings) -> None:
    async with api(settings) as client:
        created = await client.post("/api/v1/tokens", json={"name": "ci"})
        assert created.status_code == 201
        token = created.json()["token"]
        assert token.startswith("tfp_")
        listed = (await client.get("/api/v1/tokens")).json()
        assert [t["name"] for t in listed] == ["ci"] and "token" not in listed[0]
        assert (await client.get("/api/v1/projects", headers=bearer(token))).status_code == 200
        assert (await client.delete(f"/api/v1/tokens/{created.json()['id']}")).status_code == 204
        gone = await client.get("/api/v1/projects", headers=bearer(token))
        assert problem(gone, 401)["detail"].startswith("the API token is not valid")


async def test_requests_without_a_valid_token_get_401_but_health_does_not(settings: Settings) -> None:
    async with api(settings) as client:
        client.headers.pop("Authorization")
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/schema/openapi.json")).status_code == 200
        for headers in ({}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic YWRtaW46eA=="}):
            response = await client.get("/api/v1/projects", headers=headers)
            assert problem(response, 401)["code"] == "unauthorized"
        # an EventSource cannot send headers: the SSE endpoints take ?access_token=
        token = (await login(client))["access_token"]
        project = (await client.post("/api/v1/projects", json={"name": "p"}, headers=bearer(token))).json()
        assert (await client.get(f"/api/v1/projects/{project['id']}?access_token={token}")).status_code == 401


async def test_sign_up_is_closed_unless_enabled(settings: Settings) -> None:
    body = {"username": "eve", "password": PASSWORD}
    async with api(settings) as client:
        assert problem(await client.post("/api/v1/auth/signup", json=body), 403)["code"] == "forbidden"
    async with api(msgspec.structs.replace(settings, open_signup=True)) as client:
        assert (await client.post("/api/v1/auth/signup", json=body)).status_code == 201
        assert (await login(client, "eve", PASSWORD))["user"]["is_admin"] is False


async def test_only_admins_manage_users_and_read_the_audit_log(settings: Settings) -> None:
    async with api(settings) as client:
        token = await create_user(client, "frank")
        for method, path in (("GET", "/api/v1/users"), ("POST", "/api/v1/users"), ("GET", "/api/v1/audit")):
            response = await client.request(method, path, headers=bearer(token),
                                            json={"username": "x1", "password": PASSWORD} if method == "POST" else None)
            assert problem(response, 403)["code"] == "forbidden"
        users = (await client.get("/api/v1/users")).json()
        assert [u["username"] for u in users["items"]] == ["admin", "frank"]
        mine = await client.patch("/api/v1/users/admin", json={"is_admin": False})
        assert problem(mine, 409)["detail"].startswith("you cannot remove your own admin role")


async def test_project_roles_viewer_reads_member_runs_owner_manages(settings: Settings) -> None:
    async with api(settings) as client:
        owner, member, viewer, outsider = [await create_user(client, n) for n in ("olga", "mike", "vera", "otto")]
        project = (await client.post("/api/v1/projects", json={"name": "shared"}, headers=bearer(owner))).json()
        base = f"/api/v1/projects/{project['id']}"
        for name, role in (("mike", "member"), ("vera", "viewer")):
            added = await client.put(f"{base}/members/{name}", json={"role": role}, headers=bearer(owner))
            assert added.json()["role"] == role
        members = (await client.get(f"{base}/members", headers=bearer(viewer))).json()
        assert {(m["username"], m["role"]) for m in members} == {("olga", "owner"), ("mike", "member"),
                                                                 ("vera", "viewer")}
        config = {"name": "c1", "kind": "yolo.train", "params": {"epochs": 1}}
        assert (await client.post(f"{base}/configs", json=config, headers=bearer(member))).status_code == 201
        assert problem(await client.post(f"{base}/configs", json={**config, "name": "c2"}, headers=bearer(viewer)),
                       403)["code"] == "forbidden"
        assert (await client.get(f"{base}/configs/c1", headers=bearer(viewer))).status_code == 200
        assert problem(await client.patch(base, json={"description": "x"}, headers=bearer(member)), 403)
        assert problem(await client.get(base, headers=bearer(outsider)), 404)
        # the project appears in each member's list and in no one else's
        for token, sees in ((owner, True), (member, True), (viewer, True), (outsider, False)):
            names = [p["name"] for p in (await client.get("/api/v1/projects", headers=bearer(token))).json()["items"]]
            assert ("shared" in names) is sees
        # the last owner stays; a member may leave
        assert problem(await client.delete(f"{base}/members/olga", headers=bearer(owner)), 409)
        assert (await client.delete(f"{base}/members/mike", headers=bearer(member))).status_code == 204
        assert problem(await client.get(base, headers=bearer(member)), 404)


async def test_two_users_may_use_the_same_names(settings: Settings) -> None:
    async with api(settings) as client:
        first, second = await create_user(client, "ann"), await create_user(client, "ben")
        for token in (first, second):
            assert (await client.post("/api/v1/projects", json={"name": "same"}, headers=bearer(token))).status_code == 201
        again = await client.post("/api/v1/projects", json={"name": "same"}, headers=bearer(first))
        assert problem(again, 409)["detail"] == "you already have a project named 'same'"


async def test_a_users_server_paths_stay_inside_their_own_data_root(settings: Settings, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_yolo_yaml(root / "gail" / "mine", 2, 1)
    make_yolo_yaml(root / "hank" / "theirs", 2, 1)
    async with api(msgspec.structs.replace(settings, data_roots=[root])) as client:
        gail = await create_user(client, "gail")
        ok = await client.post("/api/v1/datasets", json={"name": "d", "path": str(root / "gail" / "mine")},
                               headers=bearer(gail))
        assert ok.status_code == 201, ok.text
        for path in (root / "hank" / "theirs", root / "gail" / ".." / "hank" / "theirs"):
            refused = await client.post("/api/v1/datasets", json={"name": "x", "path": str(path)},
                                        headers=bearer(gail))
            assert refused.status_code in (400, 403, 422) and "data root" in refused.text, refused.text
        # an admin may name any folder inside the data roots
        assert (await client.post("/api/v1/datasets", json={"name": "t", "path": str(root / "hank" / "theirs")}
                                  )).status_code == 201


async def test_only_admins_run_commands_on_a_runner_host(settings: Settings) -> None:
    async with api(settings) as client:
        token = await create_user(client, "ivan")
        project = (await client.post("/api/v1/projects", json={"name": "mine"}, headers=bearer(token))).json()
        refused = await client.post(f"/api/v1/projects/{project['id']}/runs", headers=bearer(token),
                                    json={"kind": "container", "backend": "local", "start_command": "id"})
        assert "only admins" in problem(refused, 403)["detail"]


async def test_login_and_writes_are_rate_limited_with_retry_after(settings: Settings) -> None:
    limited = msgspec.structs.replace(settings, rate_limit_login_per_minute=3, rate_limit_writes_per_minute=4)
    async with api(limited) as client:  # the fixture's own login was the first of 3
        await login(client)
        await login(client)
        refused = await client.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        assert problem(refused, 429)["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        answers = [(await client.post("/api/v1/projects", json={"name": f"p{i}"})).status_code for i in range(5)]
        assert answers == [201, 201, 201, 201, 429]
        assert (await client.get("/api/v1/projects")).status_code == 200  # reads are not limited


async def test_rate_limits_hold_across_gateways(settings: Settings) -> None:
    limited = msgspec.structs.replace(settings, rate_limit_writes_per_minute=4)
    async with api(limited) as first, api(limited) as second:  # two gateways on the same NATS and Postgres
        answers = [(await gateway.post("/api/v1/projects", json={"name": f"p{i}"})).status_code
                   for i, gateway in enumerate([first, second, first, second, first, second])]
        assert answers == [201, 201, 201, 201, 429, 429]


async def test_the_audit_log_records_who_did_what_and_admins_filter_it(settings: Settings) -> None:
    async with api(settings) as client:
        project = (await client.post("/api/v1/projects", json={"name": "audited"})).json()
        run = (await client.post(f"/api/v1/projects/{project['id']}/runs",
                                 json={"kind": "container", "backend": "local", "start_command": "sleep 30"})).json()
        assert (await client.post(f"/api/v1/runs/{run['id']}/cancel")).status_code == 202
        entries = (await client.get("/api/v1/audit", params={"action": "run"})).json()
        assert [(e["action"], e["actor"], e["resource_id"]) for e in entries["items"]] == [
            ("run.cancel", "admin", run["id"]), ("run.create", "admin", run["id"])]
        assert entries["items"][0]["project_id"] == project["id"] and entries["items"][0]["at"]
        await create_user(client, "judy")
        await client.post("/api/v1/tokens", json={"name": "script"})
        everything = (await client.get("/api/v1/audit", params={"actor": "admin"})).json()
        assert {"project.create", "run.create", "run.cancel", "user.create", "token.create"} <= {
            e["action"] for e in everything["items"]}
        created = (await client.get("/api/v1/audit", params={"action": "user.create"})).json()["items"]
        assert [(e["actor"], e["detail"]["username"]) for e in created] == [("admin", "judy"),
                                                                            ("system", "admin")]
        assert (await client.get("/api/v1/audit", params={"action": "DROP TABLE"})).status_code == 400


async def test_a_token_revoked_by_another_gateway_stops_working_within_the_auth_cache_time(settings: Settings) -> None:
    """Revoked straight in the database (as another gateway of the deployment would): this gateway, which
    remembers the token for `auth_cache_s`, refuses it within that bound; with the cache off, at once."""
    for ttl in (2.0, 0.0):
        async with api(msgspec.structs.replace(settings, auth_cache_s=ttl)) as client:
            created = (await client.post("/api/v1/tokens", json={"name": f"ttl-{ttl}"})).json()
            assert (await client.get("/api/v1/projects", headers=bearer(created["token"]))).status_code == 200
            async with database(settings) as sessions, sessions() as session, session.begin():
                await session.execute(update(ApiToken).where(ApiToken.id == created["id"])
                                      .values(revoked_at=func.now()))
            revoked = time.monotonic()
            while (await client.get("/api/v1/projects", headers=bearer(created["token"]))).status_code == 200:
                assert ttl > 0, "with the cache off a revoked token must fail at once"
                assert time.monotonic() - revoked < ttl + 10, "still accepted long after auth_cache_s"
                await asyncio.sleep(0.1)
