"""`Caller`: the authenticated user a request acts for, as handlers receive it (`me: Me`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.di import NamedDependency, Provide


@dataclass(frozen=True)
class Caller:
    user_id: str
    username: str
    is_admin: bool = False
    session_id: str | None = None
    """The login session an access token came from (None for an API token)."""
    token_id: str | None = None
    """The API token the request came with (None for an access token)."""
    address: str | None = None
    """The client's address (for the audit log)."""


def _me(request: Request[Any, Any, Any]) -> Caller:
    return request.user  # type: ignore[no-any-return]


provide_me = Provide(_me, sync_to_thread=False)

Me = NamedDependency[Caller]
"""How a route handler asks for its caller: `async def handler(self, me: Me) -> ...`."""
