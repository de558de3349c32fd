"""Fixtures of the /api proxy tests: the fake Bee Flow service and connectors in front of it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import ConnectorFactory
from tests.fakes.service import FakeService
from tests.helpers import RunningConnector

ProxyFactory = Callable[..., Awaitable[RunningConnector]]

HARP_ENV = {"HP_SHARED_KEY": "harp-shared-key-for-tests", "HP_FRP_ADDRESS": "127.0.0.1"}


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    svc = FakeService()
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
def proxy_factory(connector_factory: ConnectorFactory, service: FakeService) -> ProxyFactory:
    """A connector whose service base URL is the fake service; harp=True for HaRP mode, else
    every request is taken as one forwarded by Nextcloud's PHP proxy (BEEFLOW_ROUTING=php: these
    tests call the connector directly, without the X-Origin-IP that proxy adds)."""

    async def make(*, harp: bool = False, **env: Any) -> RunningConnector:
        full = {"BEEFLOW_API_BASE_URL": str(service.url)}
        if harp:
            full.update(HARP_ENV)
        else:
            full["BEEFLOW_ROUTING"] = "php"
        full.update(env)
        return await connector_factory(**full)

    return make


@pytest.fixture
async def legacy(proxy_factory: ProxyFactory) -> RunningConnector:
    return await proxy_factory()


@pytest.fixture
async def harp(proxy_factory: ProxyFactory) -> RunningConnector:
    return await proxy_factory(harp=True)


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_jwt(token: str, key: str) -> dict[str, Any]:
    """Check an HS256 JWT independently of beeflow.signing and return its claims."""
    header_b64, payload_b64, sig_b64 = token.split(".")
    assert json.loads(b64url_decode(header_b64)) == {"alg": "HS256", "typ": "JWT"}
    mac = hmac.new(key.encode(), f"{header_b64}.{payload_b64}".encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(mac, b64url_decode(sig_b64)), "JWT signature does not verify"
    claims: dict[str, Any] = json.loads(b64url_decode(payload_b64))
    return claims


async def raw_exchange(
    host: str, port: int, request: bytes, *, read_until_close: bool = True, timeout: float = 10
) -> bytes:
    """Write `request` on a fresh socket and read the raw answer (until the peer closes)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read() if read_until_close else await reader.read(65536)
    finally:
        writer.close()


@pytest.fixture(params=["legacy", "harp"])
async def conn(request: pytest.FixtureRequest, proxy_factory: ProxyFactory) -> RunningConnector:
    """A connector in front of the fake service, once in each mode."""
    return await proxy_factory(harp=request.param == "harp")
