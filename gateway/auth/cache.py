"""Who a token is, remembered for a few seconds: most requests then authenticate without a database query.

An entry lives `Settings.auth_cache_s` (default 5 s; 0 turns the cache off). A token revoked, a session
logged out or a user disabled or changed on this gateway is forgotten here at once (the whole cache is
cleared: such changes are rare); on another gateway of the same deployment it stops working within
`auth_cache_s`. Expiry written in the credential (an access token's `exp`, an API token's `expires_at`) is
still checked on every request: the JWT by its signature check, an API token's by the entry's own deadline.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from datetime import datetime

from gateway.auth.caller import Caller

MAX_ENTRIES = 10_000


class CallerCache:
    def __init__(self, ttl_s: float, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, ...], tuple[float, Caller]] = OrderedDict()

    def get(self, key: tuple[str, ...], address: str | None) -> Caller | None:
        """The cached caller for `key` (with this request's `address`); None when unknown or too old."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if time.monotonic() >= entry[0]:
            del self._entries[key]
            return None
        caller = entry[1]
        return caller if caller.address == address else dataclasses.replace(caller, address=address)

    def put(self, key: tuple[str, ...], caller: Caller, *, expires_at: datetime | None = None) -> None:
        """Remember `caller` for `ttl_s` (less when its credential expires sooner)."""
        if self.ttl_s <= 0:
            return
        ttl = self.ttl_s
        if expires_at is not None:
            ttl = min(ttl, expires_at.timestamp() - time.time())
            if ttl <= 0:
                return
        self._entries[key] = (time.monotonic() + ttl, caller)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everyone (a token was revoked, a session ended, a user changed)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
