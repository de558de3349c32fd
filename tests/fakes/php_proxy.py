"""A stand-in for AppAPI's legacy PHP proxy, `/index.php/apps/app_api/proxy/<appid>/<path>`, as
measured on Nextcloud 32 (nextcloud32-observed.md; contract section 4).

Usage (a real aiohttp app on loopback):

    proxy = PhpProxy(connector_url, secret=SECRET)      # connector_url: http://127.0.0.1:port
    await proxy.start()
    url = proxy.proxy_url("/nc/ocs/v2.php/...?x=1")     # what a caller of Nextcloud would use
    ...
    proxy.forwarded[-1]                                 # what reached the connector
    await proxy.stop()

What it does to a request, in order:
- Only GET, POST, PUT and DELETE have routes (anything else, PATCH included: 405 HTML).
- Path: the router decodes the path once, then Guzzle re-encodes only what is illegal in a path
  (so `%40` arrives as `@`, `%2F` as `/`, while `%20` and `%C3%A9` stay encoded), except `?`,
  which arrives as a query separator, and `#`, which cuts the URL (`php_path`).
  `reject_dot_segments=True` models AppAPI >= 32.0.10, which answers 404 to `..` segments.
- Query: PHP's `$_GET` re-serialised with `http_build_query` (`a=1&a=2` -> `a=2`; dots and
  spaces in keys -> `_`; `arr[]=x&arr[]=y` -> `arr%5B0%5D=x&arr%5B1%5D=y`; `empty` -> `empty=`;
  spaces -> `+`). `php_requery(qs)` exposes the same transformation to tests.
- Headers: all client headers (the browser's `Authorization: Basic`, cookies, `Host` = the host
  the client asked, i.e. Nextcloud's) minus `content-length`, `x-origin-ip`,
  `authorization-app-api` and `headers_to_exclude`; plus `x-origin-ip: <client ip>`,
  `Accept-Encoding: gzip`, `Accept-Language: en`, the AppAPI headers (`AA-VERSION`,
  `EX-APP-ID`, `EX-APP-VERSION`, `AUTHORIZATION-APP-API` = base64("<uid>:" + secret),
  `AA-REQUEST-ID`). The user is the login name of a Basic `Authorization`, if any (not verified:
  this is a stand-in), else "" (anonymous on a PUBLIC route). A body-less request without a
  Content-Type gets an empty `Content-Type:`; a PUT body over 1 MiB goes with
  `Expect: 100-Continue`. The body is streamed through with the client's Content-Length.
- Response: buffered whole (to a temp file) before anything is answered; gzip is decoded
  (Content-Encoding and Content-Length dropped); only the first value of each header is kept;
  `Transfer-Encoding`, `aa-version`, `ex-app-id`, `ex-app-version`, `authorization-app-api`,
  `aa-request-id` are dropped; text types get `;charset=UTF-8` appended; a non-HTML answer
  whose Content-Type is not exactly `application/json` and has no Cache-Control gets
  `Cache-Control: private, max-age=3600`; Nextcloud's own `Set-Cookie`, `X-Request-Id`, CSP are
  added. Connector down -> HTTP 500 with an empty body.

Not modelled: the route table and access levels (every path is forwarded; the connector's own
AppAPI check still applies), multipart re-encoding of form posts, nonce injection into `.html`
answers, HaRP mode (where this proxy forwards to `/exapps/<appid>/...`).
"""

from __future__ import annotations

import base64
import gzip
import secrets
import tempfile
import zlib
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import quote, unquote, unquote_to_bytes

import aiohttp
import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

PROXY_PREFIX: Final = "/index.php/apps/app_api/proxy/"
EXPECT_THRESHOLD: Final = 1024 * 1024
_DROP_REQUEST: Final = frozenset(
    {
        "content-length",
        "x-origin-ip",
        "authorization-app-api",
        # connection-level fields curl does not copy from getallheaders()
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "expect",
        "accept-encoding",
    }
)
_DROP_RESPONSE: Final = frozenset(
    {
        "aa-version",
        "ex-app-id",
        "ex-app-version",
        "authorization-app-api",
        "aa-request-id",
        "transfer-encoding",
        "connection",
        "keep-alive",
    }
)
# Guzzle's Uri::filterPath keeps these (and valid %XX escapes); everything else is %-encoded.
_PATH_SAFE: Final = "-._~!$&'()*+,;=:@/"


