"""Logging in from tests: every test gateway's first admin has `ADMIN_PASSWORD` (the `settings` fixture)."""

from __future__ import annotations

from typing import Any

ADMIN = "admin"
ADMIN_PASSWORD = "admin-password-for-tests"
PASSWORD = "password-for-tests"
"""Password of the users tests create."""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _api(client: Any, path: str) -> str:
    """`path` under /api/v1, for a client whose base URL is the gateway's root or its /api/v1."""
    return path if str(client.base_url).rstrip("/").endswith("/api/v1") else "/api/v1" + path


async def login(client: Any, username: str = ADMIN, password: str = ADMIN_PASSWORD) -> dict[str, Any]:
    """Log in (a test client or an httpx.AsyncClient); the token pair."""
    response = await client.post(_api(client, "/auth/login"), json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def authorize(client: Any, username: str = ADMIN, password: str = ADMIN_PASSWORD) -> Any:
    """Make every later request of `client` carry an access token of `username`."""
    client.headers["Authorization"] = f"Bearer {(await login(client, username, password))['access_token']}"
    return client


async def create_user(client: Any, username: str, *, is_admin: bool = False, password: str = PASSWORD) -> str:
    """Create a user through the API (the client must be an admin's); their access token."""
    response = await client.post(_api(client, "/users"), json={"username": username, "password": password,
                                                               "is_admin": is_admin})
    assert response.status_code == 201, response.text
    return (await login(client, username, password))["access_token"]  # type: ignore[no-any-return]

