"""Requests a client can craft never hurt the gateway: every route with a body refuses JSON nested too deep
(400) or too large (413) with problem details, before authentication and before decoding, and changes
nothing; tokens in the query work on the Server-Sent Events routes only; names are whole-string matches."""

from __future__ import annotations

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from shared.contracts import RunnerHeartbeat
from shared.contracts.events import DeviceInfo
from shared.settings import Settings
from shared.subjects import Subjects
from tests.auth_support import bearer, create_user, login
from tests.integration.events_support import wait_for
from tests.integration.rest_helpers import api, bus, new_project, problem, start_run
from tests.integration.test_isolation import http_routes

DEEP = b"[" * 5000 + b"]" * 5000
DEEP_OBJECT = b'{"a":' * 3000 + b"1" + b"}" * 3000
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def concrete(path: str) -> str:
    """A path of the route table with every parameter filled with a name that does not exist."""
    import re

    return re.sub(r"\{\w+:(\w+)\}", lambda m: "1" if m.group(1) == "int" else "nothing-here", path)


def handler_streams(app, path: str, method: str) -> bool:
    (handler,) = [h for m, p, _, h in http_routes(app) if p == path and m == method]
    return handler.resolve_request_max_body_size() is None


async def test_json_nested_thousands_deep_is_a_400_on_every_route_with_a_body_signed_in_or_not(
    settings: Settings,
) -> None:
    app = create_app(settings)
    routes = [(method, path) for method, path, _, _ in http_routes(app) if method in BODY_METHODS]
    assert len(routes) > 30  # the route table, not a list kept by hand: a new route is checked too
    async with AsyncTestClient(app) as client:
        token = (await login(client))["access_token"]
        for method, path in routes:
            for headers in ({}, bearer(token)):
                for body in (DEEP, DEEP_OBJECT):
                    response = await client.request(method, concrete(path), content=body,
                                                    headers={**headers, "content-type": "application/json"})
                    assert response.status_code < 500, (method, path, response.text)
                    # upload routes read their body themselves, after authentication, as a form or JSON
                    assert response.status_code in (400, 401, 413, 415) if handler_streams(app, path, method) \
                        else response.status_code == 400, (method, path, response.text)
        # the login route, unauthenticated, is the one an attacker reaches first
        body = problem(await client.post("/api/v1/auth/login", content=DEEP,
                                         headers={"content-type": "application/json"}), 400)
        assert "nested" in body["detail"]
        # a content type that says otherwise does not get past the check
        problem(await client.post("/api/v1/projects", content=DEEP, headers={**bearer(token),
                                                                             "content-type": "text/plain"}), 400)
        assert (await client.get("/api/v1/projects", headers=bearer(token))).json()["total"] == 0


async def test_nesting_up_to_the_limit_reaches_the_decoder_and_one_level_more_does_not(settings: Settings) -> None:
    def nested(depth: int) -> bytes:  # an object holding `depth - 1` levels of arrays
        return b'{"name": "x", "description": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    async with api(settings) as client:
        at_limit = problem(await client.post("/api/v1/projects", content=nested(settings.max_json_depth),
                                             headers={"content-type": "application/json"}), 422)
        assert at_limit["errors"][0]["field"] == "description"  # decoded, then refused for its type
        over = problem(await client.post("/api/v1/projects", content=nested(settings.max_json_depth + 1),
                                         headers={"content-type": "application/json"}), 400)
        assert str(settings.max_json_depth) in over["detail"]
        # brackets inside strings are text, not nesting
        fine = await client.post("/api/v1/projects", json={"name": "brackets", "description": "[" * 5000})
        assert fine.status_code == 201, fine.text


async def test_a_json_body_over_the_size_limit_is_a_413_announced_or_not(settings: Settings) -> None:
    small = msgspec.structs.replace(settings, max_json_kb=4)
    async with api(small) as client:
        big = {"name": "big", "description": "x" * 8000}
        problem(await client.post("/api/v1/projects", json=big), 413)

        unannounced = await client.post("/api/v1/projects", content=b" " * 8000,
                                        headers={"content-type": "application/json", "content-length": "10"})
        assert unannounced.status_code in (400, 413), unannounced.text  # a lying length never reaches a 500
        assert (await client.get("/api/v1/projects")).json()["total"] == 0
        assert (await client.post("/api/v1/projects", json={"name": "fits"})).status_code == 201


