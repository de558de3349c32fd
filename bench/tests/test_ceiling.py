"""The store-and-forward ceiling: it must really receive, hash, check and forward every byte,
or the /nc upload target would be judged against a number that means nothing."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench import client, peers
from bench.children import Child
from bench.client import Target
from bench.run import TENANT_KEY, nc_headers
from bench.tests.conftest import Upstream
from bench.upstream import BLOCK

PATH = "/nc/remote.php/dav/files/alice/upload"


def _body(n: int) -> bytes:
    return (BLOCK * (n // len(BLOCK) + 1))[:n]


def _put(n: int, digest: str | None = None, path: str = PATH) -> bytes:
    digest = digest or hashlib.sha256(_body(n)).hexdigest()
    headers = {**nc_headers("PUT", path, digest), "Content-Type": "application/octet-stream"}
    return client.build_request("PUT", path, headers, content_length=n)


@pytest.fixture(params=["tcp", "unix"])
async def ceiling(
    request: pytest.FixtureRequest, work: Path, upstream: Upstream
) -> AsyncIterator[tuple[Child, Target]]:
    child, target = await peers.start_ceiling(work, request.param, upstream.tcp.port, TENANT_KEY)
    yield child, target
    await child.stop()


async def _upload(target: Target, head: bytes, n: int) -> tuple[int, dict[str, int] | bytes]:
    _seconds, resp = await client.upload(target, head, BLOCK, n)
    body = bytes(resp.body or b"")
    return resp.status, json.loads(body) if resp.status in (200, 201) else body


@pytest.mark.parametrize("n", [0, 1, (8 << 20) + 12345])
async def test_a_signed_upload_reaches_the_upstream_whole(
    ceiling: tuple[Child, Target], n: int
) -> None:
    status, body = await _upload(ceiling[1], _put(n), n)
    assert (status, body) == (201, {"received": n})


async def test_a_forged_signature_is_refused_and_nothing_is_forwarded(
    ceiling: tuple[Child, Target],
) -> None:
    n = 3 << 20
    wrong = hashlib.sha256(b"another body").hexdigest()
    status, body = await _upload(ceiling[1], _put(n, digest=wrong), n)
    assert status == 401
    assert body == b'{"code":"signature_mismatch"}'


async def test_paths_outside_nc_are_not_forwarded(ceiling: tuple[Child, Target]) -> None:
    status, _answer = await _upload(ceiling[1], _put(10, path="/remote.php/dav/x"), 10)
    assert status == 404


async def test_two_uploads_on_one_connection(ceiling: tuple[Child, Target]) -> None:
    conn = await ceiling[1].connect()
    try:
        for n in (5, 70_000):
            resp = await conn.upload(_put(n), _body(n), n)
            assert resp.status == 201
            assert json.loads(bytes(resp.body or b"")) == {"received": n}
    finally:
        conn.close()


async def test_copy_mode_sends_the_same_bytes(work: Path, upstream: Upstream) -> None:
    child, target = await peers.start_ceiling(
        work, "tcp", upstream.tcp.port, TENANT_KEY, send="copy"
    )
    try:
        n = (2 << 20) + 7
        assert await _upload(target, _put(n), n) == (201, {"received": n})
    finally:
        await child.stop()


async def test_it_refuses_to_start_without_a_key(work: Path, upstream: Upstream) -> None:
    argv = [sys.executable, "-m", "bench.ceiling", "--upstream-port", str(upstream.tcp.port)]
    argv += ["--spool", str(work)]
    with pytest.raises(RuntimeError, match="did not start"):
        await Child.start("ceiling", argv, {"PATH": "/usr/bin:/bin"}, work, work / "c.log")
