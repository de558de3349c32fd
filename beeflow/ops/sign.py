"""`python -m beeflow sign METHOD PATH`: the signature headers for one /nc call (v2, the service's
format, or with --v3 the connector's, docs/nc-proxy.md "The v3 signature"), so the service's
developers and admins can test the callback proxy with curl:

    python -m beeflow sign GET '/nc/ocs/v2.php/cloud/users/alice?format=json' --uid alice \\
      | curl -H @- 'https://cloud.example.com/index.php/apps/app_api/proxy/bee_flow/nc/ocs/v2.php/cloud/users/alice?format=json'
    python -m beeflow sign MOVE /nc/remote.php/dav/files/alice/a.txt --uid alice --v3 \\
      --destination /remote.php/dav/files/alice/b.txt --overwrite F | curl -X POST \\
      -H 'X-HTTP-Method-Override: MOVE' -H @- 'https://cloud.example.com/index.php/apps/...'

stdout holds only the header lines (for `curl -H @-`; with --v3 also the Destination, Overwrite
and Depth it signed, which must go exactly as printed); notes and warnings go to stderr. v2
comes from beeflow.signing (the one implementation the server verifies with) over the form of
the target that survives AppAPI's PHP proxy (beeflow.proxy.nc.path); v3 from
beeflow.proxy.nc.sigv3, the message the server builds."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import secrets
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import attrs

from beeflow.envparse import MIN_TENANT_KEY_LENGTH, Invalid, tenant_key
from beeflow.proxy.nc.path import (
    NC_PREFIX,
    PathRejected,
    check_target,
    js_decode_uri_component,
    php_query_hazards,
    portability_warnings,
    signature_candidates,
)
from beeflow.proxy.nc.signatures import REPEATABLE_VERBS
from beeflow.proxy.nc.sigv3 import (
    CONTENT_SHA256_HEADER,
    NONCE_HEADER,
    V3_HEADER_PREFIX,
    canonical_query,
    message_v3,
    valid_nonce,
)
from beeflow.signing import SIG_HEADER, UID_HEADER, sign_nc_v2

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
# The methods AppAPI's PHP proxy has routes for; anything else must be tunnelled.
PHP_PROXY_METHODS: Final = frozenset({"GET", "POST", "PUT", "DELETE"})
TENANT_KEY_FILE: Final = "tenant-key.json"
_PROXY_MARKERS: Final = ("/index.php/apps/app_api/proxy/", "/apps/app_api/proxy/", "/exapps/")
# Query forms the v3 canonical query absorbs (they do not change the meaning).
_V3_HARMLESS: Final = frozenset({"space", "bare_key", "empty_value"})
NONCE_AUTO: Final = "auto"


class SignError(Exception):
    """Bad input: the message says what to change (never quoting a key)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("method", metavar="METHOD", help="the method to sign, e.g. GET, PROPFIND")
    parser.add_argument(
        "path",
        metavar="PATH",
        help="the /nc/... target with its query, exactly as sent (or the full proxy URL)",
    )
    parser.add_argument(
        "--uid", default="", help="Nextcloud user to act as (default: none, a service-level call)"
    )
    parser.add_argument(
        "--body",
        metavar="FILE",
        type=Path,
        help="the exact request body bytes ('-' reads stdin); default: empty",
    )
    parser.add_argument(
        "--key-file",
        metavar="F",
        type=Path,
        help="file holding the tenant key, raw or as tenant-key.json (default: "
        "$BEEFLOW_TENANT_KEY, else $APP_PERSISTENT_STORAGE/tenant-key.json)",
    )
    parser.add_argument(
        "--timestamp",
        type=int,
        default=None,
        help="unix seconds to sign with (default: now); must be within the skew window",
    )
    v3 = parser.add_argument_group("v3 (the connector's signature; recommended)")
    v3.add_argument(
        "--v3",
        action="store_true",
        help="sign v3: also covers Destination, Overwrite and Depth, verified before the body",
    )
    v3.add_argument("--destination", default="", help="the Destination header to send and sign")
    v3.add_argument("--overwrite", default="", help="the Overwrite header (T or F)")
    v3.add_argument("--depth", default="", help="the Depth header (0, 1 or infinity)")
    v3.add_argument(
        "--nonce",
        default=NONCE_AUTO,
        help="X-Beeflow-Nonce: 'auto' (a random one for writes, none for reads), '' for none, "
        "or the value to send",
    )