@attrs.frozen
class Forwarded:
    """One request as the proxy sent it to the connector."""

    method: str
    target: str  # path + query as sent
    headers: CIMultiDictProxy[str]
    status: int  # the connector's status (0 if unreachable)


# ------------------------------------------------------------ PHP's query handling


def _php_urlencode(text: str) -> str:
    """PHP urlencode(): alnum and -_. kept, space -> '+', the rest %XX (upper case)."""
    encoded = quote(text, safe="-_.", encoding="utf-8", errors="surrogateescape")
    return encoded.replace("~", "%7E").replace("%20", "+")


def _php_urldecode(text: str) -> str:
    return unquote_to_bytes(text.replace("+", " ")).decode("utf-8", "surrogateescape")


def _php_parse(query: str) -> dict[Any, Any]:
    """parse_str()/$_GET: php_default_treat_data + php_register_variable_ex, as far as a query
    can reach them (no max_input_vars/nesting limits)."""
    out: dict[Any, Any] = {}
    for part in query.split("&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition("=")
        name = _php_urldecode(raw_name).lstrip(" ")
        value = _php_urldecode(raw_value)
        bracket = name.find("[")
        base = name if bracket < 0 else name[:bracket]
        if not base:
            continue
        base = base.replace(" ", "_").replace(".", "_")
        indexes: list[str | None] = []
        if bracket >= 0:
            rest = name[bracket:]
            close = rest.find("]")
            if close < 0:
                # no closing bracket: '[' becomes '_' and the rest is part of the name
                base = base + "_" + rest[1:]
            else:
                while rest.startswith("[") and (close := rest.find("]")) >= 0:
                    inner = rest[1:close]
                    indexes.append(inner if inner else None)
                    rest = rest[close + 1 :]
        _php_assign(out, _php_key(base), indexes, value)
    return out


def _php_key(key: str) -> Any:
    """PHP turns decimal integer-like string keys into ints."""
    if (
        key == "0"
        or (key[:1] in "123456789" and key.isdigit())
        or (key.startswith("-") and key[1:2] in "123456789" and key[1:].isdigit())
    ):
        return int(key)
    return key


def _next_index(array: dict[Any, Any]) -> int:
    ints = [k for k in array if isinstance(k, int)]
    return max(ints) + 1 if ints else 0


def _php_assign(array: dict[Any, Any], key: Any, indexes: list[str | None], value: str) -> None:
    if not indexes:
        array[key] = value
        return
    current = array.get(key)
    if not isinstance(current, dict):
        current = {}
        array[key] = current
    head, rest = indexes[0], indexes[1:]
    sub = _next_index(current) if head is None else _php_key(head)
    _php_assign(current, sub, rest, value)


def _php_build(data: dict[Any, Any], prefix: str | None = None) -> list[str]:
    """http_build_query($data) with PHP_QUERY_RFC1738 (AppAPI's prepareRequestToExApp2)."""
    parts: list[str] = []
    for key, value in data.items():
        name = _php_urlencode(str(key))
        if prefix is not None:
            name = f"{prefix}%5B{name}%5D"
        if isinstance(value, dict):
            parts += _php_build(value, name)
        else:
            parts.append(f"{name}={_php_urlencode(value)}")
    return parts


def php_requery(query: str) -> str:
    """What the connector receives for a query string sent to the PHP proxy."""
    return "&".join(_php_build(_php_parse(query)))


def php_path(raw: str) -> str:
    """The router's one decode, then Guzzle's re-encoding of what a path may not contain. A
    decoded `?` is NOT re-encoded: it reaches the connector as a query separator (the rest of
    the name arrives as a query), and a decoded `#` ends the URL there (a fragment, never sent):
    both measured on Nextcloud 32.0.1 with a WebDAV name holding `%3F` or `%23`."""
    decoded = unquote(raw, errors="surrogateescape").split("#", 1)[0]
    out: list[str] = []
    i = 0
    while i < len(decoded):
        ch = decoded[i]
        if ch == "?":
            out.append(ch)
            i += 1
            continue
        if ch == "%" and _is_hex(decoded[i + 1 : i + 3]):
            out.append(decoded[i : i + 3])  # looks like an escape: Guzzle leaves it alone
            i += 3
            continue
        out.append(quote(ch, safe=_PATH_SAFE, errors="surrogateescape"))
        i += 1
    return "".join(out)


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


# ------------------------------------------------------------ the proxy app


class PhpProxy:
    def __init__(
        self,
        connector_url: URL | str,
        *,
        secret: str,
        app_id: str = "bee_flow",
        app_version: str = "1.0.0",
        aa_version: str = "32.0.0",
        headers_to_exclude: Iterable[str] = (),
        reject_dot_segments: bool = False,
    ) -> None:
        self.connector_url = URL(str(connector_url))
        self.secret = secret
        self.app_id = app_id
        self.app_version = app_version
        self.aa_version = aa_version
        self.headers_to_exclude = frozenset(h.lower() for h in headers_to_exclude)
        self.reject_dot_segments = reject_dot_segments
        self.forwarded: list[Forwarded] = []
        self.url = URL()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def proxy_url(self, path_and_query: str) -> URL:
        """The Nextcloud URL for a connector path (`/nc/...?...`), encoded as given."""
        return URL(
            f"{self.url}{PROXY_PREFIX}{self.app_id}/{path_and_query.lstrip('/')}", encoded=True
        )

    async def start(self, host: str = "127.0.0.1") -> URL:
        app = web.Application(client_max_size=1024**4)
        base = f"{PROXY_PREFIX}{{app_id}}"
        app.router.add_route("GET", base + "/{other:.*}", self._proxy)
        for method in ("POST", "PUT", "DELETE"):
            app.router.add_route(method, base + "/{other:.+}", self._proxy)
        self._session = aiohttp.ClientSession(
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        )
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        self.url = URL.build(scheme="http", host=host, port=int(self._runner.addresses[0][1]))
        return self.url

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -------------------------------------------------------- request side

    def _user(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                return base64.b64decode(auth[6:]).decode().partition(":")[0]
            except ValueError:
                return ""
        return ""

    def _headers(self, request: web.Request, uid: str, body_size: int | None) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            low = name.lower()
            if low in _DROP_REQUEST or low in self.headers_to_exclude:
                continue
            if low == "cookie":
                continue  # rebuilt below from $_COOKIE by Guzzle's jar, whatever is excluded
            headers.add(name, value)
        if request.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in request.cookies.items())
        if "Content-Type" not in headers and not request.body_exists:
            headers["Content-Type"] = ""
        headers["x-origin-ip"] = request.remote or "127.0.0.1"
        headers["Accept-Encoding"] = "gzip"
        headers["Accept-Language"] = headers.get("Accept-Language", "en")
        token = base64.b64encode(f"{uid}:{self.secret}".encode()).decode()
        headers["AA-VERSION"] = self.aa_version
        headers["EX-APP-ID"] = self.app_id
        headers["EX-APP-VERSION"] = self.app_version
        headers["AUTHORIZATION-APP-API"] = token
        headers["AA-REQUEST-ID"] = secrets.token_urlsafe(15)[:20]
        if body_size is not None and request.method in ("POST", "PUT", "DELETE"):
            headers["Content-Length"] = str(body_size)
            if request.method == "PUT" and body_size > EXPECT_THRESHOLD:
                headers["Expect"] = "100-Continue"
        return headers

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["app_id"] != self.app_id:
            return _nc_404()
        raw = request.raw_path
        other_raw = raw.split("?", 1)[0][len(PROXY_PREFIX) + len(self.app_id) + 1 :]
        path = php_path(other_raw)
        if self.reject_dot_segments and any(s in ("..", ".") for s in path.split("/")):
            return _nc_404()
        query = php_requery(request.query_string)
        # (A '?' decoded out of the path already starts a query; with a query of its own too,
        # how the two join was not measured: '&' is assumed.)
        target = "/" + path + (("&" if "?" in path else "?") + query if query else "")
        uid = self._user(request)
        body_size = request.content_length if request.body_exists else None
        data: Any = None
        if request.body_exists and request.method in ("POST", "PUT", "DELETE"):
            if body_size is None:
                payload = await request.read()  # php://input of a chunked request: whole
                body_size, data = len(payload), payload
            else:
                data = request.content
        headers = self._headers(request, uid, body_size)
        assert self._session is not None
        url = URL(str(self.connector_url) + target, encoded=True)
        with tempfile.TemporaryFile() as sink:
            try:
                async with self._session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    skip_auto_headers=("User-Agent", "Content-Type", "Accept"),
                ) as resp:
                    status, reason = resp.status, resp.reason
                    up_headers = CIMultiDict(resp.headers)
                    decoder = _decoder(up_headers.get("Content-Encoding", ""))
                    async for chunk in resp.content.iter_chunked(256 * 1024):
                        sink.write(decoder(chunk) if decoder else chunk)
                    if decoder:
                        sink.write(decoder(b"", final=True))
            except (aiohttp.ClientError, OSError):
                self.forwarded.append(Forwarded(request.method, target, _frozen(headers), 0))
                return web.Response(status=500, body=b"")
            self.forwarded.append(Forwarded(request.method, target, _frozen(headers), status))
            size = sink.tell()
            sink.seek(0)
            out = self._response_headers(up_headers, path, decoded=decoder is not None)
            response = web.StreamResponse(status=status, reason=reason, headers=out)
            response.content_length = size
            await response.prepare(request)
            if request.method != "HEAD":
                while chunk := sink.read(256 * 1024):
                    await response.write(chunk)
            await response.write_eof()
            return response

    # -------------------------------------------------------- response side

    @staticmethod
    def _response_headers(
        upstream: CIMultiDict[str], path: str, *, decoded: bool
    ) -> CIMultiDict[str]:
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in upstream.items():
            low = name.lower()
            if low in _DROP_RESPONSE or low in out or (decoded and low == "content-encoding"):
                continue
            if low == "content-length":
                continue  # recomputed from the buffered body
            out[name] = value  # first value only (createProxyResponse)
        ctype = out.get("Content-Type")
        if ctype and ctype.lower().startswith("text/") and "charset" not in ctype.lower():
            out["Content-Type"] = ctype.rstrip("; ") + ";charset=UTF-8"
        html = path.endswith(".html")
        if (
            not html
            and "Cache-Control" not in out
            and ctype not in ("application/json", "application/x-tar")
        ):
            out["Cache-Control"] = "private, max-age=3600"
        out["Content-Security-Policy"] = (
            "default-src 'none';base-uri 'none';manifest-src 'self';frame-ancestors 'none'"
        )
        out["X-Request-Id"] = secrets.token_urlsafe(15)[:20]
        out["X-Robots-Tag"] = "noindex, nofollow"
        out.add("Set-Cookie", "oc_sessionPassphrase=stub; path=/; HttpOnly; SameSite=Lax")
        return out


class _Gunzip:
    def __init__(self, wbits: int) -> None:
        self._z = zlib.decompressobj(wbits)

    def __call__(self, chunk: bytes, final: bool = False) -> bytes:
        return self._z.flush() if final else self._z.decompress(chunk)


def _decoder(encoding: str) -> _Gunzip | None:
    enc = encoding.strip().lower()
    if enc in ("gzip", "x-gzip"):
        return _Gunzip(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return _Gunzip(zlib.MAX_WBITS)
    return None


def _frozen(headers: CIMultiDict[str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(headers))


def _nc_404() -> web.Response:
    return web.Response(
        status=404,
        text="<!DOCTYPE html><html><body>Page not found</body></html>",
        content_type="text/html",
    )


def gunzip(data: bytes) -> bytes:
    """Helper for tests reading a raw gzip body."""
    return gzip.decompress(data)
