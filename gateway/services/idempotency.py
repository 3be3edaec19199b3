"""`Idempotency-Key` on POST: the first response is stored and returned again for a repeat of the request.

A key belongs to a scope ("METHOD path"; later also the caller). The first request inserts a pending row and
does the work; `complete` stores its status and body. A repeat with the same body gets the stored response; with
another body, or while the first is still in flight, a 409. If the work fails before anything was created,
`release` removes the row so that the client may simply retry. Keys expire after `idempotency_ttl_h`; expired
rows are purged lazily, whenever a key is used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert

from gateway.db.models import IdempotencyKey
from gateway.errors import Conflict
from gateway.state import GatewayState
from shared.contracts.common import utcnow

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: Any


def fingerprint(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


async def begin(gw: GatewayState, scope: str, key: str, request_hash: str) -> StoredResponse | None:
    """None: this is the first request with `key`, go ahead. Otherwise the response to give again.

    Conflict if the key was used with another request body, or its first request is still in flight.
    """
    cutoff = utcnow() - timedelta(hours=gw.settings.idempotency_ttl_h)
    async with gw.sessionmaker() as session, session.begin():
        await session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
        inserted = await session.execute(
            insert(IdempotencyKey).values(scope=scope, key=key, request_hash=request_hash)
            .on_conflict_do_nothing().returning(IdempotencyKey.key)
        )
        if inserted.first() is not None:
            return None
        row = (
            await session.execute(
                select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
            )
        ).scalar_one_or_none()
        if row is None:  # purged or released between the insert and this read
            raise Conflict("request with this Idempotency-Key is in progress")
        if row.request_hash != request_hash:
            raise Conflict("this Idempotency-Key was already used with a different request")
        if row.status_code is None:
            raise Conflict("request with this Idempotency-Key is in progress")
        return StoredResponse(row.status_code, row.body)


async def complete(gw: GatewayState, scope: str, key: str, status_code: int, body: Any) -> None:
    async with gw.sessionmaker() as session, session.begin():
        row = await session.get(IdempotencyKey, (scope, key))
        if row is not None:
            row.status_code = status_code
            row.body = body


async def release(gw: GatewayState, scope: str, key: str) -> None:
    async with gw.sessionmaker() as session, session.begin():
        await session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.scope == scope, IdempotencyKey.key == key, IdempotencyKey.status_code.is_(None)
            )
        )
