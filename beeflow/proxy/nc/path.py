"""Pure checks for /nc request targets: allow-list, traversal in every encoding, signature path
candidates, and the query forms AppAPI's PHP proxy rewrites (no I/O, no aiohttp).

What each way in does to a target is in docs/nc-proxy.md ("What each way in does to the path",
"What survives AppAPI's PHP proxy")."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_to_bytes

import attrs

from beeflow.proxy.paths import MAX_DECODE_DEPTH, segment_escape

NC_PREFIX: Final = "/nc"
# After stripping /nc, only these reach Nextcloud (docs/nc-proxy.md, "Where to send the call").
ALLOWED_PREFIXES: Final = ("/ocs/", "/remote.php/dav/", "/index.php/apps/")
MAX_TARGET_LENGTH: Final = 8192
# A query value may itself be an encoded URL holding an encoded URL...: more layers than the path.
MAX_QUERY_DECODE_DEPTH: Final = 8

_PCT_RUN: Final = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
_STRAY_PCT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Printable ASCII without space, '#' and backslash: what a well-formed request target holds.
_TARGET_CHARS: Final = re.compile(r"^[\x21\x22\x24-\x5b\x5d-\x7e]*$")
_ARRAY_INDEX: Final = re.compile(r"\[\d*\]")
# Bytes that would split a field of a signed message (each field is one line) or end a C
# string: refused in every decoded form of the query (the path refuses every control byte).
_LINE_BREAKERS: Final = (b"\r", b"\n", b"\0")


class PathRejected(ValueError):
    """The target is refused; `status` 404 (not proxied) or 400 (malformed/traversal)."""

    def __init__(self, code: str, message: str, status: int) -> None:
        self.code = code
        self.message = message
        self.status = status
        super().__init__(code)


def _not_proxied() -> PathRejected:
    return PathRejected(
        "path_not_proxied",
        "Only /nc/ocs/, /nc/remote.php/dav/ and /nc/index.php/apps/ are proxied",
        404,
    )


def loggable_prefix(raw_path: str) -> str:
    """Only the allow-listed prefix of a /nc path goes to a log (file names are users' data)."""
    rest = raw_path[len(NC_PREFIX) :]
    for prefix in ALLOWED_PREFIXES:
        if rest.startswith(prefix):
            return NC_PREFIX + prefix
    return NC_PREFIX + "/"


def _traversal(why: str) -> PathRejected:
    return PathRejected("path_traversal", f"Path rejected: {why}", 400)


@attrs.frozen
class NcTarget:
    """A checked /nc request target. `upstream` is what follows `/nc` (raw, query included);
    `candidates` are the signed forms to try: path (decoded, raw) x query (decoded, raw),
    fully decoded first, fully raw last. `decoded_path[i]` says whether candidate i holds the
    decoded form of the path (True as well when the path has no escapes to decode)."""

    raw: str
    path: str
    query: str
    upstream: str
    candidates: tuple[str, ...]
    decoded_path: tuple[bool, ...]

    @property
    def has_escapes(self) -> bool:
        """The path (not the query) holds percent escapes."""
        return "%" in self.path

    @property
    def decoded_path_splits(self) -> bool:
        """The decoded path holds '?' or '#' (from %3F, %23): in a v1/v2 message, where path and
        query are one field, `a%3Fb=1` and `a` with the query `b=1` would read the same."""
        upper = self.path.upper()
        return "%3F" in upper or "%23" in upper


def js_decode_uri_component(text: str) -> str | None:
    """JavaScript's decodeURIComponent: every %XX run must be valid UTF-8, a stray '%' is an
    error (None), '+' stays '+'. The Node reference signs and verifies this form."""
    if _STRAY_PCT.search(text):
        return None

    def run(match: re.Match[str]) -> str:
        return bytes.fromhex(match.group(0).replace("%", "")).decode("utf-8")

    try:
        return _PCT_RUN.sub(run, text)
    except UnicodeDecodeError:
        return None


def _forms(text: str) -> tuple[str, ...]:
    """Decoded first, raw second; one form when decoding changes nothing or fails."""
    decoded = js_decode_uri_component(text)
    if decoded is None or decoded == text:
        return (text,)
    return (decoded, text)


def _candidates(raw_target: str) -> tuple[tuple[str, bool], ...]:
    """(signed form, path part is the decoded form) for path forms x query forms. Path and
    query are decoded separately: through AppAPI's PHP proxy only the decoded PATH is
    unambiguous (signatures.check_path_form), while a raw QUERY is fine (PHP re-serialises the
    query, so it is decoded exactly once by Nextcloud, like any other)."""
    path, sep, query = raw_target.partition("?")
    paths = _forms(path)
    decodable = js_decode_uri_component(path) is not None
    queries = _forms(query) if sep else ("",)
    out: list[tuple[str, bool]] = []
    for i, p in enumerate(paths):
        for q in queries:
            form = p + sep + q
            if all(form != seen for seen, _ in out):
                out.append((form, i == 0 and decodable))
    return tuple(out)


def signature_candidates(raw_target: str) -> tuple[str, ...]:
    """The path+query forms a signature may cover: fully percent-decoded first (the only form
    that survives AppAPI's PHP proxy), fully raw last, the mixed forms between; one if decoding
    changes nothing."""
    return tuple(form for form, _ in _candidates(raw_target))


_PREFIXES_B: Final = tuple(p.encode() for p in ALLOWED_PREFIXES)


def _check_level(level: bytes, slashes: int) -> None:
    if b"\\" in level:
        raise _traversal("backslash")
    if any(b < 0x20 or b == 0x7F for b in level):
        raise _traversal("control character or NUL")
    if level.count(b"/") != slashes:
        raise _traversal("encoded slash")
    why = segment_escape(level)
    if why is not None:
        raise _traversal(why)
    # The prefix must hold for the raw form and every decoded form (/nc/%6fcs/ is not /nc/ocs/).
    if not level.startswith(NC_PREFIX.encode() + b"/") or not level[len(NC_PREFIX) :].startswith(
        _PREFIXES_B
    ):
        raise _not_proxied()


def _check_query(query: str) -> None:
    """CR, LF and NUL are refused in the query and in each of its decoded forms: a line break
    in a signed field would shift the fields after it (a v2 message read as a v1 one)."""
    level = query.encode("ascii")
    for _ in range(MAX_QUERY_DECODE_DEPTH + 1):
        if any(bad in level for bad in _LINE_BREAKERS):
            raise PathRejected(
                "query_invalid", "The query holds a line break or NUL (percent-encoded)", 400
            )
        decoded = unquote_to_bytes(level)
        if decoded == level:
            return
        level = decoded
    raise PathRejected("query_invalid", "The query has too many layers of percent-encoding", 400)


def check_target(raw_target: str) -> NcTarget:
    """Check a raw request target (`/nc/...?...` exactly as received). Raises PathRejected.

    Traversal is rejected, never normalised: '.' and '..' segments (also with parameters,
    `..;x`), backslashes, control bytes,
    and encoded slashes, in the raw form and after each of up to three percent-decodings; the
    allow-listed prefix must hold for every form; the fully decoded path must be UTF-8. The
    query may hold no CR, LF or NUL in any decoded form."""
    if len(raw_target) > MAX_TARGET_LENGTH:
        raise PathRejected("path_invalid", "Request target too long", 400)
    path, _, query = raw_target.partition("?")
    if not path.startswith(NC_PREFIX + "/"):
        raise _not_proxied()
    if "\\" in path:
        raise _traversal("backslash")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise _traversal("control character or NUL")
    if not _TARGET_CHARS.match(path) or not _TARGET_CHARS.match(query):
        raise PathRejected("path_invalid", "The request target must be percent-encoded ASCII", 400)
    level = path.encode("ascii")
    slashes = level.count(b"/")
    for depth in range(MAX_DECODE_DEPTH + 1):
        _check_level(level, slashes)
        decoded = unquote_to_bytes(level)
        if decoded == level:
            break
        if depth == MAX_DECODE_DEPTH:
            raise _traversal("too many layers of percent-encoding")
        if depth == 0:
            try:
                decoded.decode("utf-8")  # what Nextcloud itself will see after its one decode
            except UnicodeDecodeError:
                raise PathRejected("path_invalid", "The path is not UTF-8", 400) from None
        level = decoded
    _check_query(query)
    upstream = raw_target[len(NC_PREFIX) :]
    candidates = _candidates(raw_target)
    return NcTarget(
        raw=raw_target,
        path=path,
        query=query,
        upstream=upstream,
        candidates=tuple(form for form, _ in candidates),
        decoded_path=tuple(decoded for _, decoded in candidates),
    )


# ------------------------------------------------------------ what PHP does to a query


def _form_decode(text: str) -> str:
    return unquote_to_bytes(text.replace("+", " ")).decode("utf-8", "replace")


def php_query_hazards(query: str) -> tuple[str, ...]:
    """Names of the query forms AppAPI's PHP proxy rewrites ($_GET re-serialised): before the
    proxy (repeated keys, dots/spaces in keys, `[]`, bare keys, encoded spaces) and the traces
    it leaves (indexed `[0]` keys, empty values, '+'). Only used to explain a signature
    mismatch; an empty tuple means the query is PHP-stable as far as we can tell."""
    found: list[str] = []

    def add(name: str) -> None:
        if name not in found:
            found.append(name)

    seen: set[str] = set()
    for part in query.split("&"):
        if not part:
            continue
        raw_key, eq, raw_value = part.partition("=")
        key = _form_decode(raw_key)
        base = key.split("[", 1)[0]
        if not eq:
            add("bare_key")
        elif not raw_value:
            add("empty_value")
        if "." in base or " " in base:
            add("dot_or_space_in_key")
        if _ARRAY_INDEX.search(key):
            add("array_key")
        if key in seen and not key.endswith("[]"):
            add("repeated_key")
        seen.add(key)
        if "+" in part or "%20" in part.upper():
            add("space")
    return tuple(found)


def portability_warnings(target: str) -> list[str]:
    """For the `sign` command: why a /nc path+query signed as given may not verify when it
    arrives through AppAPI's PHP proxy (docs/nc-proxy.md, "What survives AppAPI's PHP
    proxy")."""
    path, _, query = target.partition("?")
    out: list[str] = []
    upper = path.upper()
    if "%2F" in upper:
        out.append(
            "the path has %2F: the proxy decodes it to '/' (another path), and /nc refuses "
            "encoded slashes sent any other way"
        )
    elif "%40" in upper:
        out.append("the path has %40: the proxy passes '@'; sign the decoded form")
    if "%25" in upper:
        out.append(
            "the path has %25 (a literal '%' in a name): the proxy decodes the path once more, "
            "so /nc refuses such a call arriving through it (path_ambiguous_via_php_proxy); "
            "use HaRP (/exapps/) or a direct callback URL"
        )
    if js_decode_uri_component(target) is None:
        out.append("the target is not valid percent-encoded UTF-8: only the raw form can verify")
    hazards = php_query_hazards(query)
    if hazards:
        out.append(
            "the query has forms PHP re-serialises (" + ", ".join(hazards) + "): avoid them "
            "or sign the query exactly as PHP's http_build_query($_GET) writes it"
        )
    return out
