"""Recording network attempts with a Python audit hook (hooks cannot be removed: it is gated by a flag)."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

NETWORK_EVENTS = frozenset({"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"})
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class NetworkRecorder:
    def __init__(self) -> None:
        self.active = False
        self.events: list[tuple[str, str]] = []
        self._installed = False
        self._lock = threading.Lock()

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or event not in NETWORK_EVENTS:
            return
        if event == "socket.connect":
            sock, address = args
            if sock.family == socket.AF_UNIX:
                return
            host = address[0] if isinstance(address, tuple) else address
        else:
            host = args[0]
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if str(host) in LOOPBACK:
            return  # other tests' NATS/Postgres clients on loopback are not "the network"
        self.events.append((event, repr(args)[:200]))

    @contextmanager
    def recording(self) -> Iterator[list[tuple[str, str]]]:
        with self._lock:
            if not self._installed:
                sys.addaudithook(self._hook)
                self._installed = True
        self.active = True
        try:
            yield self.events
        finally:
            self.active = False


RECORDER = NetworkRecorder()
