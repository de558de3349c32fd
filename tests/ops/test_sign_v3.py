"""`python -m beeflow sign --v3`: the documented test vector, nonces, option errors, warnings, and a
call through AppAPI's PHP proxy stand-in (the WebDAV calls through the real /nc proxy are in
tests/proxy/nc/test_sign_v3_calls.py)."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import pytest

from beeflow.ops import sign
from beeflow.signing import SIG_HEADER, UID_HEADER
from tests.fakes.php_proxy import PhpProxy
from tests.helpers import SECRET, TENANT_KEY, RunningConnector

DAV = "/nc/remote.php/dav/files/alice"
NONCE = "X-Beeflow-Nonce"


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sign.add_arguments(parser)
    return parser.parse_args(argv)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, str], str]:
    code = sign.run(parse_args(*argv), {"BEEFLOW_TENANT_KEY": TENANT_KEY})
    captured = capsys.readouterr()
    headers = dict(line.split(": ", 1) for line in captured.out.splitlines())
    return code, headers, captured.err


def test_the_documented_test_vector() -> None:
    """docs/nc-proxy.md, "The v3 signature": key 16 x 'k', ts 1, a MOVE with a query."""
    headers, warnings = sign.sign(
        "MOVE",
        "/nc/remote.php/dav/files/bob/a%20b.txt?x=1",
        uid="bob",
        key="k" * 16,
        timestamp=1,
        v3=sign.V3(destination="/remote.php/dav/files/bob/c.txt", overwrite="F", nonce=""),
    )
    assert headers[SIG_HEADER] == (
        "v3.1.ce30e1b4ee4d0b665f53186477957843ccf50fc41e04b511b33dde32e6d6bc77"
    )
    assert headers["X-Beeflow-Content-SHA256"] == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert headers["Destination"] == "/remote.php/dav/files/bob/c.txt"
    assert headers["Overwrite"] == "F"
    assert "Depth" not in headers
    assert NONCE not in headers
    assert any("X-HTTP-Method-Override: MOVE" in w for w in warnings)


def test_a_write_gets_a_random_nonce_a_read_none() -> None:
    write, _ = sign.sign("DELETE", f"{DAV}/x", uid="alice", key=TENANT_KEY, v3=sign.V3())
    again, _ = sign.sign("DELETE", f"{DAV}/x", uid="alice", key=TENANT_KEY, v3=sign.V3())
    assert write[NONCE] != again[NONCE]
    assert write[SIG_HEADER] != again[SIG_HEADER]
    read, _ = sign.sign("PROPFIND", f"{DAV}/", uid="alice", key=TENANT_KEY, v3=sign.V3())
    assert NONCE not in read


def test_option_errors_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, headers, err = run(capsys, "MOVE", f"{DAV}/a", "--destination", "/x")
    assert (code, headers) == (2, {})
    assert "--v3 only" in err
    code, _, err = run(capsys, "PUT", f"{DAV}/a", "--v3", "--nonce", "has space")
    assert code == 2
    assert "--nonce" in err
    code, _, err = run(capsys, "GET", f"{DAV}/%ff", "--v3")
    assert code == 2
    assert "UTF-8" in err
    assert TENANT_KEY not in err


def test_v3_warns_only_about_what_it_cannot_survive(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "GET", "/nc/ocs/v2.php/x?q=a+b&bare", "--v3")
    assert code == 0
    assert "re-serialises" not in err  # the canonical query absorbs these
    code, _, err = run(capsys, "GET", "/nc/ocs/v2.php/x?a=1&a=2", "--v3")
    assert "repeated_key" in err


# ------------------------------------------------------------------ through the PHP proxy


@pytest.fixture
async def php_proxy(connector: RunningConnector) -> AsyncIterator[PhpProxy]:
    proxy = PhpProxy(connector.url, secret=SECRET)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_v3_through_the_php_proxy_with_a_query_php_rewrites(php_proxy: PhpProxy) -> None:
    """`bare` arrives as `bare=` (PHP's http_build_query): v3 still verifies."""
    target = "/nc/ocs/v2.php/cloud/users/alice?format=json&bare"
    headers, _ = sign.sign("GET", target, uid="alice", key=TENANT_KEY, v3=sign.V3())
    async with (
        aiohttp.ClientSession() as session,
        session.get(php_proxy.proxy_url(target), headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
    assert php_proxy.forwarded[-1].target.endswith("?format=json&bare=")
    assert UID_HEADER in headers
