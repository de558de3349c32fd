"""Hypothesis properties of the pure code every request goes through: the /nc signatures, the /nc
path check (as the upstream URL is really built), AppAPI header decoding, webhook payload
extraction and config parsing. Each has an independent oracle (hashlib/hmac written out here,
yarl and posixpath, the documented payload shapes), not the code under test agreeing with itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import posixpath
import string
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import unquote, unquote_to_bytes

import pytest
from aiohttp import web
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from beeflow import signing
from beeflow.config import Config
from beeflow.errors import ConfigError
from beeflow.integrations import events
from beeflow.integrations.userevents import USER_EVENTS
from beeflow.proxy.nc.path import ALLOWED_PREFIXES, PathRejected, check_target
from beeflow.web.auth import AuthFailure, authenticate, decode_auth_header
from tests.fakes.service_control import expected_signature
from tests.helpers import sign_nc_v1
from tests.proxy.conftest import verify_jwt

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ signatures

ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
KEY = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=16, max_size=64)
METHOD = st.sampled_from(["GET", "PUT", "POST", "DELETE", "PROPFIND", "MOVE", "COPY", "REPORT"])
PATH = st.builds(lambda s: "/nc/remote.php/dav/files/" + s, ASCII)
TS = st.integers(min_value=0, max_value=10**11)


def flip_char(text: str, index: int, bit: int) -> str:
    """`text` with one bit of one (7-bit) character flipped: always a different string."""
    i = index % len(text)
    return text[:i] + chr(ord(text[i]) ^ (1 << (bit % 7))) + text[i + 1 :]


def flip_byte(data: bytes, index: int, bit: int) -> bytes:
    i = index % len(data)
    return data[:i] + bytes([data[i] ^ (1 << (bit % 8))]) + data[i + 1 :]


def independent_v2(key: str, ts: int, method: str, path: str, uid: str, body: bytes) -> str:
    message = f"{ts}\n{method}\n{path}\n{uid}\n{hashlib.sha256(body).hexdigest()}"
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


@FAST
@given(key=KEY, ts=TS, method=METHOD, path=PATH, uid=ASCII, body=st.binary(max_size=256))
def test_signature_round_trip(
    key: str, ts: int, method: str, path: str, uid: str, body: bytes
) -> None:
    header = signing.sign_nc_v2(key, ts, method, path, uid, body)
    assert header == f"{ts}.{independent_v2(key, ts, method, path, uid, body)}"
    parsed = signing.parse_sig_header(header)
    digest = hashlib.sha256(body).hexdigest()
    assert signing.verify_nc(key, parsed, method, [path], uid, digest) == "v2:0"
    # A second (raw) path form that does not match must not hide the first one's match.
    assert signing.verify_nc(key, parsed, method, [path + "x", path], uid, digest) == "v2:1"
    v1 = signing.parse_sig_header(sign_nc_v1(key, ts, method, path, uid))
    assert signing.verify_nc(key, v1, method, [path], uid, digest) == "v1:0"


@FAST
@given(
    key=KEY,
    ts=TS,
    method=METHOD,
    path=PATH,
    uid=ASCII,
    body=st.binary(max_size=256),
    what=st.sampled_from(["mac", "key", "ts", "method", "path", "uid", "body"]),
    index=st.integers(min_value=0, max_value=10_000),
    bit=st.integers(min_value=0, max_value=7),
)
def test_any_single_bit_change_is_rejected(
    key: str,
    ts: int,
    method: str,
    path: str,
    uid: str,
    body: bytes,
    what: str,
    index: int,
    bit: int,
) -> None:
    parsed = signing.parse_sig_header(signing.sign_nc_v2(key, ts, method, path, uid, body))
    args: dict[str, Any] = {
        "key": key,
        "sig": parsed,
        "method": method,
        "path": path,
        "uid": uid,
        "body": body,
    }
    if what == "mac":
        mac = flip_byte(parsed.mac, index, bit)
        args["sig"] = signing.ParsedSig(parsed.ts, parsed.ts_text, mac)
    elif what == "ts":
        other = ts ^ (1 << (bit + index % 30))
        args["sig"] = signing.ParsedSig(other, str(other), parsed.mac)
    elif what == "body":
        args["body"] = flip_byte(body, index, bit) if body else b"\x00"
    elif what == "uid" and not uid:
        args["uid"] = "a"
    else:
        args[what] = flip_char(args[what], index, bit)
    digest = hashlib.sha256(args["body"]).hexdigest()
    assert (
        signing.verify_nc(
            args["key"], args["sig"], args["method"], [args["path"]], args["uid"], digest
        )
        is None
    )


@FAST
@given(text=st.text(max_size=80))
@example(text="1700000000." + "a" * 64)
@example(text="\uff11\uff12\uff13." + "0" * 64)  # full-width digits
def test_signature_header_parser_raises_only_its_own_error(text: str) -> None:
    try:
        parsed = signing.parse_sig_header(text)
    except signing.SigFormatError as exc:
        code = exc.code
        assert code.startswith("signature_")
        return
    assert len(parsed.mac) == 32
    assert parsed.ts_text.isascii()
    assert parsed.ts_text.isdigit()


@FAST
@given(key=KEY, ts=TS, path=PATH, body=st.text(max_size=200))
def test_outbound_signature_matches_the_services_own_check(
    key: str, ts: int, path: str, body: str
) -> None:
    header = signing.sign_outbound(key, ts, "POST", path, body)
    assert header == f"{ts}." + expected_signature(key, str(ts), "POST", path, body.encode())


@FAST
@given(
    key=KEY,
    uid=st.text(min_size=1, max_size=40),
    email=st.none() | st.emails(),
    name=st.text(max_size=40),
    admin=st.booleans(),
    iat=st.integers(min_value=0, max_value=2**33),
    index=st.integers(min_value=0, max_value=10_000),
    bit=st.integers(min_value=0, max_value=5),
)
def test_jwt_round_trip_and_tamper(
    key: str,
    uid: str,
    email: str | None,
    name: str,
    admin: bool,
    iat: int,
    index: int,
    bit: int,
) -> None:
    claims = signing.user_claims(uid=uid, email=email, name=name, nc_admin=admin, iat=iat, ttl=300)
    token = signing.mint_jwt(key, claims)
    assert verify_jwt(token, key) == claims
    header, payload, sig = token.split(".")
    # One bit of one base64url character of the payload: the independent check refuses it.
    alphabet = string.ascii_letters + string.digits + "-_"
    i = index % len(payload)
    swapped = alphabet[(alphabet.index(payload[i]) ^ (1 << bit)) % len(alphabet)]
    assume(swapped != payload[i])
    tampered = f"{header}.{payload[:i]}{swapped}{payload[i + 1 :]}.{sig}"
    with pytest.raises((AssertionError, ValueError, binascii.Error, UnicodeDecodeError)):
        verify_jwt(tampered, key)


# ------------------------------------------------------------------ the /nc path check

_PIECES = st.sampled_from(
    [
        "a",
        "Z",
        "-",
        "_",
        "~",
        "@",
        "+",
        ";",
        "=",
        ".",
        "..",
        "/",
        "\\",
        "%",
        "%2",
        "%2e",
        "%2E",
        "%2f",
        "%5c",
        "%25",
        "%252e",
        "%252f",
        "%00",
        "%0a",
        "%20",
        "%c0%ae",
        "%c3%a9",
        "%ef%bc%8e",
        "%ff",
        "?",
        "#",
    ]
)
_PREFIX = st.sampled_from(
    ["/nc/ocs/", "/nc/remote.php/dav/files/alice/", "/nc/index.php/apps/", "/nc/", "/nc"]
)
_BASES = ["http://nc.example", "http://nc.example/nextcloud", "https://nc.example:8443/sub/dir"]


def _decodings(path: str) -> list[str]:
    """The upstream path and what a lenient server could make of it: each further
    percent-decoding, with backslashes read as slashes."""
    out = [path]
    for _ in range(5):
        nxt = unquote(out[-1], errors="surrogateescape")
        if nxt == out[-1]:
            break
        out.append(nxt)
    return out + [p.replace("\\", "/") for p in out]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=_PREFIX, pieces=st.lists(_PIECES, max_size=14), base=st.sampled_from(_BASES))
@example(prefix="/nc/ocs/", pieces=["%252e", "%252e", "/", "a"], base=_BASES[0])
@example(prefix="/nc/ocs/", pieces=["..", "%5c", "a"], base=_BASES[1])
def test_no_accepted_target_escapes_once_the_upstream_url_is_built(
    prefix: str, pieces: list[str], base: str
) -> None:
    """Build the Nextcloud URL exactly as the proxy does (yarl, encoded=True) and decode it
    like a lenient server: it stays under NEXTCLOUD_URL + an allowed prefix, with no dot
    segment left for anyone to resolve."""
    target = prefix + "".join(pieces)
    try:
        checked = check_target(target)
    except PathRejected as exc:
        status = exc.status
        assert status in (400, 404)
        return
    url = URL(base + checked.upstream, encoded=True)
    base_path = URL(base).raw_path.rstrip("/")
    assert url.raw_host == URL(base).raw_host
    assert url.raw_path == base_path + checked.upstream.partition("?")[0]  # nothing rewritten
    allowed = tuple(base_path + p for p in ALLOWED_PREFIXES)
    for form in _decodings(url.raw_path):
        assert form.startswith(allowed), form
        segments = form.split("/")
        assert ".." not in segments, form
        assert "." not in segments, form
        # what a server that normalises would make of it stays inside too
        assert (posixpath.normpath(form) + "/").startswith(allowed), form
    # Nextcloud itself decodes once: what it sees is valid UTF-8.
    unquote_to_bytes(url.raw_path).decode("utf-8")


# ------------------------------------------------------------------ AppAPI header decoding

UID = st.text(
    st.characters(blacklist_characters=":\r\n\x00", blacklist_categories=["Cs"]), max_size=60
)
SECRET_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=140)


@FAST
@given(uid=UID, secret=SECRET_TEXT)
def test_auth_header_round_trip(uid: str, secret: str) -> None:
    value = base64.b64encode(f"{uid}:{secret}".encode()).decode()
    if len(value) > 4096:
        with pytest.raises(AuthFailure):
            decode_auth_header(value)
        return
    assert decode_auth_header(value) == (uid, secret)


@FAST
@given(value=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: base64.b64encode(b)))
def test_auth_header_decoding_raises_only_auth_failure(value: str | bytes) -> None:
    text = value.decode() if isinstance(value, bytes) else value
    try:
        user, _secret = decode_auth_header(text)
    except AuthFailure as exc:
        status, code = exc.instance_status, exc.instance_code
        assert status == 401
        assert code.startswith("appapi_")
        return
    assert not any(c in user for c in "\r\n\x00")
    assert len(user) <= 255


# Header values as aiohttp hands them over: undecodable bytes become surrogates.
RAW_VALUE = st.binary(max_size=80).map(lambda b: b.decode("utf-8", "surrogateescape"))
SECRET = "s3cret-" + "x" * 40


@FAST
@given(
    auth=st.none() | RAW_VALUE,
    app_id=st.none() | RAW_VALUE | st.just("bee_flow"),
    version=st.none() | RAW_VALUE,
)
@example(auth=None, app_id="bee\udcff_flow", version="1")
@example(auth="\udcff\udcfe", app_id="bee_flow", version="1")
def test_authenticate_never_raises_anything_but_auth_failure(
    auth: str | None, app_id: str | None, version: str | None
) -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    if auth is None:
        auth = base64.b64encode(f"alice:{SECRET}".encode()).decode()
    for name, value in (
        ("AUTHORIZATION-APP-API", auth),
        ("EX-APP-ID", app_id),
        ("EX-APP-VERSION", version),
    ):
        if value is not None:
            headers[name] = value
    # authenticate() reads request.headers only (make_mocked_request cannot carry surrogates).
    request = cast(web.Request, SimpleNamespace(headers=CIMultiDictProxy(headers)))
    try:
        identity = authenticate(request, "bee_flow", SECRET)
    except AuthFailure as exc:
        code, message = exc.instance_code, exc.message
        assert code.startswith("appapi_")
        assert SECRET not in message
        return
    assert identity.trusted
    assert app_id == "bee_flow"


# ------------------------------------------------------------------ webhook payloads

JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON = st.recursive(
    JSON_LEAF,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=25,
)
CLASS_KEYS = st.sampled_from(["eventType", "event_type", "class", "event_subtype", "event"])
NAMES = st.sampled_from(
    [
        "eventType",
        "event_type",
        "event",
        "class",
        "userId",
        "uid",
        "user",
        "UID",
        "groupId",
        "gid",
        "group",
        "GID",
        "event_data",
    ]
)
SHAPED = st.recursive(
    JSON_LEAF | st.sampled_from(list(events.EVENT_CLASSES)) | st.sampled_from(USER_EVENTS),
    lambda children: st.dictionaries(NAMES, children, max_size=5),
    max_leaves=20,
)


def _strings(data: Any) -> set[str]:
    if isinstance(data, Mapping):
        return set().union(*(_strings(v) for v in data.values())) if data else set()
    if isinstance(data, list):
        return set().union(*(_strings(v) for v in data)) if data else set()
    if isinstance(data, str | int) and not isinstance(data, bool):
        return {str(data).strip()}
    return set()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.dictionaries(st.text(), JSON, max_size=6) | st.dictionaries(NAMES, SHAPED, max_size=6)
)
def test_event_extraction_is_total_and_takes_ids_from_the_payload(data: dict[str, Any]) -> None:
    mapped = events.map_event(data)
    if isinstance(mapped, str):
        assert len(mapped) <= 200
        return
    assert mapped.event in USER_EVENTS
    found = _strings(data)
    assert mapped.event_class in found
    if mapped.uid is not None:
        assert mapped.uid
        assert mapped.uid == mapped.uid.strip()
        assert mapped.uid in found
    if mapped.group_id is not None:
        assert mapped.group_id in found


_UID_SHAPES: list[Callable[[str], dict[str, Any]]] = [
    lambda u: {"userId": u},
    lambda u: {"uid": u},
    lambda u: {"user": {"uid": u}},
    lambda u: {"user": {"UID": u}},
    lambda u: {"event": {"userId": u}},
    lambda u: {"event": {"user": {"uid": u}}},
    lambda u: {"event_data": {"userId": u}},
]
_GID_SHAPES: list[Callable[[str], dict[str, Any]]] = [
    lambda g: {"groupId": g},
    lambda g: {"gid": g},
    lambda g: {"group": {"gid": g}},
    lambda g: {"event_data": {"group": {"gid": g}}},
]
ID = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30)


def _merge(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = _merge(out[key], value)
            else:
                out[key] = value
    return out


@FAST
@given(
    event_class=st.sampled_from(list(events.EVENT_CLASSES)),
    uid=ID,
    gid=ID,
    uid_shape=st.integers(0, len(_UID_SHAPES) - 1),
    gid_shape=st.integers(0, len(_GID_SHAPES) - 1),
    top=st.booleans(),
)
def test_every_documented_shape_yields_its_ids(
    event_class: str, uid: str, gid: str, uid_shape: int, gid_shape: int, top: bool
) -> None:
    head: dict[str, Any] = {"eventType": event_class} if top else {"event": {"class": event_class}}
    body = _merge(head, _UID_SHAPES[uid_shape](uid), _GID_SHAPES[gid_shape](gid))
    mapped = events.map_event(body)
    assert not isinstance(mapped, str), mapped
    assert mapped.event == events.EVENT_CLASSES[event_class]
    assert mapped.uid == uid
    assert mapped.group_id == gid


# ------------------------------------------------------------------ config parsing

VARS = [
    "APP_ID",
    "APP_SECRET",
    "APP_VERSION",
    "APP_PORT",
    "APP_PERSISTENT_STORAGE",
    "NEXTCLOUD_URL",
    "BEEFLOW_TENANT_KEY",
    "BEEFLOW_API_BASE_URL",
    "BEEFLOW_JWT_TTL_SECONDS",
    "BEEFLOW_SIG_SKEW_SECONDS",
    "BEEFLOW_NC_PUBLIC_URL",
    "BEEFLOW_TRUSTED_EMBED_ORIGINS",
    "HP_SHARED_KEY",
    "HP_FRP_ADDRESS",
    "HP_FRP_PORT",
    "HP_EXAPP_SOCK",
    "BEEFLOW_SHUTDOWN_GRACE_SECONDS",
    "BEEFLOW_NC_MAX_BODY_BYTES",
    "BEEFLOW_LOG_LEVEL",
    "BEEFLOW_SPA_DIR",
]
SECRET_VARS = ("APP_SECRET", "BEEFLOW_TENANT_KEY", "HP_SHARED_KEY")
# Values of ordinary variables never contain the marker that every secret carries.
PLAIN = st.text(alphabet=st.characters(blacklist_characters="Q"), max_size=40) | st.sampled_from(
    ["", " ", "0", "-1", "65536", "1e999", "nan", "http://x", "https://nc.example/index.php/"]
)
MARKED = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30).map(lambda s: f"QQ{s}QQ")


@settings(max_examples=400, deadline=None)
@given(
    plain=st.dictionaries(st.sampled_from(VARS), PLAIN, max_size=12),
    secrets=st.dictionaries(st.sampled_from(SECRET_VARS), MARKED, max_size=3),
)
@example(plain={}, secrets={"APP_SECRET": "QQ'QQ"})
@example(plain={"NEXTCLOUD_URL": "http://nc"}, secrets={"HP_SHARED_KEY": "QQ with space QQ"})
def test_config_raises_only_config_error_and_never_echoes_a_secret(
    plain: dict[str, str], secrets: dict[str, str]
) -> None:
    env = {**{k: v for k, v in plain.items() if k not in SECRET_VARS}, **secrets}
    try:
        config = Config.from_env(env)
    except ConfigError as exc:
        rendered = exc.render() + str(exc) + repr(exc.problems)
        for value in secrets.values():
            assert value not in rendered
            assert value.strip() not in rendered or not value.strip()
        assert "QQ" not in rendered
        return
    shown = repr(config)
    for value in secrets.values():
        if value.strip().strip("'\"") and value.strip().strip("'\"") not in ("auto",):
            assert value.strip() not in shown