def _key_from_text(text: str, where: str) -> str:
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError:
            raise SignError(f"{where} looks like JSON but does not parse") from None
        key = data.get("tenantKey") if isinstance(data, dict) else None
        if not isinstance(key, str) or not key:
            raise SignError(f"{where} has no tenantKey")
        return key
    if not stripped:
        raise SignError(f"{where} is empty")
    return stripped


def _usable(key: str, where: str) -> str:
    """The rule `serve` holds a cached key to (tenant.store): a shorter key is refused here too,
    so nothing is signed with a key the connector would not verify with."""
    if len(key.strip()) < MIN_TENANT_KEY_LENGTH:
        raise SignError(
            f"{where}: the tenant key is shorter than {MIN_TENANT_KEY_LENGTH} characters; the "
            "connector does not use such a key"
        )
    return key


def load_key(key_file: Path | None, env: Mapping[str, str]) -> tuple[str, str]:
    """(key, where it came from). The key itself is never part of a message. Every source is
    held to the connector's own rule (envparse.tenant_key, tenant.store)."""
    if key_file is not None:
        try:
            text = key_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise SignError(f"cannot read {key_file}: {exc.strerror or exc}") from None
        return _usable(_key_from_text(text, str(key_file)), str(key_file)), str(key_file)
    try:
        env_key = tenant_key(env.get("BEEFLOW_TENANT_KEY", ""))
    except Invalid as exc:
        raise SignError(f"BEEFLOW_TENANT_KEY {exc}") from None
    if env_key is not None:
        return env_key, "BEEFLOW_TENANT_KEY"
    storage = Path(env.get("APP_PERSISTENT_STORAGE", "").strip() or "/data")
    cached = storage / TENANT_KEY_FILE
    try:
        text = cached.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SignError(
            f"no tenant key: pass --key-file, set BEEFLOW_TENANT_KEY, or run where {cached} "
            "exists (the connector writes it after bootstrap)"
        ) from None
    except OSError as exc:
        raise SignError(f"cannot read {cached}: {exc.strerror or exc}") from None
    return _usable(_key_from_text(text, str(cached)), str(cached)), str(cached)


def normalise_target(path: str) -> tuple[str, list[str]]:
    """The /nc/... request target the connector will receive, plus notes about how it was read.
    Accepts the target itself, a full proxy/HaRP URL, or a Nextcloud path without /nc."""
    notes: list[str] = []
    target = path.strip()
    if "://" in target:
        parts = urlsplit(target)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
    for marker in _PROXY_MARKERS:
        at = target.find(marker)
        if at >= 0:
            rest = target[at + len(marker) :]
            _, slash, tail = rest.partition("/")  # drop the app id
            target = slash + tail
            notes.append(f"signing the connector-side target {target.partition('?')[0]}")
            break
    if not target.startswith(NC_PREFIX + "/") and target.startswith(
        ("/ocs/", "/remote.php/", "/index.php/apps/")
    ):
        target = NC_PREFIX + target
        notes.append("prefixed /nc: the signature covers the path the connector receives")
    return target, notes


def _read_body(body: Path | None) -> bytes:
    if body is None:
        return b""
    if str(body) == "-":
        return sys.stdin.buffer.read()
    try:
        return body.read_bytes()
    except OSError as exc:
        raise SignError(f"cannot read {body}: {exc.strerror or exc}") from None


@attrs.frozen
class V3:
    """What a v3 signature covers besides v2's fields (the headers are sent as given)."""

    destination: str = ""
    overwrite: str = ""
    depth: str = ""
    nonce: str = NONCE_AUTO  # a random one for writes, none for reads

    def headers(self) -> dict[str, str]:
        pairs = (("Destination", self.destination), ("Overwrite", self.overwrite))
        return {name: value for name, value in (*pairs, ("Depth", self.depth)) if value}


