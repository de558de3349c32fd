"""The v3 /nc signature: pure message building and header parsing (docs/nc-proxy.md, "The v3
signature"). v1 and v2 are the service's formats and stay as they are (beeflow/signing.py); v3
is the connector's own, versioned addition:

- path and query are separate fields, so a '?' decoded out of the path (`report%3Fv=2.pdf`)
  cannot stand for a query;
- the query is canonical (form-decoded, then re-encoded the one RFC 3986 way), so the forms
  AppAPI's PHP proxy rewrites without changing the meaning (`+`/`%20`, bare keys) still verify;
- Destination, Overwrite and Depth are signed: a captured MOVE cannot be sent elsewhere;
- the body's SHA-256 travels in X-Beeflow-Content-SHA256, so the signature is checked from the
  head alone, before a byte of the body is spooled (the body must then match the hash);
- an optional nonce makes two identical calls in the same second two different signatures
  (a signature used once by a write is refused the second time).
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote, unquote_to_bytes

from beeflow.signing import ParsedSig, parse_sig_header

V3_HEADER_PREFIX: Final = "v3."
V3_DOMAIN: Final = "beeflow-nc-v3"
CONTENT_SHA256_HEADER: Final = "X-Beeflow-Content-SHA256"
NONCE_HEADER: Final = "X-Beeflow-Nonce"
# Request headers whose values a v3 signature covers, in message order.
SIGNED_HEADERS: Final = ("Destination", "Overwrite", "Depth")
# RFC 3986 unreserved characters besides letters and digits: never percent-encoded.
_UNRESERVED: Final = "-._~"
_HEX64: Final = re.compile(r"^[0-9a-fA-F]{64}$")
_NONCE: Final = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")


def parse_v3_header(value: str) -> ParsedSig | None:
    """`v3.<unixSeconds>.<64 hex>` -> the parsed signature; None when the header is not v3.
    Raises SigFormatError (as for v1/v2) when the part after `v3.` is malformed."""
    text = value.strip()
    if not text.startswith(V3_HEADER_PREFIX):
        return None
    return parse_sig_header(text[len(V3_HEADER_PREFIX) :])


def content_sha256(value: str | None) -> str | None:
    """The declared body hash, lower case; None when absent or not 64 hex digits."""
    if value is None or not _HEX64.match(value):
        return None
    return value.lower()


def valid_nonce(value: str) -> bool:
    """Empty (no nonce), or 1-128 of A-Z a-z 0-9 . _ ~ -."""
    return not value or bool(_NONCE.match(value))


def _form_decode(text: str) -> str | None:
    try:
        return unquote_to_bytes(text.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        return None


def canonical_query(raw: str) -> str | None:
    """The query as v3 signs it: split at '&' (empty parts dropped), each part at its first
    '=', key and value form-decoded ('+' is a space, %XX as UTF-8) and re-encoded with every
    byte but A-Z a-z 0-9 - . _ ~ as upper-case %XX, joined as `k=v` with '&', in the order
    received. None when a part is not UTF-8 once decoded."""
    pairs: list[str] = []
    for part in raw.split("&"):
        if not part:
            continue
        raw_key, _, raw_value = part.partition("=")
        key, value = _form_decode(raw_key), _form_decode(raw_value)
        if key is None or value is None:
            return None
        pairs.append(quote(key, safe=_UNRESERVED) + "=" + quote(value, safe=_UNRESERVED))
    return "&".join(pairs)


def message_v3(
    *,
    ts: str,
    method: str,
    path: str,
    query: str,
    uid: str,
    content_sha256: str,
    destination: str,
    overwrite: str,
    depth: str,
    nonce: str,
) -> str:
    """The v3 message: eleven fields, one per line (no field can hold a line break: the
    connector refuses CR/LF in paths, queries and user ids, and HTTP header values cannot hold
    them), the first one naming the format so no v3 message is ever a v1 or v2 message."""
    return "\n".join(
        (
            V3_DOMAIN,
            ts,
            method,
            path,
            query,
            uid,
            content_sha256,
            destination,
            overwrite,
            depth,
            nonce,
        )
    )
