"""SSRF checks for admin-supplied URLs (reference 4.8), literal and resolved."""

from __future__ import annotations

import ipaddress
import socket

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given
from hypothesis import strategies as st

from beeflow.setup import urlcheck
from beeflow.setup.probe import probe
from beeflow.setup.urlcheck import UrlRejected, assert_allowed_url, parse_allowed_url


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (None, "missing_url"),
        ("", "missing_url"),
        ("   ", "missing_url"),
        (42, "missing_url"),
        ("ftp://example.com", "bad_scheme"),
        ("file:///etc/passwd", "bad_scheme"),
        ("gopher://127.0.0.1:6379/_x", "bad_scheme"),
        ("javascript:alert(1)", "bad_scheme"),
        ("example.com", "bad_scheme"),
        ("http://user:pw@example.com", "credentials_in_url"),
        ("http://user@example.com", "credentials_in_url"),
        ("http://:pw@example.com", "credentials_in_url"),
        ("http://", "no_host"),
        ("http:///path", "no_host"),
        ("http://exa mple.com", "malformed_url"),
        ("http://example.com/\x00", "malformed_url"),
        ("http://example.com/?q=1", "malformed_url"),
        ("http://example.com/#frag", "malformed_url"),
        ("http://example.com:99999", "malformed_url"),
        ("http://169.254.169.254", "blocked_host"),
        ("http://169.254.169.254/latest/meta-data", "blocked_host"),
        ("http://169.254.1.1:3001", "blocked_host"),
        ("http://[fe80::1]", "blocked_host"),
        ("http://[fe80::1%25eth0]", "blocked_host"),
        ("http://[fd00:ec2::254]", "blocked_host"),
        ("http://[::ffff:169.254.169.254]", "blocked_host"),
        ("http://[::ffff:a9fe:a9fe]", "blocked_host"),
        ("http://[64:ff9b::169.254.169.254]", "blocked_host"),
        ("http://100.100.100.200", "blocked_host"),
        ("http://metadata.google.internal", "blocked_host"),
        ("http://METADATA.GOOGLE.INTERNAL.", "blocked_host"),
        ("http://metadata.goog/computeMetadata/v1", "blocked_host"),
        ("http://instance-data", "blocked_host"),
        ("http://0.0.0.0:3001", "blocked_host"),
        ("http://[::]:3001", "blocked_host"),
        ("http://224.0.0.1", "blocked_host"),
        ("http://255.255.255.255", "blocked_host"),
    ],
)
def test_rejected(raw: object, code: str) -> None:
    with pytest.raises(UrlRejected) as info:
        parse_allowed_url(raw)
    assert info.value.instance_code == code
    assert info.value.instance_status == 400


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("http://127.0.0.1:3001", "http://127.0.0.1:3001"),
        ("http://localhost:3001/", "http://localhost:3001"),
        ("http://[::1]:3001", "http://[::1]:3001"),
        ("http://10.0.0.5:3001", "http://10.0.0.5:3001"),
        ("http://192.168.1.20", "http://192.168.1.20"),
        ("http://172.16.0.1/beeflow/", "http://172.16.0.1/beeflow"),
        ("http://bee-flow-server:3001", "http://bee-flow-server:3001"),
        ("  https://server.beeflow.nl//  ", "https://server.beeflow.nl"),
        ("HTTPS://Server.Example.LAN:3001", "https://server.example.lan:3001"),
    ],
)
def test_allowed(raw: str, normalised: str) -> None:
    """Loopback and private ranges are allowed on purpose: self-hosting beside Nextcloud."""
    assert str(parse_allowed_url(raw)) == normalised


@pytest.mark.parametrize(
    "raw",
    [
        "http://2852039166/",  # 169.254.169.254 as one decimal number
        "http://0xa9fea9fe/",  # ... as hex
        "http://0251.0376.0251.0376/",  # ... as octal dotted
    ],
)
async def test_numeric_forms_are_caught_by_resolution(raw: str) -> None:
    """inet_aton spellings are not IP literals to the parser but resolve to the blocked address."""
    parse_allowed_url(raw)  # passes the literal check...
    with pytest.raises(UrlRejected) as info:
        await assert_allowed_url(raw)  # ...and is refused once resolved
    assert info.value.instance_code == "blocked_host"


async def test_unresolvable_is_not_an_error() -> None:
    url = await assert_allowed_url("http://no-such-host.invalid:3001")
    assert url.host == "no-such-host.invalid"


async def test_resolved_loopback_allowed() -> None:
    assert str(await assert_allowed_url("http://localhost:3001")) == "http://localhost:3001"


class StubResolver(AbstractResolver):
    """Answers every name with fixed addresses: a DNS server that changed its mind."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        return None


async def test_guarded_resolver_refuses_at_connect_time() -> None:
    """The probe's own resolver re-checks answers, so a name that resolves to a blocked
    address only after the check (DNS rebinding) still gets no connection."""
    stub = StubResolver("127.0.0.1", "169.254.169.254")
    connector = aiohttp.TCPConnector(resolver=urlcheck.GuardedResolver(stub), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        result = await probe(session, parse_allowed_url("http://rebind.test:3001"))
    assert stub.asked == ["rebind.test"]
    assert result["ok"] is False
    assert result["code"] == "blocked_host"


async def test_guarded_resolver_passes_allowed_answers() -> None:
    stub = StubResolver("127.0.0.1")
    answers = await urlcheck.GuardedResolver(stub).resolve("bee.test", 3001)
    assert [a["host"] for a in answers] == ["127.0.0.1"]


async def test_non_canonical_ip_is_never_requested() -> None:
    connector = aiohttp.TCPConnector(resolver=urlcheck.GuardedResolver(), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        result = await probe(session, parse_allowed_url("http://2852039166"))
    assert result["ok"] is False
    assert result["code"] in ("malformed_url", "blocked_host")


def test_probe_resolver_allows_loopback_names() -> None:
    assert not urlcheck.is_blocked_address(ipaddress.ip_address("127.0.0.1"))
    assert not urlcheck.is_blocked_address(ipaddress.ip_address("::1"))
    assert urlcheck.is_blocked_address(ipaddress.ip_address("fe80::1%2"))


@given(st.ip_addresses(v=4))
def test_v4_mapped_and_nat64_agree_with_v4(address: ipaddress.IPv4Address) -> None:
    blocked = urlcheck.is_blocked_address(address)
    mapped = ipaddress.IPv6Address("::ffff:" + str(address))
    nat64 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(address))
    if blocked:
        assert urlcheck.is_blocked_address(mapped)
        assert urlcheck.is_blocked_address(nat64)
    assert blocked == (
        address.is_link_local
        or address.is_multicast
        or str(address) in ("100.100.100.200", "255.255.255.255")
        or address in ipaddress.ip_network("0.0.0.0/8")
    )
