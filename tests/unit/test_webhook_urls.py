"""Which webhook URLs the operator's setting allows (`gateway.webhooks.urls`), and the signature scheme."""

from __future__ import annotations

import ipaddress
import time

import pytest

from gateway.webhooks import signing
from gateway.webhooks.urls import RefusedURL, UrlPolicy

OPEN = UrlPolicy.from_entries([])


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254",
                                     "::1", "fe80::1", "fc00::1", "0.0.0.0", "100.64.0.1", "224.0.0.1"])
def test_non_public_addresses_are_refused_without_an_entry(address: str) -> None:
    with pytest.raises(RefusedURL):
        OPEN.check_address("somewhere", ipaddress.ip_address(address))


def test_public_addresses_pass_an_empty_list_but_not_a_list_without_them() -> None:
    OPEN.check_address("example.com", ipaddress.ip_address("93.184.215.14"))
    listed = UrlPolicy.from_entries(["hooks.example.com", "10.0.0.0/8"])
    with pytest.raises(RefusedURL):
        listed.check_address("example.com", ipaddress.ip_address("93.184.215.14"))
    listed.check_address("hooks.example.com", ipaddress.ip_address("93.184.215.14"))


def test_entries_allow_names_wildcards_and_networks() -> None:
    policy = UrlPolicy.from_entries(["*.internal.example", "10.0.0.0/8", " 127.0.0.1 ", "Hooks.Example.com."])
    policy.check_address("ci.internal.example", ipaddress.ip_address("192.168.3.4"))
    policy.check_address("a", ipaddress.ip_address("10.9.8.7"))
    policy.check_address("b", ipaddress.ip_address("127.0.0.1"))
    policy.check_address("hooks.example.com", ipaddress.ip_address("172.16.1.1"))
    with pytest.raises(RefusedURL):
        policy.check_address("internal.example.evil", ipaddress.ip_address("192.168.3.4"))
    with pytest.raises(RefusedURL):
        policy.check_address("c", ipaddress.ip_address("127.0.0.2"))


async def test_a_name_resolving_to_loopback_is_refused() -> None:
    with pytest.raises(RefusedURL, match="non-public"):
        await OPEN.check("http://localhost:8000/hook")  # /etc/hosts: no DNS needed
    target = await UrlPolicy.from_entries(["127.0.0.0/8"]).check("http://localhost:8000/hook?x=1")
    assert all(a.is_loopback for a in target.addresses) and target.port == 8000


def test_signatures_cover_timestamp_and_body() -> None:
    now = int(time.time())
    header = signing.signature("s3cret", now, b'{"a":1}')
    assert signing.verify("s3cret", str(now), b'{"a":1}', header, now=now)
    assert not signing.verify("s3cret", str(now), b'{"a":2}', header, now=now)
    assert not signing.verify("s3cret", str(now + 1), b'{"a":1}', header, now=now)
    assert not signing.verify("s3cret", str(now), b'{"a":1}', header, now=now + 3600)  # a replay, too late
