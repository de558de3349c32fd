"""`python -m beeflow sign METHOD PATH`: the X-Beeflow-Sig / X-Beeflow-NC-Uid headers (v2) for one
/nc call, so the service's developers and admins can test the callback proxy with curl:

    python -m beeflow sign GET '/nc/ocs/v2.php/cloud/users/alice?format=json' --uid alice \\
      | curl -H @- 'https://cloud.example.com/index.php/apps/app_api/proxy/bee_flow/nc/ocs/v2.php/cloud/users/alice?format=json'

stdout holds only the header lines (for `curl -H @-`); notes and warnings go to stderr. The
signature comes from beeflow.signing (the one implementation the server verifies with) over the
form of the target that survives AppAPI's PHP proxy (beeflow.proxy.nc.path)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from beeflow.envparse import MIN_TENANT_KEY_LENGTH, Invalid, tenant_key
from beeflow.proxy.nc.path import (
    NC_PREFIX,
    PathRejected,
    check_target,
    portability_warnings,
    signature_candidates,
)
from beeflow.signing import SIG_HEADER, UID_HEADER, sign_nc_v2

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
# The methods AppAPI's PHP proxy has routes for; anything else must be tunnelled.
PHP_PROXY_METHODS: Final = frozenset({"GET", "POST", "PUT", "DELETE"})
TENANT_KEY_FILE: Final = "tenant-key.json"
_PROXY_MARKERS: Final = ("/index.php/apps/app_api/proxy/", "/apps/app_api/proxy/", "/exapps/")


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


def sign(
    method: str,
    path: str,
    *,
    uid: str = "",
    body: bytes = b"",
    key: str,
    timestamp: int | None = None,
) -> tuple[dict[str, str], list[str]]:
    """(headers, warnings) for one /nc call. Raises SignError for a target /nc will refuse."""
    verb = method.strip().upper()
    if not verb.isalpha() or not verb.isascii():
        raise SignError(f"{method!r} is not an HTTP method")
    if any(c in uid for c in "\r\n\x00") or uid != uid.strip():
        raise SignError("--uid must not contain control characters or surrounding spaces")
    target, notes = normalise_target(path)
    try:
        checked = check_target(target)
    except PathRejected as exc:
        raise SignError(f"/nc will refuse {target.partition('?')[0]}: {exc.message}") from None
    warnings = notes + portability_warnings(checked.raw)
    if verb not in PHP_PROXY_METHODS:
        warnings.append(
            f"Nextcloud's PHP proxy has no {verb} route: send POST with "
            f"'X-HTTP-Method-Override: {verb}' (the signature covers {verb})"
        )
    signed_path = signature_candidates(checked.raw)[0]
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {SIG_HEADER: sign_nc_v2(key, ts, verb, signed_path, uid, body)}
    if uid:
        headers[UID_HEADER] = uid
    return headers, warnings


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