def sign(
    method: str,
    path: str,
    *,
    uid: str = "",
    body: bytes = b"",
    key: str,
    timestamp: int | None = None,
    v3: V3 | None = None,
) -> tuple[dict[str, str], list[str]]:
    """(headers, warnings) for one /nc call, v2 or (with `v3`) v3. Raises SignError for a
    target /nc will refuse."""
    verb = method.strip().upper()
    if not verb.isalpha() or not verb.isascii():
        raise SignError(f"{method!r} is not an HTTP method")
    if any(c in uid for c in "\r\n\x00") or uid != uid.strip():
        raise SignError("--uid must not contain control characters or surrounding spaces")
    target, warnings = normalise_target(path)
    try:
        checked = check_target(target)
    except PathRejected as exc:
        raise SignError(f"/nc will refuse {target.partition('?')[0]}: {exc.message}") from None
    if verb not in PHP_PROXY_METHODS:
        warnings.append(
            f"Nextcloud's PHP proxy has no {verb} route: send POST with "
            f"'X-HTTP-Method-Override: {verb}' (the signature covers {verb})"
        )
    ts = int(time.time()) if timestamp is None else timestamp
    if v3 is not None:
        headers = _sign_v3(verb, checked.path, checked.query, uid, body, key, ts, v3)
        return headers, warnings + _v3_warnings(checked.path, checked.query)
    warnings += portability_warnings(checked.raw)
    signed_path = signature_candidates(checked.raw)[0]
    headers = {SIG_HEADER: sign_nc_v2(key, ts, verb, signed_path, uid, body)}
    if uid:
        headers[UID_HEADER] = uid
    return headers, warnings


def _sign_v3(
    verb: str, raw_path: str, raw_query: str, uid: str, body: bytes, key: str, ts: int, v3: V3
) -> dict[str, str]:
    """The v3 headers: the path decoded once, the canonical query, the declared body hash, the
    signed headers and the nonce (docs/nc-proxy.md, "The v3 signature")."""
    path = js_decode_uri_component(raw_path)
    query = canonical_query(raw_query)
    if path is None or query is None:
        raise SignError("a v3 target must be valid percent-encoded UTF-8 (a literal '%' is %25)")
    for name, value in v3.headers().items():
        if value != value.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise SignError(f"--{name.lower()} must not hold control characters or spaces around")
    nonce = v3.nonce
    if nonce == NONCE_AUTO:
        nonce = "" if verb in REPEATABLE_VERBS else secrets.token_urlsafe(16)
    if not valid_nonce(nonce):
        raise SignError("--nonce must be 1-128 of A-Z a-z 0-9 . _ ~ -")
    digest = hashlib.sha256(body).hexdigest()
    message = message_v3(
        ts=str(ts),
        method=verb,
        path=path,
        query=query,
        uid=uid,
        content_sha256=digest,
        destination=v3.destination,
        overwrite=v3.overwrite,
        depth=v3.depth,
        nonce=nonce,
    )
    mac = hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()
    headers = {SIG_HEADER: f"{V3_HEADER_PREFIX}{ts}.{mac}", CONTENT_SHA256_HEADER: digest}
    if uid:
        headers[UID_HEADER] = uid
    if nonce:
        headers[NONCE_HEADER] = nonce
    headers.update(v3.headers())
    return headers


def _v3_warnings(raw_path: str, raw_query: str) -> list[str]:
    out: list[str] = []
    upper = raw_path.upper()
    if "%2F" in upper:
        out.append("the path has %2F: the PHP proxy decodes it to '/', and /nc refuses it then")
    if "%25" in upper:
        out.append(
            "the path has %25 (a literal '%' in a name): through the PHP proxy Nextcloud "
            "decodes it once more and the signature will not verify; use HaRP (/exapps/) or "
            "a direct callback URL"
        )
    hazards = [h for h in php_query_hazards(raw_query) if h not in _V3_HARMLESS]
    if hazards:
        out.append(
            "the query has forms PHP re-serialises with another meaning ("
            + ", ".join(hazards)
            + "): the signature will not verify through the PHP proxy"
        )
    return out


def _v3_of(args: argparse.Namespace) -> V3 | None:
    fields = V3(args.destination, args.overwrite, args.depth, args.nonce)
    if args.v3:
        return fields
    if fields != V3():
        raise SignError("--destination, --overwrite, --depth and --nonce are signed by --v3 only")
    return None


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        key, source = load_key(args.key_file, env)
        headers, warnings = sign(
            args.method,
            args.path,
            uid=args.uid,
            body=_read_body(args.body),
            key=key,
            timestamp=args.timestamp,
            v3=_v3_of(args),
        )
    except SignError as exc:
        sys.stderr.write(f"sign: {exc}\n")
        return EXIT_USAGE
    for warning in warnings:
        sys.stderr.write(f"warning: {warning}\n")
    if UID_HEADER not in headers:
        sys.stderr.write(f"note: no {UID_HEADER}: a service-level call (no user)\n")
    sys.stderr.write(f"note: signed with the tenant key from {source}\n")
    for name, value in headers.items():
        sys.stdout.write(f"{name}: {value}\n")
    return EXIT_OK
