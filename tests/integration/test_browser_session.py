"""The dashboard's cookie session on a real gateway (uvicorn, real HTTP): the login sets an httpOnly,
SameSite=Strict cookie that authenticates every route; requests that change something need the session's
CSRF token; logout ends the session and clears the cookie; the bearer-token API is as before; the dashboard's
pages and assets are served at `/` beside the API, with a strict Content-Security-Policy."""

from __future__ import annotations

from http.cookies import SimpleCookie

import httpx

from gateway.auth.browser import CSRF_HEADER, SESSION_COOKIE
from gateway.dashboard import STATIC_DIR
from shared.settings import Settings
from tests.auth_support import ADMIN, ADMIN_PASSWORD, PASSWORD, bearer, create_user, login
from tests.integration.rest_helpers import served_gateway

LOGIN = {"X-Requested-With": "trainforge"}


async def browser_login(client: httpx.AsyncClient, username: str = ADMIN,
                        password: str = ADMIN_PASSWORD) -> tuple[httpx.Response, str]:
    response = await client.post("/api/v1/auth/session/login", headers=LOGIN,
                                 json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return response, response.json()["csrf_token"]


async def test_the_login_sets_an_http_only_strict_cookie_that_authenticates_reads(settings: Settings) -> None:
    async with served_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
        response, csrf = await browser_login(client)
        cookie = SimpleCookie(response.headers["set-cookie"])[SESSION_COOKIE]
        assert cookie["httponly"] is True and cookie["samesite"].lower() == "strict" and cookie["path"] == "/"
        assert int(cookie["max-age"]) == int(settings.refresh_token_ttl_h * 3600)
        assert not cookie["secure"], "plain http: a Secure cookie would never come back"
        assert cookie.value not in response.text, "the session's secret is never in a body script could read"
        assert response.json()["user"]["username"] == ADMIN and len(csrf) == 64

        me = await client.get("/api/v1/auth/me")
        assert me.status_code == 200 and me.json()["username"] == ADMIN
        session = (await client.get("/api/v1/auth/session")).json()
        assert session["csrf_token"] == csrf and session["user"]["username"] == ADMIN
        assert (await client.get("/api/v1/projects")).status_code == 200

        behind_tls = await client.post("/api/v1/auth/session/login", json={"username": ADMIN, "password":
                                       ADMIN_PASSWORD}, headers={**LOGIN, "X-Forwarded-Proto": "https"})
        assert SimpleCookie(behind_tls.headers["set-cookie"])[SESSION_COOKIE]["secure"] is True


async def test_a_cookie_request_that_changes_something_needs_the_csrf_token_of_its_own_session(
    settings: Settings,
) -> None:
    async with served_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
        _, csrf = await browser_login(client)
        async with httpx.AsyncClient(base_url=url) as other:
            _, other_csrf = await browser_login(other)
        assert other_csrf != csrf

        for headers in ({}, {CSRF_HEADER: ""}, {CSRF_HEADER: "0" * 64}, {CSRF_HEADER: other_csrf}):
            refused = await client.post("/api/v1/projects", json={"name": "forged"}, headers=headers)
            assert refused.status_code == 403, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
        assert (await client.delete("/api/v1/auth/session")).status_code == 403
        names = [p["name"] for p in (await client.get("/api/v1/projects")).json()["items"]]
        assert "forged" not in names, "nothing changes on a refused request"

        made = await client.post("/api/v1/projects", json={"name": "real"}, headers={CSRF_HEADER: csrf})
        assert made.status_code == 201, made.text


async def test_the_browser_login_needs_its_header_and_the_right_password(settings: Settings) -> None:
    async with served_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"username": ADMIN, "password": ADMIN_PASSWORD}
        plain = await client.post("/api/v1/auth/session/login", json=body)  # what a cross-site form could send
        assert plain.status_code == 403 and "set-cookie" not in plain.headers
        wrong = await client.post("/api/v1/auth/session/login", headers=LOGIN,
                                  json={"username": ADMIN, "password": "not it"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        assert (await client.get("/api/v1/auth/me")).status_code == 401


async def test_logout_ends_the_session_and_clears_the_cookie(settings: Settings) -> None:
    async with served_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
        response, csrf = await browser_login(client)
        secret = SimpleCookie(response.headers["set-cookie"])[SESSION_COOKIE].value
        out = await client.delete("/api/v1/auth/session", headers={CSRF_HEADER: csrf})
        assert out.status_code == 204
        cleared = SimpleCookie(out.headers["set-cookie"])[SESSION_COOKIE]
        assert cleared.value == "" and cleared["max-age"] == "0"
        assert SESSION_COOKIE not in client.cookies
        assert (await client.get("/api/v1/auth/me")).status_code == 401
        # the old cookie, kept by someone, no longer works either: the session is revoked
        replay = await client.get("/api/v1/auth/me", headers={"Cookie": f"{SESSION_COOKIE}={secret}"})
        assert replay.status_code == 401


async def test_a_disabled_user_s_cookie_stops_working_and_bearer_tokens_are_unchanged(settings: Settings) -> None:
    async with served_gateway(settings) as url, httpx.AsyncClient(base_url=url) as admin:
        admin.headers.update(bearer((await login(admin))["access_token"]))
        await create_user(admin, "erin")
        async with httpx.AsyncClient(base_url=url) as browser:
            await browser_login(browser, "erin", PASSWORD)
            assert (await browser.get("/api/v1/auth/me")).json()["username"] == "erin"
            # a bearer request needs no CSRF token, with or without a cookie beside it
            assert (await admin.post("/api/v1/projects", json={"name": "by-bearer"})).status_code == 201
            with_cookie = await admin.post("/api/v1/projects", json={"name": "by-bearer-2"},
                                           headers={"Cookie": f"{SESSION_COOKIE}={browser.cookies[SESSION_COOKIE]}"})
            assert with_cookie.status_code == 201 and with_cookie.json()["owner_id"] != (
                await browser.get("/api/v1/auth/me")).json()["id"], "the header decides, not the cookie"
            assert (await browser.get("/api/v1/auth/session")).status_code == 200
            assert (await admin.get("/api/v1/auth/session")).status_code == 404  # not a cookie session
            assert (await admin.patch("/api/v1/users/erin", json={"disabled": True})).status_code == 200
            assert (await browser.get("/api/v1/auth/me")).status_code == 401


async def test_an_event_stream_takes_the_cookie(settings: Settings) -> None:
    async with served_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
        _, csrf = await browser_login(client)
        project = (await client.post("/api/v1/projects", json={"name": "live"}, headers={CSRF_HEADER: csrf})).json()
        async with client.stream("GET", f"/api/v1/projects/{project['id']}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")


async def test_the_dashboard_is_served_at_the_root_beside_the_api(settings: Settings) -> None:
    index = (STATIC_DIR / "index.html").read_bytes()
    async with served_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
        for path in ("/", "/login", "/projects", "/projects/abc", "/runs/abc?x=1", "/projects/abc/new"):
            page = await client.get(path)
            assert page.status_code == 200, path
            assert page.content == index and page.headers["content-type"].startswith("text/html")
            policy = page.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        script = await client.get("/assets/app.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith(
            ("text/javascript", "application/javascript"))
        assert script.headers["x-content-type-options"] == "nosniff"
        assert (await client.get("/assets/app.css")).status_code == 200
        assert (await client.get("/assets/nope.js")).status_code == 404
        # the API and its schema as before: unknown API paths are JSON 404s, not the page
        missing = await client.get("/api/v1/nope")
        assert missing.status_code in (401, 404) and missing.content != index
        assert (await client.get("/schema/openapi.json")).status_code == 200
        assert (await client.get("/health")).json() == {"status": "ok"}
        schema = (await client.get("/schema/openapi.json")).json()
        assert "/api/v1/auth/session/login" in schema["paths"]
        # beside the API only the probes and Prometheus' /metrics, which the page does not shadow
        assert not [p for p in schema["paths"]
                    if not p.startswith("/api/v1") and p not in ("/health", "/ready", "/metrics")]
        assert (await client.get("/metrics")).content != index
