"""`python -m beeflow sign`: headers the server's own verifier accepts, and that the real /nc proxy
accepts end to end; warnings for targets AppAPI's PHP proxy rewrites; no key ever printed."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from beeflow.ops import sign
from beeflow.proxy.nc.path import signature_candidates
from beeflow.signing import SIG_HEADER, UID_HEADER, parse_sig_header, verify_nc
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.php_proxy import PhpProxy
from tests.helpers import SECRET, TENANT_KEY, RunningConnector
from tests.ops.dockerfile import ROOT
from tests.procs import child_env

KEY = "tk_sign_test_0123456789abcdef0123456789"


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sign.add_arguments(parser)
    return parser.parse_args(argv)


def run(
    capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    code = sign.run(parse_args(*argv), env or {})
    captured = capsys.readouterr()
    headers = {}
    for line in captured.out.splitlines():
        name, _, value = line.partition(": ")
        headers[name] = value
    return code, headers, captured.err


def accepted(
    headers: dict[str, str], method: str, target: str, body: bytes = b"", key: str = KEY
) -> str | None:
    """What the server does: verify_nc over the decoded-then-raw candidates of the target."""
    sig = parse_sig_header(headers[SIG_HEADER])
    uid = headers.get(UID_HEADER, "")
    digest = hashlib.sha256(body).hexdigest()
    return verify_nc(key, sig, method, signature_candidates(target), uid, digest)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    return path


def test_signs_a_get_the_verifier_accepts(
    capsys: pytest.CaptureFixture[str], key_file: Path
) -> None:
    target = "/nc/ocs/v2.php/cloud/users/alice?format=json"
    code, headers, err = run(capsys, "GET", target, "--uid", "alice", "--key-file", str(key_file))
    assert code == 0
    assert set(headers) == {SIG_HEADER, UID_HEADER}
    assert headers[UID_HEADER] == "alice"
    assert accepted(headers, "GET", target) == "v2:0"
    assert KEY not in err
    assert "warning" not in err


def test_the_body_is_covered(capsys: pytest.CaptureFixture[str], key_file: Path) -> None:
    body = key_file.parent / "body.ics"
    body.write_bytes(b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n")
    target = "/nc/remote.php/dav/calendars/bob/personal/e.ics"
    code, headers, _ = run(
        capsys, "PUT", target, "--uid", "bob", "--body", str(body), "--key-file", str(key_file)
    )
    assert code == 0
    assert accepted(headers, "PUT", target, body.read_bytes()) == "v2:0"
    assert accepted(headers, "PUT", target, b"something else") is None
    assert accepted(headers, "POST", target, body.read_bytes()) is None


def test_timestamp_option_makes_it_reproducible(
    capsys: pytest.CaptureFixture[str], key_file: Path
) -> None:
    argv = ("DELETE", "/nc/ocs/v2.php/x", "--key-file", str(key_file), "--timestamp", "1700000000")
    _, first, _ = run(capsys, *argv)
    _, second, _ = run(capsys, *argv)
    assert first == second
    assert first[SIG_HEADER].startswith("1700000000.")


def test_a_service_level_call_has_no_uid_header(
    capsys: pytest.CaptureFixture[str], key_file: Path
) -> None:
    code, headers, err = run(capsys, "GET", "/nc/ocs/v2.php/x", "--key-file", str(key_file))
    assert code == 0
    assert set(headers) == {SIG_HEADER}
    assert "service-level" in err
    assert accepted(headers, "GET", "/nc/ocs/v2.php/x") == "v2:0"


def test_the_decoded_path_is_signed_because_the_php_proxy_decodes_at_signs(
    capsys: pytest.CaptureFixture[str], key_file: Path
) -> None:
    """%40 reaches the connector as '@' (docs/nc-proxy.md, "What survives AppAPI's PHP proxy"):
    the decoded form must match whichever of the two forms arrives."""
    sent = "/nc/remote.php/dav/calendars/bob/team%40example.com/"
    code, headers, err = run(capsys, "PROPFIND", sent, "--uid", "bob", "--key-file", str(key_file))
    assert code == 0
    assert accepted(headers, "PROPFIND", sent) == "v2:0"
    arrived = "/nc/remote.php/dav/calendars/bob/team@example.com/"
    assert accepted(headers, "PROPFIND", arrived) == "v2:0"
    assert "%40" in err
    assert "X-HTTP-Method-Override: PROPFIND" in err


@pytest.mark.parametrize(
    ("query", "hazard"),
    [
        ("a=1&a=2", "repeated_key"),
        ("x.y=1", "dot_or_space_in_key"),
        ("my+key=1", "dot_or_space_in_key"),
        ("arr[]=x&arr[]=y", "array_key"),
        ("empty", "bare_key"),
    ],
)
def test_queries_php_rewrites_are_warned_about(
    capsys: pytest.CaptureFixture[str], key_file: Path, query: str, hazard: str
) -> None:
    code, headers, err = run(
        capsys, "GET", f"/nc/ocs/v2.php/x?{query}", "--key-file", str(key_file)
    )
    assert code == 0
    assert SIG_HEADER in headers
    assert hazard in err


def test_an_encoded_slash_is_refused(capsys: pytest.CaptureFixture[str], key_file: Path) -> None:
    """%2F arrives as '/' through the PHP proxy and changes the path: /nc refuses it."""
    code, headers, err = run(
        capsys, "GET", "/nc/remote.php/dav/files/bob/a%2Fb", "--key-file", str(key_file)
    )
    assert code == 2
    assert headers == {}
    assert "encoded slash" in err


@pytest.mark.parametrize(
    "target",
    ["/nc/../etc/passwd", "/nc/ocs/../../x", "/nc/secret/x", "/api/x", "/nc/ocs/%2e%2e/x"],
)
def test_targets_nc_refuses_are_not_signed(
    capsys: pytest.CaptureFixture[str], key_file: Path, target: str
) -> None:
    code, headers, err = run(capsys, "GET", target, "--key-file", str(key_file))
    assert code == 2
    assert headers == {}
    assert "/nc will refuse" in err


@pytest.mark.parametrize(
    ("given", "target"),
    [
        (
            "https://cloud.example.com/index.php/apps/app_api/proxy/bee_flow/nc/ocs/v2.php/x?a=1",
            "/nc/ocs/v2.php/x?a=1",
        ),
        ("https://cloud.example.com/exapps/bee_flow/nc/remote.php/dav/", "/nc/remote.php/dav/"),
        ("/ocs/v2.php/cloud/capabilities", "/nc/ocs/v2.php/cloud/capabilities"),
    ],
)
def test_urls_and_bare_nextcloud_paths_are_read_as_the_connector_target(
    capsys: pytest.CaptureFixture[str], key_file: Path, given: str, target: str
) -> None:
    code, headers, _ = run(capsys, "GET", given, "--key-file", str(key_file))
    assert code == 0
    assert accepted(headers, "GET", target) == "v2:0"


def test_key_sources(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = "/nc/ocs/v2.php/x"
    # BEEFLOW_TENANT_KEY
    code, headers, err = run(capsys, "GET", target, env={"BEEFLOW_TENANT_KEY": KEY})
    assert code == 0
    assert accepted(headers, "GET", target) == "v2:0"
    assert "BEEFLOW_TENANT_KEY" in err
    # the connector's cache file (auto mode)
    (tmp_path / "tenant-key.json").write_text(json.dumps({"tenantKey": KEY, "organizationId": "o"}))
    env = {"BEEFLOW_TENANT_KEY": "auto", "APP_PERSISTENT_STORAGE": str(tmp_path)}
    code, headers, err = run(capsys, "GET", target, env=env)
    assert code == 0
    assert accepted(headers, "GET", target) == "v2:0"
    # --key-file with the JSON form
    code, headers, _ = run(
        capsys, "GET", target, "--key-file", str(tmp_path / "tenant-key.json"), env={}
    )
    assert accepted(headers, "GET", target) == "v2:0"
    for text in (err, capsys.readouterr().err):
        assert KEY not in text


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no tenant key"), ("", "empty"), ("{not json", "does not parse"), ("{}", "tenantKey")],
)
def test_missing_or_bad_keys_are_usage_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / "tenant-key.json").write_text(content)
    code, headers, err = run(
        capsys, "GET", "/nc/ocs/v2.php/x", env={"APP_PERSISTENT_STORAGE": str(tmp_path)}
    )
    assert code == 2
    assert headers == {}
    assert message in err


@pytest.mark.parametrize(
    ("method", "uid"), [("G E T", ""), ("GET", "bob\r\nX: y"), ("GET", " bob")]
)
def test_bad_method_or_uid_is_refused(
    capsys: pytest.CaptureFixture[str], key_file: Path, method: str, uid: str
) -> None:
    code, headers, _ = run(
        capsys, method, "/nc/ocs/v2.php/x", "--uid", uid, "--key-file", str(key_file)
    )
    assert code == 2
    assert headers == {}


async def test_the_command_line_prints_headers_for_curl(key_file: Path) -> None:
    """`python -m beeflow sign ... | curl -H @-`: stdout is only `Name: value` lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "beeflow",
        "sign",
        "get",
        "/nc/ocs/v2.php/cloud/users/alice",
        "--uid",
        "alice",
        "--key-file",
        str(key_file),
        cwd=str(ROOT),
        env=child_env({}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert [line.split(": ")[0] for line in lines] == [SIG_HEADER, UID_HEADER]
    headers = dict(line.split(": ", 1) for line in lines)
    assert accepted(headers, "GET", "/nc/ocs/v2.php/cloud/users/alice") == "v2:0"
    assert KEY.encode() not in out + err


async def test_the_nc_proxy_accepts_the_signed_call(
    connector: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    """End to end: the printed headers get a call through the real /nc proxy to Nextcloud."""
    target = "/nc/ocs/v2.php/cloud/users/alice?format=json"
    headers, _ = sign.sign("GET", target, uid="alice", key=TENANT_KEY)
    resp = await connector.request("GET", target, headers=headers)
    raw = await resp.read()
    assert resp.status == 200, raw
    if resp.headers.get("Content-Encoding") == "gzip":  # passed through untouched
        raw = gzip.decompress(raw)
    body = json.loads(raw)
    assert body["ocs"]["data"]["id"] == "alice"
    reached = fake_nc.calls_to("/ocs/v2.php/cloud/users/alice")
    assert reached
    assert reached[-1].user == "alice"
    # a signature over another user is refused
    forged = dict(headers, **{UID_HEADER: "admin"})
    resp = await connector.request("GET", target, headers=forged)
    assert resp.status == 401


@pytest.fixture
async def php_proxy(connector: RunningConnector) -> AsyncIterator[PhpProxy]:
    proxy = PhpProxy(connector.url, secret=SECRET)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def _via_php(
    proxy: PhpProxy, method: str, target: str, headers: dict[str, str]
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(auto_decompress=True) as session,
        session.request(method, proxy.proxy_url(target), headers=headers) as resp,
    ):
        body = await resp.read()
        try:
            return resp.status, json.loads(
                gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
            )
        except ValueError:
            return resp.status, body


async def test_signed_calls_through_nextclouds_php_proxy(
    php_proxy: PhpProxy, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The way the service really calls: via /index.php/apps/app_api/proxy/bee_flow/nc/..."""
    key_file = tmp_path / "key"
    key_file.write_text(TENANT_KEY)
    # a plain target verifies and reaches Nextcloud as alice
    target = "/nc/ocs/v2.php/cloud/users/alice?format=json"
    code, headers, err = run(capsys, "GET", target, "--uid", "alice", "--key-file", str(key_file))
    assert code == 0
    assert "warning" not in err
    status, body = await _via_php(php_proxy, "GET", target, headers)
    assert status == 200, body
    assert body["ocs"]["data"]["id"] == "alice"
    # %40 arrives as '@': the decoded form that `sign` signs still verifies (Nextcloud's own
    # answer, not the connector's 401, comes back)
    target = "/nc/ocs/v2.php/cloud/users/team%40example.com?format=json"
    # (as a user: Nextcloud answers user reads without one with 997, not logged in)
    code, headers, err = run(capsys, "GET", target, "--uid", "admin", "--key-file", str(key_file))
    assert "%40" in err
    status, body = await _via_php(php_proxy, "GET", target, headers)
    assert php_proxy.forwarded[-1].target.startswith("/nc/ocs/v2.php/cloud/users/team@example.com")
    assert status == 404, body  # Nextcloud: no such user
    assert body["ocs"]["meta"]["statuscode"] == 404
    # a repeated query key is rewritten by PHP: `sign` warned, the connector says why it failed
    target = "/nc/ocs/v2.php/cloud/users/alice?format=json&format=xml"
    code, headers, err = run(capsys, "GET", target, "--uid", "alice", "--key-file", str(key_file))
    assert "repeated_key" in err
    status, body = await _via_php(php_proxy, "GET", target, headers)
    assert status == 401
    assert body["code"] == "signature_mismatch_query"
