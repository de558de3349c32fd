"""/nc signature verification: the wire format (pure) and the full matrix over real sockets."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import aiohttp
import pytest

from beeflow.signing import (
    SigFormatError,
    nc_message_v1,
    nc_message_v2,
    parse_sig_header,
    sign_nc_v2,
    verify_nc,
)
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud_dav import FakeDav
from tests.helpers import TENANT_KEY, RunningConnector, sign_nc_v1
from tests.proxy.nc.caller import NcCaller, nc_signature, outcome

HEX64 = "ab" * 32


# ------------------------------------------------------------ pure: the wire format


def test_message_formats_byte_for_byte() -> None:
    digest = hashlib.sha256(b"body").hexdigest()
    assert nc_message_v2(1700000000, "PUT", "/nc/x?y=1", "bob", digest) == (
        f"1700000000\nPUT\n/nc/x?y=1\nbob\n{digest}"
    )
    assert nc_message_v1(1700000000, "GET", "/nc/x", "") == "1700000000\nGET\n/nc/x\n"


def test_signers_match_an_independent_hmac() -> None:
    ts, path = 1700000000, "/nc/remote.php/dav/files/bob/a@b c"
    digest = hashlib.sha256(b"data").hexdigest()
    assert sign_nc_v2(TENANT_KEY, ts, "PUT", path, "bob", b"data") == nc_signature(
        TENANT_KEY, ts, "PUT", path, "bob", digest
    )
    assert sign_nc_v1(TENANT_KEY, ts, "GET", path, "") == nc_signature(
        TENANT_KEY, ts, "GET", path, "", None
    )
    # Known vectors, so a change of the format cannot pass unnoticed.
    assert sign_nc_v1("k" * 16, 1, "GET", "/nc/ocs/", "") == (
        "1.39dbabef88ab801c2318ea3ff8d0dfea06ec7c18dfd29a86c6d03b3a9488634a"
    )
    assert sign_nc_v2("k" * 16, 1, "PUT", "/nc/ocs/", "bob", b"x") == (
        "1.18929499f1eb530042c2adde55911295ee83e206297694edc664f01796164a79"
    )


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("", "signature_malformed"),
        ("1700000000", "signature_malformed"),
        ("1700000000.", "signature_malformed"),
        (f".{HEX64}", "signature_malformed"),
        (f"17x0.{HEX64}", "signature_timestamp_invalid"),
        (f"-1.{HEX64}", "signature_timestamp_invalid"),
        (f"1234567890123.{HEX64}", "signature_timestamp_invalid"),
        ("1700000000." + "a" * 62, "signature_hex_invalid"),
        ("1700000000." + "a" * 66, "signature_hex_invalid"),
        ("1700000000." + "g" * 64, "signature_hex_invalid"),
        ("1700000000." + HEX64 + ".x", "signature_hex_invalid"),
    ],
)
def test_parse_rejects(value: str, code: str) -> None:
    with pytest.raises(SigFormatError) as info:
        parse_sig_header(value)
    assert info.value.code == code


def test_parse_accepts_upper_case_hex_and_keeps_the_timestamp_text() -> None:
    parsed = parse_sig_header(" 01700000000." + HEX64.upper() + " ")
    assert parsed.ts == 1700000000
    assert parsed.ts_text == "01700000000"  # signed as sent, leading zero included
    assert len(parsed.mac) == 32


def test_verify_reports_the_matching_candidate() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    paths = ("/nc/a@b", "/nc/a%40b")
    for version, path_index in (("v2", 0), ("v2", 1), ("v1", 0), ("v1", 1)):
        header = nc_signature(
            TENANT_KEY, 5, "PUT", paths[path_index], "u", digest if version == "v2" else None
        )
        sig = parse_sig_header(header)
        assert verify_nc(TENANT_KEY, sig, "PUT", paths, "u", digest) == f"{version}:{path_index}"
        assert verify_nc(TENANT_KEY, sig, "PUT", paths, "v", digest) is None
        assert verify_nc("other-key-0123456789", sig, "PUT", paths, "u", digest) is None


# ------------------------------------------------------------ the matrix over sockets

TARGET = "/nc/index.php/apps/echo/a%40b%20c?x=1"
BODY = b'{"hello": "world"}'


def _sign_target(form: str) -> str:
    return "/nc/index.php/apps/echo/a@b c?x=1" if form == "decoded" else TARGET


@pytest.mark.parametrize("version", [2, 1])
@pytest.mark.parametrize("form", ["decoded", "raw"])
async def test_valid_signatures_pass(
    caller: NcCaller, dav: FakeDav, version: int, form: str
) -> None:
    resp = await caller.request(
        "PUT", TARGET, body=BODY, version=version, sign_target=_sign_target(form)
    )
    async with resp:
        assert resp.status == 200
        data = (await resp.json())["bodySha256"]
    assert data == hashlib.sha256(BODY).hexdigest()
    seen = dav.last("PUT")
    assert seen.raw_path == TARGET[3:]
    assert seen.user == "alice"


NOW = int(time.time())

# (case, signing overrides, expected (status, code)); v1 does not cover the body.
CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("wrong body", {"body_sha256": hashlib.sha256(b"other").hexdigest()}, 401, "mismatch"),
    ("wrong method", {"sign_method": "POST"}, 401, "signature_mismatch"),
    ("wrong uid", {"sign_uid": "bob"}, 401, "signature_mismatch"),
    ("wrong key", {"key": "not-the-tenant-key-0123"}, 401, "signature_mismatch"),
    ("wrong path", {"sign_target": "/nc/index.php/apps/echo/other?x=1"}, 401, "signature_mismatch"),
    ("path without /nc", {"sign_target": "/index.php/apps/echo/a@b c?x=1"}, 401, "mismatch"),
    ("path without query", {"sign_target": "/nc/index.php/apps/echo/a@b c"}, 401, "mismatch"),
    ("skew +301", {"ts": NOW + 301}, 401, "signature_expired"),
    ("skew -301", {"ts": NOW - 301}, 401, "signature_expired"),
    ("skew +295", {"ts": NOW + 295}, 200, ""),
    ("skew -295", {"ts": NOW - 295}, 200, ""),
]


@pytest.mark.parametrize("version", [2, 1])
@pytest.mark.parametrize("form", ["decoded", "raw"])
@pytest.mark.parametrize(("case", "overrides", "status", "code"), CASES, ids=[c[0] for c in CASES])
async def test_signature_matrix(
    caller: NcCaller,
    dav: FakeDav,
    version: int,
    form: str,
    case: str,
    overrides: dict[str, Any],
    status: int,
    code: str,
) -> None:
    overrides = dict(overrides)
    if case.startswith("skew"):
        overrides["ts"] = int(time.time()) + (overrides["ts"] - NOW)
    overrides.setdefault("sign_target", _sign_target(form))
    before = len(dav.seen)
    got = await outcome(
        await caller.request("PUT", TARGET, body=BODY, version=version, **overrides)
    )
    if case == "wrong body" and version == 1:
        assert got[0] == 200  # v1 signs no body: the documented weakness of the legacy format
        return
    if code == "mismatch":
        code = "signature_mismatch"
    assert got[0] == status
    if status == 200:
        assert len(dav.seen) == before + 1
    else:
        assert got[1] == code
        assert len(dav.seen) == before  # nothing reached Nextcloud


def _raw_headers(sig: str | None, uid: str | None = "alice") -> dict[str, str]:
    out: dict[str, str] = {}
    if sig is not None:
        out["X-Beeflow-Sig"] = sig
    if uid is not None:
        out["X-Beeflow-NC-Uid"] = uid
    return out


@pytest.mark.parametrize(
    ("sig", "code"),
    [
        (None, "signature_missing"),
        ("", "signature_missing"),
        ("garbage", "signature_malformed"),
        (f"{NOW}.{'a' * 62}", "signature_hex_invalid"),
        (f"{NOW}.{'a' * 66}", "signature_hex_invalid"),
        (f"{NOW}.{'z' * 64}", "signature_hex_invalid"),
        (f"now.{HEX64}", "signature_timestamp_invalid"),
    ],
)
async def test_malformed_headers(
    session: aiohttp.ClientSession, nc_conn: RunningConnector, sig: str | None, code: str
) -> None:
    resp = await session.get(
        str(nc_conn.url) + "/nc/ocs/v2.php/apps/echo/x", headers=_raw_headers(sig)
    )
    assert await outcome(resp) == (401, code)


async def test_uid_is_signed_and_absent_means_service(
    session: aiohttp.ClientSession, nc_conn: RunningConnector, dav: FakeDav
) -> None:
    """No X-Beeflow-NC-Uid: the uid is "" (service level) and must be signed as such."""
    target = "/nc/ocs/v2.php/apps/echo/svc"
    sig = nc_signature(
        TENANT_KEY, int(time.time()), "GET", target, "", hashlib.sha256().hexdigest()
    )
    resp = await session.get(str(nc_conn.url) + target, headers=_raw_headers(sig, uid=None))
    async with resp:
        assert resp.status == 200
        assert (await resp.json())["ocs"]["data"]["user"] == ""
    assert dav.last().user == ""


async def test_failure_body_reveals_nothing(caller: NcCaller) -> None:
    resp = await caller.request("GET", "/nc/ocs/v2.php/apps/echo/x", sign_uid="bob")
    async with resp:
        text = await resp.text()
        assert resp.status == 401
    expected = nc_signature(
        TENANT_KEY, int(time.time()), "GET", "/nc/ocs/v2.php/apps/echo/x", "alice", None
    )
    for secret in (TENANT_KEY, expected.split(".")[1], hashlib.sha256().hexdigest()):
        assert secret not in text
    assert set(json.loads(text)) == {"code", "error"}


@pytest.mark.parametrize(
    ("sent", "signed", "hazards"),
    [
        ("a=1&a=2", "a=2", ["repeated_key"]),
        ("a=2", "a=1&a=2", None),
        ("x_y=1", "x.y=1", None),
        ("x.y=1", "x_y=1", ["dot_or_space_in_key"]),
        ("arr%5B0%5D=x&arr%5B1%5D=y", "arr[]=x&arr[]=y", ["array_key"]),
        ("empty=", "empty", ["empty_value"]),
        ("q=a+b", "q=a b", ["space"]),
        ("format=json", "format=xml", None),
    ],
)
async def test_query_mismatch_has_its_own_code(
    caller: NcCaller, sent: str, signed: str, hazards: list[str] | None
) -> None:
    """A mismatch on a query PHP rewrites (or bears PHP's traces) is told apart."""
    target = f"/nc/ocs/v2.php/apps/echo/q?{sent}"
    resp = await caller.request("GET", target, sign_target=f"/nc/ocs/v2.php/apps/echo/q?{signed}")
    async with resp:
        body = await resp.json()
        assert resp.status == 401
    if hazards is None:
        assert body["code"] == "signature_mismatch"
        assert "queryHazards" not in body
    else:
        assert body["code"] == "signature_mismatch_query"
        assert body["queryHazards"] == hazards


async def test_no_tenant_key_fails_closed_and_is_not_billed(
    connector_factory: ConnectorFactory, session: aiohttp.ClientSession, dav: FakeDav
) -> None:
    """Before bootstrap, /nc answers a defined 401, never a 500, and those 401s do
    not spend the failure budget of the genuine service."""
    conn = await connector_factory(BEEFLOW_TENANT_KEY="auto")
    caller = NcCaller(session, conn.url)
    for _ in range(65):
        got = await outcome(await caller.request("GET", "/nc/ocs/v2.php/apps/echo/x"))
        assert got == (401, "tenant_key_missing")
    assert dav.seen == []
    health = await outcome(await conn.request("GET", "/heartbeat", user=""))
    assert health[0] == 200
