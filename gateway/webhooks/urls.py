"""Which webhook URLs the operator allows (setting `webhook_allowed_hosts`).

A URL is http(s) with a host and no credentials. Its host's addresses (the literal, or what DNS answers) must
each be allowed: a public address is, when the list is empty or the host is on it; a non-public one (loopback,
link-local, private, reserved, multicast) only when an entry names the host or a network in it covers the
address. Checked when a webhook is created and, on the addresses resolved then, before every delivery (the
delivery connects to the address it checked, so DNS rebinding cannot slip another one in).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RefusedURL(ValueError):
    """The webhook URL is not allowed."""


@dataclass(frozen=True)
class Target:
    """A checked URL: its parts and the addresses it may be reached at."""

    url: SplitResult
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True)
class UrlPolicy:
    names: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_entries(cls, entries: Sequence[str]) -> UrlPolicy:
        names: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.append(entry.rstrip("."))
        return cls(tuple(names), tuple(networks))

    @property
    def restricted(self) -> bool:
        return bool(self.names or self.networks)

    def names_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == n or (n.startswith("*.") and host.endswith(n[1:])) for n in self.names)

    def covers(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def check_address(self, host: str, address: IPAddress) -> None:
        if self.names_host(host) or self.covers(address):
            return
        if not address.is_global or address.is_multicast:
            raise RefusedURL(f"{host} resolves to {address}, a non-public address; only addresses the operator "
                             "allows (TRAINFORGE_WEBHOOK_ALLOWED_HOSTS) may be used")
        if self.restricted:
            raise RefusedURL(f"{host} is not among the hosts allowed for webhooks (TRAINFORGE_WEBHOOK_ALLOWED_HOSTS)")

    async def check(self, url: str) -> Target:
        """The URL's target with its checked addresses; RefusedURL if it may not be used."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise RefusedURL("a webhook URL is http:// or https://")
        if parts.username is not None or parts.password is not None:
            raise RefusedURL("a webhook URL carries no credentials; the signature authenticates the sender")
        host = parts.hostname
        if not host:
            raise RefusedURL("a webhook URL names a host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise RefusedURL(f"bad port in {url!r}") from exc
        addresses = await resolve(host, port)
        for address in addresses:
            self.check_address(host, address)
        return Target(parts, host, port, addresses)


async def resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return (literal,)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RefusedURL(f"{host} does not resolve ({exc})") from exc
    found = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    if not found:
        raise RefusedURL(f"{host} does not resolve")
    return tuple(sorted(found, key=lambda a: (a.version, int(a))))
