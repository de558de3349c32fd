"""Pure signing functions with the wire formats fixed by the Bee Flow service (byte for byte):
the /nc v1/v2 signatures, the connector -> service HMAC, and the per-user HS256 JWT."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable
from typing import Any, Final

import attrs

SIG_HEADER: Final = "X-Beeflow-Sig"
UID_HEADER: Final = "X-Beeflow-NC-Uid"
EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()
JWT_ISSUER: Final = "nextcloud-connector"
JWT_AUDIENCE: Final = "beeflow.nl"


def _hmac_hex(key: str, message: str) -> str:
    return hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


# ------------------------------------------------------------ service -> connector (/nc/*)


def nc_message_v1(ts: int | str, method: str, path: str, uid: str) -> str:
    return f"{ts}\n{method}\n{path}\n{uid}"


def nc_message_v2(ts: int | str, method: str, path: str, uid: str, body_sha256_hex: str) -> str:
    return f"{ts}\n{method}\n{path}\n{uid}\n{body_sha256_hex}"


def sign_nc_v2(key: str, ts: int, method: str, path: str, uid: str, body: bytes = b"") -> str:
    """The header value a caller of /nc/* sends: "{ts}.{hex}" over the v2 message."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{ts}.{_hmac_hex(key, nc_message_v2(ts, method, path, uid, digest))}"


@attrs.frozen
class ParsedSig:
    ts: int
    ts_text: str
    mac: bytes


class SigFormatError(ValueError):
    """The X-Beeflow-Sig header is not `{unixSeconds}.{64 hex}`; `code` says which part."""

    def __init__(self, code: str) -> None:
        self.code = code
        super().__init__(code)


def parse_sig_header(value: str) -> ParsedSig:
    ts_text, dot, hex_sig = value.strip().partition(".")
    if not dot or not ts_text or not hex_sig:
        raise SigFormatError("signature_malformed")
    if not ts_text.isascii() or not ts_text.isdigit() or len(ts_text) > 12:
        raise SigFormatError("signature_timestamp_invalid")
    if len(hex_sig) != 64 or not all(c in "0123456789abcdefABCDEF" for c in hex_sig):
        raise SigFormatError("signature_hex_invalid")
    return ParsedSig(ts=int(ts_text), ts_text=ts_text, mac=bytes.fromhex(hex_sig))


def verify_nc(
    key: str,
    sig: ParsedSig,
    method: str,
    paths: Iterable[str],
    uid: str,
    body_sha256_hex: str | None,
) -> str | None:
    """Constant-time check of every candidate; returns which matched ("v2:0", "v1:1"...) or None.

    Candidates: each path form (decoded first, then raw) x (v2 when the body hash is known, v1).
    Every candidate is computed and compared, so timing does not tell which one came closest.
    """
    matched: str | None = None
    kb = key.encode("utf-8")
    for i, path in enumerate(paths):
        messages: list[tuple[str, str]] = []
        if body_sha256_hex is not None:
            messages.append(("v2", nc_message_v2(sig.ts_text, method, path, uid, body_sha256_hex)))
        messages.append(("v1", nc_message_v1(sig.ts_text, method, path, uid)))
        for version, message in messages:
            mac = hmac.new(kb, message.encode("utf-8"), hashlib.sha256).digest()
            if hmac.compare_digest(mac, sig.mac) and matched is None:
                matched = f"{version}:{i}"
    return matched


# ------------------------------------------------------------ connector -> service


def sign_outbound(key: str, ts: int, method: str, path: str, body: str) -> str:
    """HMAC over "{ts}\\n{METHOD}\\n{path}\\n{raw body}" (raw, not hashed)."""
    message = f"{ts}\n{method}\n{path}\n{body}"
    return f"{ts}.{_hmac_hex(key, message)}"


# ------------------------------------------------------------ JWT (HS256)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_JWT_HEADER: Final = _b64url(b'{"alg":"HS256","typ":"JWT"}')


def mint_jwt(key: str, claims: dict[str, Any]) -> str:
    """A compact HS256 JWT; claims are serialised in the given order, without spaces."""
    payload = _b64url(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
    signing_input = f"{_JWT_HEADER}.{payload}"
    mac = hmac.new(key.encode("utf-8"), signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(mac)}"


def user_claims(
    *,
    uid: str,
    email: str | None,
    name: str,
    nc_admin: bool,
    iat: int,
    ttl: int,
) -> dict[str, Any]:
    """The claims the service reads: sub, email, name, nc_admin, iss, aud, iat, exp."""
    return {
        "sub": uid,
        "email": email,
        "name": name,
        "nc_admin": nc_admin,
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "iat": iat,
        "exp": iat + ttl,
    }
