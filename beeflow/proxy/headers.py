"""Header rules of the streaming proxies: named header sets, filtering, media-type checks, and the
one refusal of encoded request bodies.

    HOP_BY_HOP, REQUEST_FRAMING, RESPONSE_FRAMING, CREDENTIALS, BROWSER_CONTEXT, FORWARDING,
    APPAPI, ORIGIN_WIDE (frozensets of lower-case names), APPAPI_PREFIXES, ORIGIN_WIDE_PREFIXES
    (name prefixes)
    filter_headers(headers, *drop, prefixes=(), drop_empty=True) -> CIMultiDict[str]
        A copy without the named headers, the headers its own `Connection` header names, and (by
        default) headers with an empty value. A name is compared with every `_` read as `-`
        (CGI-style servers do, so `X_Beeflow_NC_Uid` is `X-Beeflow-NC-Uid` to them). Repeated
        headers stay repeated (two Set-Cookie stay two), in their order.
    confine(headers, policy), confiner(policy) -> a relay edit_headers callback
        An upstream's response made harmless on the origin it is served from: without
        ORIGIN_WIDE headers, with `policy` as its only Content-Security-Policy.
    is_event_stream(headers), is_encoded(headers)
    refuse_encoded_body(request)   415 content_encoding_unsupported for a compressed body
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy

from beeflow.errors import BadRequest

# RFC 9110 7.6.1 connection-specific fields, plus the non-standard ones proxies also use.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
# Request fields the client re-derives for the next hop (Host from the target URL, the length
# from the body we send, Expect is a per-hop handshake).
REQUEST_FRAMING: Final = frozenset({"host", "content-length", "transfer-encoding", "expect"})
# Response fields the relay decides itself (it keeps the upstream Content-Length if any).
RESPONSE_FRAMING: Final = frozenset({"content-length", "transfer-encoding"})
# What identifies the caller to *us*: never passed to an upstream that should not see it.
# X-Original-Authorization is AppAPI's copy of the browser's Authorization (the user's Basic
# credentials), made when AppAPI talks to a Docker socket proxy over HTTPS (docs/security.md,
# "(3) Calls to the Bee Flow service").
CREDENTIALS: Final = frozenset(
    {"authorization", "cookie", "proxy-authorization", "x-original-authorization"}
)
# requesttoken: Nextcloud's per-session CSRF token (its axios adds it to every request).
BROWSER_CONTEXT: Final = frozenset({"origin", "referer", "requesttoken"})
FORWARDING: Final = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-real-ip",
    }
)
# What the platform in front of us (AppAPI's PHP proxy, HaRP) adds to every request.
APPAPI: Final = frozenset(
    {
        "authorization-app-api",
        "ex-app-id",
        "ex-app-version",
        "ex-app-user-id",
        "aa-version",
        "aa-request-id",
        "harp-shared-key",
        "ex-app-host",
        "ex-app-port",
        "x-origin-ip",
    }
)
APPAPI_PREFIXES: Final = ("aa-", "ex-app-", "harp-")
# Response fields that act beyond the one response, on the whole origin it is served from (a
# proxied upstream answers on Nextcloud's origin): cookies, storage wiping, the connector's own
# security policy, transport pinning and alternative services, origin-wide reporting, service
# worker scope, and CORS grants that would let other sites read the user's answers.
ORIGIN_WIDE: Final = frozenset(
    {
        "set-cookie",
        "set-cookie2",
        "clear-site-data",
        "content-security-policy",
        "content-security-policy-report-only",
        "x-frame-options",
        "x-content-security-policy",
        "x-webkit-csp",
        "strict-transport-security",
        "public-key-pins",
        "public-key-pins-report-only",
        "expect-ct",
        "alt-svc",
        "nel",
        "report-to",
        "reporting-endpoints",
        "service-worker-allowed",
        "origin-agent-cluster",
    }
)
ORIGIN_WIDE_PREFIXES: Final = ("access-control-",)

HeaderSource = Mapping[str, str] | CIMultiDictProxy[str] | MultiDictProxy[str] | CIMultiDict[str]


def filter_headers(
    headers: HeaderSource,
    *drop: Iterable[str],
    prefixes: tuple[str, ...] = (),
    drop_empty: bool = True,
) -> CIMultiDict[str]:
    """A copy of `headers` without the named ones (sets of lower-case names), without names
    starting with one of `prefixes`, without those its own Connection header lists, and
    (drop_empty) without empty values. Order and repetitions are kept."""
    names = _union(drop)
    listed = _getall(headers, "connection")
    if listed:
        names = names | {
            _name(token) for value in listed for token in value.split(",") if token.strip()
        }
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        low = _name(key)
        if low in names or (prefixes and low.startswith(prefixes)):
            continue
        if drop_empty and not value.strip():
            continue
        out.add(key, value)
    return out


def _name(key: str) -> str:
    """The name a header is compared by: lower case, `_` read as `-` (CGI maps both to `_`)."""
    low = key.strip().lower()
    return low.replace("_", "-") if "_" in low else low


def confine(headers: CIMultiDict[str], policy: str) -> None:
    """Drop every ORIGIN_WIDE header (any spelling) and make `policy` the response's only
    Content-Security-Policy, in place."""
    for key in [k for k in headers if _is_origin_wide(k)]:
        headers.popall(key, None)
    headers["Content-Security-Policy"] = policy


EditHeaders = Callable[[aiohttp.ClientResponse, CIMultiDict[str]], None]


def confiner(policy: str) -> EditHeaders:
    """confine() as a relay `edit_headers` callback, with `policy` fixed."""

    def edit(_upstream: aiohttp.ClientResponse, headers: CIMultiDict[str]) -> None:
        confine(headers, policy)

    return edit


def _is_origin_wide(key: str) -> bool:
    low = _name(key)
    return low in ORIGIN_WIDE or low.startswith(ORIGIN_WIDE_PREFIXES)


def _union(groups: tuple[Iterable[str], ...]) -> frozenset[str]:
    if all(isinstance(group, frozenset) for group in groups):
        return _union_cached(groups)
    return frozenset().union(*groups)


@functools.lru_cache(maxsize=64)
def _union_cached(groups: tuple[frozenset[str], ...]) -> frozenset[str]:
    """The named sets are module constants: their union is computed once per combination."""
    return frozenset().union(*groups)


def _getall(headers: HeaderSource, name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    return [v for k, v in headers.items() if k.lower() == name]


def _media_type(headers: HeaderSource) -> str:
    value = headers.get("Content-Type") or headers.get("content-type") or ""
    return value.split(";", 1)[0].strip().lower()


def is_event_stream(headers: HeaderSource) -> bool:
    return _media_type(headers) == "text/event-stream"


def is_encoded(headers: HeaderSource) -> bool:
    value = headers.get("Content-Encoding") or headers.get("content-encoding") or ""
    return value.strip().lower() not in ("", "identity")


def _encodings(headers: HeaderSource) -> list[str]:
    """Every coding named in every Content-Encoding header, lower case, `identity` left out."""
    return [
        token.strip().lower()
        for value in _getall(headers, "content-encoding")
        for token in value.split(",")
        if token.strip().lower() not in ("", "identity")
    ]


def refuse_encoded_body(request: web.BaseRequest) -> None:
    """415 content_encoding_unsupported for a request body with any Content-Encoding but
    identity (in any of its headers or list items).

    Both proxies forward request bodies exactly as received (aiohttp decodes nothing on the way
    in), so an encoded body would reach the upstream as bytes it might not decode (WebDAV
    stores them as they come), a body hash covers the bytes as sent, and a small gzip body can
    inflate to gigabytes. Browsers never compress request bodies. Checked from the headers
    alone, before a byte of the body is read (and before `100 Continue`)."""
    if request.body_exists and _encodings(request.headers):
        raise BadRequest(
            "Compressed request bodies (Content-Encoding) are not accepted: send the bytes "
            "uncompressed",
            code="content_encoding_unsupported",
            status=415,
        )
