"""Names holding literal `%XX` text (`My%20Report.pdf`, `%41b.txt`): AppAPI's PHP proxy decodes
the path once before the connector sees it, and Nextcloud decodes it again, so the raw form of
what arrives names ANOTHER file. Through the PHP proxy only a match on the decoded path form is
forwarded; via HaRP or directly (no extra decode) both forms address the same file."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes.nextcloud_dav import FakeDav
from tests.fakes.php_proxy import PROXY_PREFIX, PhpProxy
from tests.helpers import SECRET, RunningConnector
from tests.proxy.nc.caller import NcCaller, outcome

DAV = "/nc/remote.php/dav/files/alice"


@pytest.fixture
async def php(nc_conn: RunningConnector) -> AsyncIterator[PhpProxy]:
    proxy = PhpProxy(nc_conn.url, secret=SECRET)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
def via_php(session: aiohttp.ClientSession, php: PhpProxy) -> NcCaller:
    return NcCaller(session, php.url, prefix=PROXY_PREFIX + "bee_flow")


async def _refused(resp: aiohttp.ClientResponse) -> str:
    async with resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["code"] == "path_ambiguous_via_php_proxy"
    assert "HaRP" in body["error"]
    return str(body["error"])


async def test_literal_percent20_name_does_not_overwrite_another_file(
    via_php: NcCaller, php: PhpProxy, dav: FakeDav
) -> None:
    """The service updates the file literally named `My%20Report.pdf` (encoded `%2520`, the
    decoded form signed, as documented): the connector receives `My%20Report.pdf`, whose raw
    form verifies; forwarding it would overwrite `My Report.pdf`. Refused instead."""
    dav.put_file("alice", "My Report.pdf", b"the real report")
    resp = await via_php.request("PUT", f"{DAV}/My%2520Report.pdf", body=b"overwritten")
    await _refused(resp)
    assert php.forwarded[-1].target == f"{DAV}/My%20Report.pdf"
    assert dav.file("alice", "My Report.pdf").read_bytes() == b"the real report"
    assert not dav.file("alice", "My%20Report.pdf").exists()
    assert dav.seen == []


async def test_delete_of_literal_percent41_does_not_delete_ab(
    via_php: NcCaller, dav: FakeDav
) -> None:
    dav.put_file("alice", "Ab.txt", b"precious")
    dav.put_file("alice", "%41b.txt", b"scratch")
    await _refused(await via_php.request("DELETE", f"{DAV}/%2541b.txt"))
    assert dav.file("alice", "Ab.txt").read_bytes() == b"precious"
    assert dav.file("alice", "%41b.txt").exists()
    assert dav.seen == []


async def test_raw_form_signed_through_php_is_refused_when_the_path_has_escapes(
    via_php: NcCaller, php: PhpProxy, dav: FakeDav
) -> None:
    """A raw-form signature over `a%20b.txt` also verifies after PHP's decode + re-encode, but
    the connector cannot tell it from the literal-percent case above: refused too."""
    target = f"{DAV}/a%20b.txt"
    await _refused(await via_php.request("PUT", target, body=b"x", sign_target=target))
    assert php.forwarded[-1].target == target
    assert dav.seen == []
    # The decoded form (the documented one) goes through and names `a b.txt`.
    assert (await outcome(await via_php.request("PUT", target, body=b"x")))[0] == 201
    assert dav.file("alice", "a b.txt").read_bytes() == b"x"


async def test_decoded_path_with_a_raw_query_verifies(
    via_php: NcCaller, php: PhpProxy, dav: FakeDav
) -> None:
    """Path and query are separate candidates: the decoded path plus PHP's raw query form
    (`a%26b` is the value `a&b`; its decoded form would be a different query)."""
    target = "/nc/ocs/v2.php/apps/echo/caf%C3%A9?q=a%26b"
    signed = "/nc/ocs/v2.php/apps/echo/caf\u00e9?q=a%26b"
    resp = await via_php.request("GET", target, sign_target=signed)
    async with resp:
        assert resp.status == 200
    assert php.forwarded[-1].target == target
    assert dav.last().raw_path == "/ocs/v2.php/apps/echo/caf%C3%A9?q=a%26b"


@pytest.mark.parametrize("signed", ["decoded", "raw"])
async def test_direct_and_harp_keep_both_forms(caller: NcCaller, dav: FakeDav, signed: str) -> None:
    """No PHP proxy, no extra decode: the target the service sent reaches Nextcloud byte for
    byte, so the literal name is addressed whichever form was signed."""
    dav.put_file("alice", "Ab.txt", b"precious")
    dav.put_file("alice", "%41b.txt", b"scratch")
    target = f"{DAV}/%2541b.txt"
    sign_target = None if signed == "decoded" else target
    resp = await caller.request("DELETE", target, sign_target=sign_target)
    assert (await outcome(resp))[0] == 204
    assert dav.last("DELETE").raw_path == "/remote.php/dav/files/alice/%2541b.txt"
    assert not dav.file("alice", "%41b.txt").exists()
    assert dav.file("alice", "Ab.txt").read_bytes() == b"precious"


async def test_encoded_slash_through_php_becomes_a_slash(
    via_php: NcCaller, php: PhpProxy, dav: FakeDav, caller: NcCaller
) -> None:
    """`%2F` is decoded by PHP: `a%2Fb.txt` arrives as `a/b.txt`, verifies (decoded form signed)
    and reaches the file `b.txt` in folder `a`. Sent directly it is refused (encoded slash)."""
    dav.put_file("alice", "a/b.txt", b"inner")
    resp = await via_php.request("GET", f"{DAV}/a%2Fb.txt")
    async with resp:
        assert resp.status == 200
        assert await resp.read() == b"inner"
    assert php.forwarded[-1].target == f"{DAV}/a/b.txt"
    assert dav.last("GET").raw_path == "/remote.php/dav/files/alice/a/b.txt"
    assert await outcome(await caller.request("GET", f"{DAV}/a%2Fb.txt")) == (
        400,
        "path_traversal",
    )
    # `..` is still blocked: PHP's decode of %2e%2e yields a dot segment the connector refuses.
    before = len(dav.seen)
    resp = await via_php.request("GET", f"{DAV}/x/%2e%2e/a/b.txt")
    assert (await outcome(resp))[0] in (400, 404)
    assert len(dav.seen) == before