async def test_a_query_token_is_taken_on_event_streams_only(settings: Settings) -> None:
    async with api(settings) as client:
        token = client.headers.pop("Authorization").removeprefix("Bearer ")
        project = (await client.post("/api/v1/projects", json={"name": "events"}, headers=bearer(token))).json()
        run = (await start_run(client, project["id"], headers=bearer(token))).json()
        query = {"access_token": token}
        # a project named "events": its path ends in /events, yet it is no stream
        for method in ("GET", "PATCH", "DELETE"):
            kwargs = {"json": {"description": "changed"}} if method == "PATCH" else {}
            problem(await client.request(method, "/api/v1/projects/events", params=query, **kwargs), 401)
        problem(await client.get("/api/v1/projects", params=query), 401)
        problem(await client.get(f"/api/v1/runs/{run['id']}", params=query), 401)
        assert (await client.get("/api/v1/projects/events", headers=bearer(token))).json()["description"] == ""
        # on a stream route the query token is taken: a stream of no run is a 404, not a 401
        problem(await client.get("/api/v1/runs/no-such-run/events", params=query), 404)
        problem(await client.get("/api/v1/projects/no-such-project/events", params=query), 404)
        problem(await client.get("/api/v1/runs/no-such-run/events"), 401)
        problem(await client.get("/api/v1/runs/no-such-run/events", params={"access_token": "tfp_forged"}), 401)


@pytest.mark.parametrize("name", ["demo\n", "demo\r\n", "de\nmo", "demo\x00", "\ndemo", "demo\t"])
async def test_names_with_control_characters_are_refused_everywhere(settings: Settings, name: str) -> None:
    async with api(settings) as client:
        problem(await client.post("/api/v1/projects", json={"name": name}), 422)
        problem(await client.post("/api/v1/users", json={"username": name, "password": "long enough pw"}), 422)
        project = await new_project(client)
        problem(await start_run(client, project["id"], {"kind": "container", "backend": "local", "pool": name,
                                                       "start_command": "true"}), 422)
        problem(await client.post(f"/api/v1/projects/{project['id']}/configs",
                                  json={"name": name, "kind": "yolo.train", "params": {}}), 422)
        assert (await client.get("/api/v1/projects")).json()["total"] == 1


async def test_the_fleet_view_shows_a_user_none_of_the_runs_of_others(settings: Settings) -> None:
    async with api(settings) as admin:
        project = await new_project(admin, "admins")
        run_id = (await start_run(admin, project["id"])).json()["id"]
        bob = bearer(await create_user(admin, "bob"))
        bobs_project = await new_project(admin, "bobs")
        assert (await admin.put(f"/api/v1/projects/{bobs_project['id']}/members/bob",
                                json={"role": "member"})).status_code in (200, 201)
        bobs_run = (await start_run(admin, bobs_project["id"])).json()["id"]
        names = Subjects(settings.bus_prefix)
        beat = RunnerHeartbeat(runner_id="shared-runner", seq=1, pool="gpu", slots=2, kinds=["container"],
                               devices=[DeviceInfo(name="test cpu", kind="cpu")], active_runs=[run_id, bobs_run])
        async with bus(settings) as nc:
            await nc.jetstream().publish(names.runner_heartbeat("shared-runner"), msgspec.json.encode(beat))

        async def listed() -> list[dict]:
            return [v for v in (await admin.get("/api/v1/runners")).json()["items"] if v["id"] == "shared-runner"]

        (admins_view,) = await wait_for(listed, what="the heartbeat in the fleet view")
        assert admins_view["active_runs"] == [run_id, bobs_run] and admins_view["current_run"] == run_id
        (bobs_view,) = [v for v in (await admin.get("/api/v1/runners", headers=bob)).json()["items"]
                        if v["id"] == "shared-runner"]
        assert bobs_view["active_runs"] == [bobs_run] and bobs_view["current_run"] is None
        assert run_id not in (await admin.get("/api/v1/runners/shared-runner", headers=bob)).text
