"""Admin-supplied service URLs: syntax, scheme, credentials, and where they point.

Loopback and private ranges stay allowed (self-hosting next to Nextcloud is the point); link-local,
cloud metadata, multicast and unspecified addresses are refused, for the literal host and for
every address its name resolves to. The probe's connector re-checks at connect time, so a DNS
answer that changes between the check and the connection (rebinding) is refused as well.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any, Final

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from beeflow.errors import BadRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

BLOCKED_NETWORKS: Final = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # IPv4 link-local, incl. 169.254.169.254 (AWS/GCP/Azure metadata)
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::/32",  # AWS IPv6 metadata (fd00:ec2::254)
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "0.0.0.0/8",  # "this network"
        "::/128",  # unspecified
        "224.0.0.0/4",  # multicast
        "ff00::/8",  # multicast
        "255.255.255.255/32",  # broadcast
    )
)
BLOCKED_NAMES: Final = frozenset(
    {"metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
)
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_DNS_TIMEOUT: Final = 3.0


class UrlRejected(BadRequest):
    """400 with one of: missing_url, malformed_url, bad_scheme, credentials_in_url, no_host,
    blocked_host."""


def embedded_v4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(address))
    return None


def is_blocked_address(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
    inner = embedded_v4(address)
    if inner is not None and is_blocked_address(inner):
        return True
    return any(address.version == net.version and address in net for net in BLOCKED_NETWORKS)


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def parse_allowed_url(raw: Any) -> URL:
    """The synchronous checks; the URL normalised (no trailing slash), or UrlRejected."""
    if not isinstance(raw, str) or not raw.strip():
        raise UrlRejected("Enter the server URL", code="missing_url")
    text = raw.strip()
    if len(text) > 2048 or any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise UrlRejected("The URL is not valid", code="malformed_url")
    try:
        url = URL(text)
        host = url.host
    except (ValueError, TypeError):
        raise UrlRejected("The URL is not valid", code="malformed_url") from None
    if url.scheme not in ("http", "https"):
        raise UrlRejected("Only http:// and https:// URLs are accepted", code="bad_scheme")
    if url.user is not None or url.password is not None or "@" in (url.raw_authority or ""):
        raise UrlRejected(
            "The URL must not contain a user name or password", code="credentials_in_url"
        )
    if not host:
        raise UrlRejected("The URL has no host", code="no_host")
    if url.query_string or url.fragment:
        raise UrlRejected("The URL must not have a query or fragment", code="malformed_url")
    try:
        url.port  # noqa: B018 - a port out of range raises here
    except ValueError:
        raise UrlRejected("The URL's port is not valid", code="malformed_url") from None
    name = host.rstrip(".").lower()
    if name in BLOCKED_NAMES:
        raise UrlRejected("That host is a cloud metadata service", code="blocked_host")
    literal = _literal(name)
    if literal is not None and is_blocked_address(literal):
        raise UrlRejected("That address is link-local or reserved", code="blocked_host")
    return url.with_path(url.path.rstrip("/"))


async def resolve_all(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to; [] when it does not resolve (not an error: the probe
    reports it). Numeric forms like `2852039166` or `0xa9fea9fe` resolve here too."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), _DNS_TIMEOUT
        )
    except (OSError, TimeoutError, UnicodeError):
        return []
    out: list[Address] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = _literal(str(sockaddr[0]))
        if address is not None:
            out.append(address)
    return out


async def assert_allowed_url(raw: Any) -> URL:
    """parse_allowed_url, then every DNS answer checked."""
    url = parse_allowed_url(raw)
    host = url.host or ""
    for address in await resolve_all(host.strip("[]"), url.port or 80):
        if is_blocked_address(address):
            raise UrlRejected(
                "That host resolves to a link-local or reserved address", code="blocked_host"
            )
    return url


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default and refuses blocked answers at connect time."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner if inner is not None else ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = _literal(result["host"])
            if address is None or is_blocked_address(address):
                raise OSError(f"refusing to connect to a blocked address for {host}")
        return results

    async def close(self) -> None:
        await self._inner.close()
