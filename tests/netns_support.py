"""Hosts made of Linux network namespaces, for fleet tests (test code).

`Hosts.create(names)` makes one namespace per host and a switch namespace holding a bridge; each host is wired to
the switch by a veth pair (`eth0` inside the host, `p-<host>` on the switch) and gets an address of a /24 the
test picks among 10.(200-249).x.0 that no interface of this machine uses. The test process itself reaches them
through one more veth pair whose end in this namespace (`tf<tag>o`) holds the subnet's `.254`: nothing else of
this machine's network changes (no routes beyond that link's own, no forwarding, no iptables).

`cut(host)` takes a host's switch port down (its link is gone; its processes run on, unreachable);
`run(host, argv)` starts a process inside a host. `destroy()` kills every process started there, deletes the
namespaces (and with them their veths) and the test's own veth; it is safe to call after a partial create.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path


class NamespacesUnavailable(Exception):
    """This machine does not let the test make network namespaces."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = ip("-4", "-o", "addr", "show", check=False).stdout + ip("-4", "route", "show", check=False).stdout
    found = []
    for word in out.split():
        with contextlib.suppress(ValueError):
            if "/" in word:
                found.append(ipaddress.ip_network(word, strict=False))
    return found


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    candidates = [ipaddress.ip_network(f"10.{a}.{b}.0/24") for a in range(200, 250) for b in range(256)]
    random.shuffle(candidates)
    for net in candidates[:2000]:
        if not any(net.overlaps(other) for other in used):
            return net
    raise NamespacesUnavailable("no free 10.x.y.0/24 for the test network")


@dataclass
class Hosts:
    tag: str
    subnet: ipaddress.IPv4Network
    names: list[str]
    made: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    observer_link: str | None = None

    @classmethod
    def create(cls, names: list[str]) -> Hosts:
        if os.geteuid() != 0:
            raise NamespacesUnavailable("network namespaces need root")
        hosts = cls(tag=uuid.uuid4().hex[:5], subnet=_free_subnet(), names=names)
        try:
            hosts._create()
        except BaseException as exc:
            hosts.destroy()
            if isinstance(exc, RuntimeError) and ("Operation not permitted" in str(exc) or "denied" in str(exc)):
                raise NamespacesUnavailable(str(exc)) from None
            raise
        return hosts

    def ns(self, host: str) -> str:
        return f"tf{self.tag}-{host}"

    @property
    def switch(self) -> str:
        return self.ns("sw")

    def address(self, host: str) -> str:
        if host == "observer":
            return str(self.subnet.network_address + 254)
        return str(self.subnet.network_address + 10 + self.names.index(host))

    def _create(self) -> None:
        prefix = self.subnet.prefixlen
        for name in ["sw", *self.names]:
            ip("netns", "add", self.ns(name))
            self.made.append(self.ns(name))
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for host in self.names:
            ns = self.ns(host)
            ip("link", "add", f"p-{host}", "netns", self.switch, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", self.switch, "link", "set", f"p-{host}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.address(host)}/{prefix}", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        self.observer_link = f"tf{self.tag}o"
        ip("link", "add", self.observer_link, "type", "veth", "peer", "name", "p-observer", "netns", self.switch)
        ip("-n", self.switch, "link", "set", "p-observer", "master", "br0", "up")
        ip("addr", "add", f"{self.address('observer')}/{prefix}", "dev", self.observer_link)
        ip("link", "set", self.observer_link, "up")

    def run(self, host: str, argv: list[str], *, env: dict[str, str], log: Path, cwd: Path | None = None,
            ) -> subprocess.Popen[bytes]:
        """Start `argv` inside `host` (its own process group), output to `log`."""
        with log.open("ab") as out:
            process = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], env=env, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                                       start_new_session=True)
        self.processes.append(process)
        return process

    def cut(self, host: str) -> None:
        """The host's link goes down (its switch port)."""
        ip("-n", self.switch, "link", "set", f"p-{host}", "down")

    @staticmethod
    def kill(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)

    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill(process)
        for ns in reversed(self.made):
            ip("netns", "del", ns, check=False)
        self.made.clear()
        if self.observer_link is not None:
            ip("link", "del", self.observer_link, check=False)  # gone with its peer already, normally
            self.observer_link = None
