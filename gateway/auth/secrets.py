"""Passwords (argon2id, hashed off the event loop), opaque tokens (stored as sha256) and the JWT secret."""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shared.secretfiles import secret_file

API_TOKEN_PREFIX = "tfp_"
"""API tokens start with this, so the gateway (and secret scanners) tell them from JWTs."""
REFRESH_TOKEN_PREFIX = "tfr_"

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """A hash of no one's password (made on first use: hashing takes a third of a second)."""
    return _hasher.hash("not a password of anyone")


async def hash_password(password: str) -> str:
    return await anyio.to_thread.run_sync(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True when `password` matches. Without a hash (no such user) it still spends the time of a check, so
    the answer time does not tell whether a username exists."""
    def check() -> bool:
        try:
            return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False

    return await anyio.to_thread.run_sync(check)


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def jwt_secret(configured: str | None, state_dir: Path) -> str:
    """The configured secret, or one generated once and kept in `<state_dir>/secrets/jwt-secret` (mode 0600)."""
    if configured:
        return configured
    return read_or_create_secret(secret_file(state_dir, "jwt-secret"), lambda: secrets.token_urlsafe(48))


def read_or_create_secret(path: Path, make: Callable[[], str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(100):  # another process may be writing it right now
            value = path.read_text().strip()
            if value:
                return value
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty; delete it to have a new secret generated") from None
    value = make()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value
