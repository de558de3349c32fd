"""The v3 /nc signature (docs/nc-proxy.md, "The v3 signature"): the message byte for byte, what
it covers (Destination, Overwrite, Depth, the query as its own field, the body through its
declared hash), that it is checked before the body is read, and the admin setting that
requires it."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from beeflow.proxy.nc.sigv3 import canonical_query, message_v3
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud_dav import FakeDav
from tests.fakes.php_proxy import PROXY_PREFIX, PhpProxy
from tests.helpers import SECRET, RunningConnector
from tests.proxy.nc.caller import NcCaller, outcome, v3_query, v3_signature
from tests.reliability.rawhttp import exchange, request_bytes

DAV = "/nc/remote.php/dav/files/alice"
EMPTY = hashlib.sha256(b"").hexdigest()


# ------------------------------------------------------------ pure: the wire format


def test_message_byte_for_byte() -> None:
    assert message_v3(
        ts="1700000000",
        method="MOVE",
        path="/nc/remote.php/dav/files/alice/a b.txt",
        query="x=1",
        uid="alice",
        content_sha256=EMPTY,
        destination="/remote.php/dav/files/alice/b.txt",
        overwrite="F",
        depth="",
        nonce="n1",
    ) == (
        "beeflow-nc-v3\n1700000000\nMOVE\n/nc/remote.php/dav/files/alice/a b.txt\nx=1\nalice\n"
        f"{EMPTY}\n/remote.php/dav/files/alice/b.txt\nF\n\nn1"
    )


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", ""),
        ("format=json", "format=json"),
        ("q=a+b", "q=a%20b"),  # PHP's re-encoding of a space ...
        ("q=a%20b", "q=a%20b"),  # ... and the service's: the same
        ("empty", "empty="),  # a bare key, as PHP's $_GET writes it back
        ("e%40=%40", "e%40=%40"),
        ("e@=@", "e%40=%40"),
        ("q=a%26b", "q=a%26b"),  # an encoded '&' stays part of the value ...
        ("q=a&b", "q=a&b="),  # ... and is not the same query as a second key
        ("a=1&&b=2&", "a=1&b=2"),
        ("s=caf%C3%A9", "s=caf%C3%A9"),
        ("s=café", "s=caf%C3%A9"),
        ("t=~-._!*'()", "t=~-._%21%2A%27%28%29"),
        ("b=2&a=1", "b=2&a=1"),  # order kept
        ("k=v=w", "k=v%3Dw"),
    ],
)
def test_canonical_query(raw: str, canonical: str) -> None:
    assert canonical_query(raw) == canonical
    assert v3_query(raw) == canonical  # the tests' own implementation, written from the doc


def test_canonical_query_refuses_what_is_not_utf8() -> None:
    assert canonical_query("q=%ff") is None


def test_known_vector() -> None:
    """The vector of docs/nc-proxy.md."""
    sig = v3_signature(
        "k" * 16,
        1,
        "MOVE",
        "/nc/remote.php/dav/files/bob/a%20b.txt?x=1",
        "bob",
        EMPTY,
        headers={"Destination": "/remote.php/dav/files/bob/c.txt", "Overwrite": "F"},
    )
    assert sig == "v3.1.ce30e1b4ee4d0b665f53186477957843ccf50fc41e04b511b33dde32e6d6bc77"


# ------------------------------------------------------------ over real sockets


async def test_v3_get_put_and_move_verify(caller: NcCaller, dav: FakeDav) -> None:
    assert (await outcome(await caller.request("PUT", f"{DAV}/a.txt", body=b"v3", version=3)))[
        0
    ] == 201
    status, body = await outcome(await caller.request("GET", f"{DAV}/a.txt", version=3))
    assert (status, body) == (200, b"v3")
    moved = await caller.request(
        "MOVE",
        f"{DAV}/a.txt",
        version=3,
        signed_headers={"Destination": "/remote.php/dav/files/alice/b.txt", "Overwrite": "F"},
        tunnel=True,
    )
    assert (await outcome(moved))[0] == 201
    assert dav.file("alice", "b.txt").read_bytes() == b"v3"


@pytest.mark.parametrize(
    ("sent", "why"),
    [
        ({"Destination": "/remote.php/dav/files/alice/elsewhere.txt", "Overwrite": "F"}, "dest"),
        ({"Destination": "/remote.php/dav/files/alice/b.txt", "Overwrite": "T"}, "overwrite"),
        ({"Destination": "/remote.php/dav/files/alice/b.txt"}, "overwrite dropped"),
        (
            {"Destination": "/remote.php/dav/files/alice/b.txt", "Overwrite": "F", "Depth": "0"},
            "+d",
        ),
    ],
)
async def test_v3_covers_destination_overwrite_and_depth(
    caller: NcCaller, dav: FakeDav, sent: dict[str, str], why: str
) -> None:
    """A captured MOVE sent with another Destination (or Overwrite, Depth) does not verify."""
    (dav.root / "alice" / "a.txt").write_bytes(b"x")
    signed = {"Destination": "/remote.php/dav/files/alice/b.txt", "Overwrite": "F"}
    hdrs = caller.headers("MOVE", f"{DAV}/a.txt", version=3, signed_headers=signed)
    resp = await caller.session.request(
        "MOVE", caller.url(f"{DAV}/a.txt"), headers={**hdrs, **sent}
    )
    assert await outcome(resp) == (401, "signature_mismatch"), why
    assert not any(r.method == "MOVE" for r in dav.seen)


async def test_v2_does_not_cover_destination(caller: NcCaller, dav: FakeDav) -> None:
    """Why v3 exists: a v2 signature says nothing about Destination."""
    (dav.root / "alice" / "a.txt").write_bytes(b"x")
    hdrs = caller.headers("MOVE", f"{DAV}/a.txt")
    resp = await caller.session.request(
        "MOVE",
        caller.url(f"{DAV}/a.txt"),
        headers={**hdrs, "Destination": "/remote.php/dav/files/alice/chosen-by-anyone.txt"},
    )
    assert (await outcome(resp))[0] == 201


async def test_v3_query_is_its_own_field(caller: NcCaller, dav: FakeDav) -> None:
    """`report%3Fv=2.pdf` (a name with '?') and `report` with the query `v=2.pdf` are two
    different v3 messages; v3 may address such a name (v1/v2 may not: path_ambiguous)."""
    (dav.root / "alice" / "report?v=2.pdf").write_bytes(b"q")
    named = f"{DAV}/report%3Fv=2.pdf"
    status, body = await outcome(await caller.request("GET", named, version=3))
    assert (status, body) == (200, b"q")
    queried = f"{DAV}/report?v=2.pdf"
    hdrs = caller.headers("GET", named, version=3)
    resp = await caller.session.get(caller.url(queried), headers=hdrs)
    assert await outcome(resp) == (401, "signature_mismatch")
    assert await outcome(await caller.request("GET", named)) == (400, "path_ambiguous")


@pytest.mark.parametrize("wire", ["q=a+b&empty", "q=a%20b&empty="])
async def test_v3_query_survives_phps_rewrites(caller: NcCaller, wire: str) -> None:
    """Signed as `q=a%20b&empty` by the service, received as PHP rewrites it."""
    target = "/nc/ocs/v2.php/apps/echo/x"
    hdrs = caller.headers("GET", f"{target}?q=a%20b&empty", version=3)
    resp = await caller.session.get(caller.url(f"{target}?{wire}"), headers=hdrs)
    assert (await outcome(resp))[0] == 200


async def test_v3_body_must_match_its_declared_hash(caller: NcCaller, dav: FakeDav) -> None:
    hdrs = caller.headers("PUT", f"{DAV}/h.txt", body=b"declared", version=3)
    resp = await caller.session.put(caller.url(f"{DAV}/h.txt"), headers=hdrs, data=b"swapped!")
    assert await outcome(resp) == (401, "signature_content_hash_mismatch")
    assert not (dav.root / "alice" / "h.txt").exists()


@pytest.mark.parametrize("value", [None, "", "ab" * 31, "zz" * 32])
async def test_v3_needs_a_content_hash(caller: NcCaller, value: str | None) -> None:
    hdrs = caller.headers("GET", f"{DAV}/", version=3)
    if value is None:
        del hdrs["X-Beeflow-Content-SHA256"]
    else:
        hdrs["X-Beeflow-Content-SHA256"] = value
    resp = await caller.session.get(caller.url(f"{DAV}/"), headers=hdrs)
    assert await outcome(resp) == (401, "signature_content_hash_invalid")


async def test_a_forged_v3_upload_is_refused_before_its_body(nc_conn: RunningConnector) -> None:
    """The head says 100 MB; nothing but the head is ever sent: the 401 comes at once."""
    ts = int(time.time())
    sig = v3_signature("forged-key-0123456789", ts, "PUT", f"{DAV}/big.bin", "alice", "ab" * 32)
    head = request_bytes(
        "PUT",
        f"{DAV}/big.bin",
        [
            ("X-Beeflow-Sig", sig),
            ("X-Beeflow-NC-Uid", "alice"),
            ("X-Beeflow-Content-SHA256", "ab" * 32),
            ("Content-Length", str(100 * 1000 * 1000)),
        ],
    )
    assert nc_conn.url.port is not None
    resp = await exchange("127.0.0.1", nc_conn.url.port, head, timeout=5)
    assert resp.status == 401
    assert resp.code == "signature_mismatch"
    assert resp.elapsed < 2


async def test_a_genuine_v3_upload_is_verified_before_its_body(
    caller: NcCaller, nc_conn: RunningConnector
) -> None:
    """Expect: 100-continue is answered only after the v3 signature verified."""
    body = b"z" * 5000
    hdrs = caller.headers("PUT", f"{DAV}/e.bin", body=body, version=3)
    hdrs["Content-Length"] = str(len(body))
    hdrs["Expect"] = "100-continue"
    assert nc_conn.url.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", nc_conn.url.port)
    head = request_bytes("PUT", f"{DAV}/e.bin", list(hdrs.items()))
    writer.write(head)
    await writer.drain()
    async with asyncio.timeout(5):
        interim = await reader.readuntil(b"\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(body)
    await writer.drain()
    async with asyncio.timeout(5):
        final = await reader.readuntil(b"\r\n\r\n")
    assert final.startswith(b"HTTP/1.1 201 ")
    writer.close()


async def test_nonces_make_identical_writes_distinct(caller: NcCaller) -> None:
    target = "/nc/ocs/v2.php/apps/echo/n"
    ts = int(time.time())
    for nonce in ("one", "two"):
        resp = await caller.request("POST", target, body=b"same", version=3, ts=ts, nonce=nonce)
        assert (await outcome(resp))[0] == 200
    again = await caller.request("POST", target, body=b"same", version=3, ts=ts, nonce="one")
    assert await outcome(again) == (401, "signature_replayed")


@pytest.mark.parametrize("nonce", ["has space", "x" * 129, "é"])
async def test_nonce_syntax(caller: NcCaller, nonce: str) -> None:
    hdrs = caller.headers("GET", f"{DAV}/", version=3)
    hdrs["X-Beeflow-Nonce"] = nonce
    resp = await caller.session.get(caller.url(f"{DAV}/"), headers=hdrs)
    assert await outcome(resp) == (400, "nonce_invalid")


async def test_malformed_v3_header(caller: NcCaller) -> None:
    hdrs = caller.headers("GET", f"{DAV}/", version=3)
    hdrs["X-Beeflow-Sig"] = "v3." + hdrs["X-Beeflow-Sig"][3:].replace(".", "x", 1)
    resp = await caller.session.get(caller.url(f"{DAV}/"), headers=hdrs)
    assert (await outcome(resp))[0] == 401


async def test_admin_can_require_v3(
    connector_factory: ConnectorFactory, session: aiohttp.ClientSession, dav: FakeDav
) -> None:
    conn = await connector_factory(BEEFLOW_NC_SIGNATURE_REQUIRE_V3="1")
    caller = NcCaller(session, conn.url)
    (dav.root / "alice" / "r.txt").write_bytes(b"r")
    for version in (1, 2):
        resp = await caller.request("GET", f"{DAV}/r.txt", version=version)
        assert await outcome(resp) == (401, "signature_version_refused")
    assert await outcome(await caller.request("GET", f"{DAV}/r.txt", version=3)) == (200, b"r")


# ------------------------------------------------------------ through AppAPI's PHP proxy


@pytest.fixture
async def via_php(
    session: aiohttp.ClientSession, nc_conn: RunningConnector
) -> AsyncIterator[NcCaller]:
    proxy = PhpProxy(nc_conn.url, secret=SECRET)
    await proxy.start()
    yield NcCaller(session, proxy.url, prefix=PROXY_PREFIX + "bee_flow")
    await proxy.stop()


async def test_v3_through_the_php_proxy(via_php: NcCaller, dav: FakeDav) -> None:
    """The path arrives decoded once (`%40` as `@`), the query re-serialised by PHP: v3 still
    verifies, and Nextcloud gets the file the service meant."""
    put = await via_php.request("PUT", f"{DAV}/a%40b%20caf%C3%A9.txt", body=b"p", version=3)
    assert (await outcome(put))[0] == 201
    assert dav.file("alice", "a@b caf\u00e9.txt").read_bytes() == b"p"
    listing = await via_php.request(
        "PROPFIND", f"{DAV}/", version=3, tunnel=True, signed_headers={"Depth": "1"}
    )
    assert (await outcome(listing))[0] == 207
    echo = await via_php.request("GET", "/nc/ocs/v2.php/apps/echo/q?q=a%20b&empty", version=3)
    assert (await outcome(echo))[0] == 200


async def test_v3_never_names_one_file_and_reaches_another(via_php: NcCaller, dav: FakeDav) -> None:
    """The service means the file literally named `My%20Report.pdf` and sends
    `My%2520Report.pdf`; the PHP proxy passes `My%20Report.pdf`, which Nextcloud would read as
    `My Report.pdf`. v3 signs what Nextcloud acts on, so this cannot verify."""
    (dav.root / "alice" / "My Report.pdf").write_bytes(b"the wrong file")
    resp = await via_php.request("DELETE", f"{DAV}/My%2520Report.pdf", version=3)
    assert await outcome(resp) == (401, "signature_mismatch")
    assert (dav.root / "alice" / "My Report.pdf").exists()
    assert not any(r.method == "DELETE" for r in dav.seen)
