"""Signature games on /nc (docs/nc-proxy.md, "The signature" and "Replays"): line breaks that
shift the fields of a signed message, a '?' decoded out of the path, v1 switched off, and a
write's signature used twice."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from beeflow.proxy.nc.replay import MemoryReplayCache, ReplayCacheFull
from beeflow.proxy.nc.signatures import GUARD
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud_dav import FakeDav
from tests.fakes.php_proxy import PROXY_PREFIX, PhpProxy
from tests.helpers import SECRET, TENANT_KEY, RunningConnector
from tests.proxy.conftest import dead_port
from tests.proxy.nc.caller import NcCaller, nc_signature, outcome

DAV = "/nc/remote.php/dav/files/alice"
OCS_USER = "/nc/ocs/v2.php/cloud/user?format=json"
EMPTY = hashlib.sha256(b"").hexdigest()


# ------------------------------------------------------------ line breaks in the query


@pytest.mark.parametrize(
    "query",
    [
        "format=json%0A",
        "format=json%0Aalice",
        "format=json%0D",
        "format=json%00",
        "format=json%250A",  # decoded twice
        "format=json%25250D",  # three times
        "format=%0a",
    ],
)
async def test_line_breaks_in_the_query_are_refused(caller: NcCaller, query: str) -> None:
    target = f"/nc/ocs/v2.php/cloud/user?{query}"
    assert await outcome(await caller.request("GET", target, uid="")) == (400, "query_invalid")


async def test_a_v2_signature_cannot_be_read_as_v1_through_a_line_break(
    caller: NcCaller, nc_conn: RunningConnector
) -> None:
    """The attack: the v2 message `ts\\nGET\\n<path>\\n\\n<empty-body hash>` is also the v1
    message of `<path>` + LF with the uid `<empty-body hash>`."""
    ts = int(time.time())
    captured = nc_signature(TENANT_KEY, ts, "GET", OCS_USER, "", EMPTY)
    resp = await caller.session.get(
        caller.url(OCS_USER + "%0A"),
        headers={"X-Beeflow-Sig": captured, "X-Beeflow-NC-Uid": EMPTY},
    )
    assert await outcome(resp) == (400, "query_invalid")
    assert nc_conn.app[GUARD].stats.verified == 0


async def test_v1_can_be_switched_off(
    connector_factory: ConnectorFactory, session: aiohttp.ClientSession, dav: FakeDav
) -> None:
    (dav.root / "alice" / "v.txt").write_bytes(b"v")
    on = NcCaller(session, (await connector_factory()).url)
    assert await outcome(await on.request("GET", f"{DAV}/v.txt", version=1)) == (200, b"v")
    off = NcCaller(session, (await connector_factory(BEEFLOW_NC_SIGNATURE_V1="0")).url)
    assert await outcome(await off.request("GET", f"{DAV}/v.txt", version=1)) == (
        401,
        "signature_mismatch",
    )
    assert await outcome(await off.request("GET", f"{DAV}/v.txt", version=2)) == (200, b"v")


# ------------------------------------------------------------ '?' and '#' in the decoded path


@pytest.mark.parametrize("name", ["report%3Fv=2.pdf", "report%3fv=2.pdf", "a%23b.txt"])
async def test_a_decoded_path_that_splits_is_refused_for_v1_and_v2(
    caller: NcCaller, dav: FakeDav, name: str
) -> None:
    for version in (1, 2):
        resp = await caller.request("GET", f"{DAV}/{name}", version=version)
        assert await outcome(resp) == (400, "path_ambiguous")
    assert dav.seen == []


async def test_one_signature_no_longer_stands_for_two_requests(
    caller: NcCaller, dav: FakeDav
) -> None:
    """A v2 signature over the decoded `/report?v=2.pdf` verified for the file `report?v=2.pdf`
    and for `report` with the query `v=2.pdf`; now only the second reading is served."""
    (dav.root / "alice" / "report").write_bytes(b"plain")
    signed = f"{DAV}/report?v=2.pdf"
    hdrs = caller.headers("GET", signed)
    as_query = await caller.session.get(caller.url(signed), headers=hdrs)
    assert await outcome(as_query) == (200, b"plain")
    as_name = await caller.session.get(caller.url(f"{DAV}/report%3Fv=2.pdf"), headers=hdrs)
    assert await outcome(as_name) == (400, "path_ambiguous")


# ------------------------------------------------------------ replays of writes


async def test_a_signed_delete_runs_once(caller: NcCaller, dav: FakeDav) -> None:
    (dav.root / "alice" / "d.txt").write_bytes(b"d")
    hdrs = caller.headers("DELETE", f"{DAV}/d.txt")
    first = await caller.session.delete(caller.url(f"{DAV}/d.txt"), headers=hdrs)
    assert (await outcome(first))[0] == 204
    (dav.root / "alice" / "d.txt").write_bytes(b"again")
    second = await caller.session.delete(caller.url(f"{DAV}/d.txt"), headers=hdrs)
    assert await outcome(second) == (401, "signature_replayed")
    assert (dav.root / "alice" / "d.txt").read_bytes() == b"again"
    assert sum(1 for r in dav.seen if r.method == "DELETE") == 1


@pytest.mark.parametrize("tunnelled", [False, True])
async def test_a_replayed_write_is_refused_before_its_body(
    caller: NcCaller, dav: FakeDav, tunnelled: bool
) -> None:
    body = b"p" * 300_000
    hdrs = caller.headers("PUT", f"{DAV}/p.bin", body=body)
    if tunnelled:
        hdrs["X-HTTP-Method-Override"] = "PUT"
    method = "POST" if tunnelled else "PUT"
    first = await caller.session.request(
        method, caller.url(f"{DAV}/p.bin"), headers=hdrs, data=body
    )
    assert (await outcome(first))[0] == 201
    hdrs["Expect"] = "100-continue"
    again = await caller.session.request(
        method, caller.url(f"{DAV}/p.bin"), headers=hdrs, data=body
    )
    assert await outcome(again) == (401, "signature_replayed")
    assert sum(1 for r in dav.seen if r.method == "PUT") == 1


@pytest.mark.parametrize("verb", ["GET", "PROPFIND"])
async def test_reads_may_repeat(caller: NcCaller, dav: FakeDav, verb: str) -> None:
    (dav.root / "alice" / "r.txt").write_bytes(b"r")
    hdrs = caller.headers(verb, f"{DAV}/r.txt")
    for _ in range(3):
        resp = await caller.session.request(verb, caller.url(f"{DAV}/r.txt"), headers=hdrs)
        assert (await outcome(resp))[0] in (200, 207)


async def test_a_write_refused_before_nextcloud_may_be_sent_again(
    caller: NcCaller, dav: FakeDav
) -> None:
    """Its signature was recorded, then the request was refused (a Destination on another
    host) before Nextcloud saw it: the record is dropped, so the same request is answered
    the same way again, not as a replay."""
    (dav.root / "alice" / "m.txt").write_bytes(b"m")
    hdrs = caller.headers("MOVE", f"{DAV}/m.txt")
    hdrs["Destination"] = "https://elsewhere.example/remote.php/dav/files/alice/x.txt"
    for _ in range(2):
        resp = await caller.session.request("MOVE", caller.url(f"{DAV}/m.txt"), headers=hdrs)
        assert await outcome(resp) == (400, "destination_foreign_host")


async def test_a_write_nextcloud_never_received_may_be_sent_again(
    connector_factory: ConnectorFactory, session: aiohttp.ClientSession
) -> None:
    conn = await connector_factory(NEXTCLOUD_URL=f"http://127.0.0.1:{dead_port()}")
    caller = NcCaller(session, conn.url)
    hdrs = caller.headers("DELETE", f"{DAV}/gone.txt")
    for _ in range(2):
        resp = await session.delete(caller.url(f"{DAV}/gone.txt"), headers=hdrs)
        assert await outcome(resp) == (502, "nextcloud_unreachable")


# ------------------------------------------------------------ the cache itself


async def test_the_cache_forgets_a_claim_once_its_window_has_passed() -> None:
    now = [1000.0]
    cache = MemoryReplayCache(4, clock=lambda: now[0])
    assert await cache.claim(b"a", 1010.0)
    assert cache.seen(b"a")
    assert not await cache.claim(b"a", 1010.0)
    now[0] = 1010.0
    assert not cache.seen(b"a")
    assert await cache.claim(b"a", 1020.0)
    assert len(cache) == 1


async def test_the_cache_is_bounded_and_fails_closed() -> None:
    now = [0.0]
    cache = MemoryReplayCache(3, clock=lambda: now[0])
    for mac in (b"a", b"b", b"c"):
        assert await cache.claim(mac, 100.0)
    with pytest.raises(ReplayCacheFull):
        await cache.claim(b"d", 100.0)
    await cache.release(b"b")
    assert await cache.claim(b"d", 100.0)
    now[0] = 100.0
    assert await cache.claim(b"e", 200.0)  # the expired ones made room
    assert len(cache) == 1


async def test_released_entries_do_not_grow_the_heap() -> None:
    cache = MemoryReplayCache(10, clock=lambda: 0.0)
    for i in range(5000):
        mac = i.to_bytes(4, "big")
        assert await cache.claim(mac, 100.0)
        await cache.release(mac)
    assert len(cache) == 0
    assert len(cache._expiry) < 2000


async def test_a_full_cache_answers_503(nc_conn: RunningConnector, caller: NcCaller) -> None:
    guard = nc_conn.app[GUARD]
    guard.replays = MemoryReplayCache(1)
    first = await caller.request("POST", "/nc/ocs/v2.php/apps/echo/a", body=b"1")
    assert (await outcome(first))[0] == 200
    second = await caller.request("POST", "/nc/ocs/v2.php/apps/echo/a", body=b"2")
    status, code = await outcome(second)
    assert (status, code) == (503, "replay_cache_full")


# ------------------------------------------------------------ an encoded '?' through the PHP proxy


@pytest.fixture
async def via_php(
    session: aiohttp.ClientSession, nc_conn: RunningConnector
) -> AsyncIterator[NcCaller]:
    proxy = PhpProxy(nc_conn.url, secret=SECRET)
    await proxy.start()
    yield NcCaller(session, proxy.url, prefix=PROXY_PREFIX + "bee_flow")
    await proxy.stop()


async def test_an_encoded_question_mark_through_the_php_proxy_never_reaches_another_file(
    via_php: NcCaller, dav: FakeDav
) -> None:
    """The service deletes the file `report?v=2.pdf` (it sends `report%3Fv%3D2.pdf`, signed
    over the decoded form). AppAPI's PHP proxy decodes the path: the connector receives
    `report` with the query `v=2.pdf`, which the v2 message reads the same, so it verified
    and deleted `report`. Now refused; v3 does not verify (its path and query are apart)."""
    (dav.root / "alice" / "report").write_bytes(b"another file")
    target = f"{DAV}/report%3Fv%3D2.pdf"
    v2 = await via_php.request("DELETE", target, tunnel=True)
    assert await outcome(v2) == (400, "path_ambiguous_via_php_proxy")
    v3 = await via_php.request("DELETE", target, tunnel=True, version=3)
    assert await outcome(v3) == (401, "signature_mismatch")
    hashed = await via_php.request("DELETE", f"{DAV}/a%23b.txt", tunnel=True)
    assert await outcome(hashed) == (401, "signature_mismatch")  # '#' cut the URL short
    assert (dav.root / "alice" / "report").exists()
    assert not any(r.method == "DELETE" for r in dav.seen)


async def test_queries_off_webdav_still_pass_the_php_proxy(via_php: NcCaller) -> None:
    resp = await via_php.request("GET", "/nc/ocs/v2.php/apps/echo/q?format=json")
    assert (await outcome(resp))[0] == 200
