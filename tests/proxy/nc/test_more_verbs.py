"""PROPPATCH, SEARCH, LOCK, UNLOCK, OPTIONS and HEAD through /nc (docs/nc-proxy.md, "Verbs and
the method tunnel"): as POST + X-HTTP-Method-Override (AppAPI's PHP proxy) and on the wire
(HaRP, direct). A tunnelled HEAD answers a POST: body-less, `Content-Length: 0`, Nextcloud's
length in `X-Beeflow-Content-Length`."""

from __future__ import annotations

import os

import aiohttp
import pytest

from tests.fakes.nextcloud_dav import FakeDav
from tests.helpers import RunningConnector
from tests.proxy.nc.caller import NcCaller

DAV = "/nc/remote.php/dav/files/alice"
NEW_VERBS = ["PROPPATCH", "SEARCH", "LOCK", "UNLOCK", "OPTIONS", "MKCALENDAR"]


@pytest.mark.parametrize("tunnel", [True, False], ids=["tunnel", "wire"])
@pytest.mark.parametrize("verb", NEW_VERBS)
async def test_reaches_nextcloud(caller: NcCaller, dav: FakeDav, verb: str, tunnel: bool) -> None:
    body = b'<?xml version="1.0"?><d:x xmlns:d="DAV:"/>' if verb != "OPTIONS" else b""
    resp = await caller.request(
        verb,
        f"{DAV}/",
        body=body,
        tunnel=tunnel,
        headers={"Content-Type": "application/xml", "Timeout": "Second-60"},
    )
    async with resp:
        # The fake's Sabre answers 405 to verbs it does not implement: Nextcloud's answer.
        assert resp.status == 405
        assert b"Sabre\\DAV\\Exception\\MethodNotAllowed" in await resp.read()
    seen = dav.last()
    assert seen.method == verb
    assert seen.size == len(body)
    assert seen.headers["Timeout"] == "Second-60"
    assert "X-HTTP-Method-Override" not in seen.headers


@pytest.mark.parametrize("size", [10, 100 * 1024])
async def test_tunnelled_head_is_body_less(
    caller: NcCaller, dav: FakeDav, session: aiohttp.ClientSession, size: int
) -> None:
    """Small (inlined) and large (streamed) answers alike; the connection stays usable."""
    dav.put_file("alice", "h.bin", os.urandom(size))
    resp = await caller.request("HEAD", f"{DAV}/h.bin", tunnel=True)
    async with resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "0"
        assert resp.headers["X-Beeflow-Content-Length"] == str(size)
        assert resp.headers["ETag"] == dav.etag(dav.file("alice", "h.bin"))
        assert await resp.read() == b""
    assert dav.last().method == "HEAD"
    # Same session, same keep-alive connection: the framing above was right.
    resp = await caller.request("GET", f"{DAV}/h.bin")
    async with resp:
        assert resp.status == 200
        assert len(await resp.read()) == size


async def test_tunnelled_head_of_a_missing_file(caller: NcCaller, dav: FakeDav) -> None:
    resp = await caller.request("HEAD", f"{DAV}/missing.bin", tunnel=True)
    async with resp:
        assert resp.status == 404
        assert await resp.read() == b""
    assert dav.last().method == "HEAD"


async def test_wire_head_keeps_the_real_length(caller: NcCaller, dav: FakeDav) -> None:
    dav.put_file("alice", "w.bin", b"w" * 1000)
    resp = await caller.request("HEAD", f"{DAV}/w.bin")
    async with resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "1000"
        assert "X-Beeflow-Content-Length" not in resp.headers


async def test_unsigned_new_wire_verbs_are_401(
    session: aiohttp.ClientSession, nc_conn: RunningConnector, dav: FakeDav
) -> None:
    for verb in NEW_VERBS:
        async with session.request(verb, str(nc_conn.url) + f"{DAV}/") as resp:
            assert resp.status == 401, verb
            assert (await resp.json())["code"] == "signature_missing"
    assert dav.seen == []
