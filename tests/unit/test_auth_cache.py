"""The gateway's short memory of who a token is (`gateway.auth.cache`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from gateway.auth.cache import CallerCache
from gateway.auth.caller import Caller

ALICE = Caller(user_id="u1", username="alice", token_id="t1", address="10.0.0.1")


def test_a_caller_is_remembered_with_each_requests_own_address_until_cleared() -> None:
    cache = CallerCache(60.0)
    cache.put(("api", "h"), ALICE)
    assert cache.get(("api", "h"), "10.0.0.1") is ALICE
    other = cache.get(("api", "h"), "10.0.0.2")
    assert other is not None and other.address == "10.0.0.2" and other.user_id == "u1"
    assert cache.get(("api", "x"), None) is None
    cache.clear()
    assert cache.get(("api", "h"), "10.0.0.1") is None


def test_an_entry_lapses_after_the_ttl_or_the_credentials_own_expiry_and_zero_turns_it_off() -> None:
    cache = CallerCache(0.05)
    cache.put(("api", "h"), ALICE)
    deadline = time.monotonic() + 5
    while cache.get(("api", "h"), None) is not None:
        assert time.monotonic() < deadline
    long = CallerCache(60.0)
    long.put(("api", "gone"), ALICE, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert long.get(("api", "gone"), None) is None
    off = CallerCache(0.0)
    off.put(("api", "h"), ALICE)
    assert off.get(("api", "h"), None) is None and len(off) == 0


def test_the_cache_is_bounded() -> None:
    cache = CallerCache(60.0, max_entries=3)
    for n in range(5):
        cache.put(("api", str(n)), ALICE)
    assert len(cache) == 3 and cache.get(("api", "0"), None) is None and cache.get(("api", "4"), None) is not None
