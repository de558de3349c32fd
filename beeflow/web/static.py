"""The PUBLIC shell routes: each file from the service's front-end host when one is configured
(beeflow.shell), else from the bundled UI's directory, nothing outside it."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, Final

from aiohttp import web
from aiohttp.helpers import ETAG_ANY, ETag

from beeflow.config import CONFIG
from beeflow.errors import BeeflowError, NotFound
from beeflow.web import shell, spa
from beeflow.web.auth import Access, add_route
from beeflow.web.responses import Handler
from beeflow.web.routing import ROUTING

log = logging.getLogger(__name__)

# Hashed bundle files never change under a name: cache them for a year.
IMMUTABLE: Final = "public, max-age=31536000, immutable"
# The shell must never be cached: a new image ships new asset names.
NO_STORE: Final = "no-store"
# Everything else may be kept but is revalidated (ETag / Last-Modified -> 304).
REVALIDATE: Final = "no-cache"

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".wasm": "application/wasm",
}
FALLBACK_TYPE: Final = "application/octet-stream"

# One path segment we are willing to look up: no dot-segments or hidden files, no separators or
# control characters of any platform. Everything is checked AFTER aiohttp's percent-decoding, so
# `%2e%2e`, `%2f` and `%5c` arrive here as `..`, `/` and `\` and are refused like the plain ones.
_SEGMENT: Final = re.compile(r"^[^./\\\x00-\x1f\x7f:][^/\\\x00-\x1f\x7f:]*$")
_MAX_PATH: Final = 1024

# Connector-local routes the embed/tenant code registers under our prefixes before us (app.py
# order). Our catch-alls must never answer for them, whatever the registration order becomes.
RESERVED: Final = frozenset({"js/embed", "js/embed.js", "img/app.svg"})

# Escapes the embed host would decode into a separator or a dot segment.
_RAW_ESCAPES: Final = re.compile(r"%(?:2e|2f|5c)|\\", re.IGNORECASE)

_ROOT: web.AppKey[SpaRoot] = web.AppKey("spa_root")
# A full UI built once per prefix (beeflow.web.spa.builds): one root per build.
_BUILDS: web.AppKey[dict[str, SpaRoot]] = web.AppKey("spa_builds")


class SpaRoot:
    """The resolved directory the shell is served from (None: no UI installed; all 404)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory.resolve() if directory is not None else None

    def file(self, relative: str) -> Path:
        """The regular file at `relative` inside the root, or NotFound. Never a directory, never
        a path outside the root (symlinks are resolved and re-checked)."""
        if self.directory is None:
            raise NotFound("The web UI is not installed", code="spa_missing")
        if len(relative) > _MAX_PATH or relative in RESERVED:
            raise _not_found()
        parts = relative.split("/")
        if not all(_SEGMENT.match(part) for part in parts):
            raise _not_found()
        candidate = self.directory.joinpath(*parts)
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            raise _not_found() from None
        if not resolved.is_relative_to(self.directory) or not resolved.is_file():
            raise _not_found()
        return resolved


def _not_found() -> NotFound:
    return NotFound("No such file", code="static_not_found")


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), FALLBACK_TYPE)


# A Range we serve: `bytes=` and one or more `first-last`, `first-` or `-suffix` specs.
_UNIT: Final = re.compile(r"^\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=(.*)$", re.ASCII | re.DOTALL)
_SPEC: Final = re.compile(r"^(?:([0-9]+)-([0-9]*)|-([0-9]+))$", re.ASCII)
# Beyond any file we serve; longer digit strings are not converted (Python's int() refuses
# more than 4300 digits, and their value does not matter).
_HUGE: Final = 10**18
_CHUNK: Final = 256 * 1024


def _number(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else _HUGE


class _Unsatisfiable(Exception):
    pass


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """RFC 9110 14.1/14.2 for one representation of `size` bytes: the one byte range to serve as
    (start, end inclusive), or None to ignore the header and send the whole file (another unit,
    which a server must ignore; several ranges, since we send no multipart/byteranges; an empty
    file). Raises _Unsatisfiable for an invalid range set or one with no satisfiable range."""
    unit = _UNIT.match(value)
    if unit is None:
        raise _Unsatisfiable
    if unit[1].lower() != "bytes":
        return None
    specs = [part.strip(" \t") for part in unit[2].split(",")]
    specs = [part for part in specs if part]
    if not specs:
        raise _Unsatisfiable
    satisfiable: list[tuple[int, int]] = []
    for spec in specs:
        match = _SPEC.match(spec)
        if match is None:
            raise _Unsatisfiable
        first, last, suffix = match.groups()
        if suffix is not None:
            length = _number(suffix)
            if length > 0 and size > 0:
                satisfiable.append((max(0, size - length), size - 1))
            continue
        start = _number(first)
        end = _number(last) if last else _HUGE
        if end < start:
            raise _Unsatisfiable  # invalid (14.1.1), not merely unsatisfiable
        if start < size:
            satisfiable.append((start, min(end, size - 1)))
    if size == 0 or (len(specs) > 1 and satisfiable):
        return None
    if not satisfiable:
        raise _Unsatisfiable
    return satisfiable[0]


def _unsatisfiable(size: int) -> BeeflowError:
    return BeeflowError(
        "The requested range is not satisfiable",
        status=416,
        code="range_not_satisfiable",
        headers={"Content-Range": f"bytes */{size}"},
    )


def _precondition_failed() -> BeeflowError:
    return BeeflowError(
        "A precondition of the request is not met", status=412, code="precondition_failed"
    )


def _etag_of(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _matches(etags: tuple[ETag, ...], current: str, *, weak: bool) -> bool:
    """Strong (If-Match, If-Range) or weak (If-None-Match) comparison, RFC 9110 8.8.3.2."""
    if any(tag.value == ETAG_ANY for tag in etags):
        return True
    return any(f'"{tag.value}"' == current for tag in etags if weak or not tag.is_weak)


def _if_range_holds(request: web.Request, etag: str, st: os.stat_result) -> bool:
    """RFC 9110 13.1.5: an entity tag must match strongly; a date must equal Last-Modified,
    which counts as a strong validator only when it is at least a second old (8.8.2.2).
    Anything else (a weak tag, garbage) is false."""
    value = request.headers.get("If-Range", "").strip()
    if value.startswith('"'):
        return value == etag
    if value.startswith("W/"):
        return False
    when = request.if_range
    modified = int(st.st_mtime)
    return when is not None and int(when.timestamp()) == modified and time.time() - modified >= 1


def decide(request: web.Request, etag: str, st: os.stat_result) -> tuple[int, int, int]:
    """RFC 9110 13.2.2 in order, then 14.2: (status, start, length) of the answer: 304, or 200
    for the whole file, or 206 for one range. Raises the JSON 412 and 416 errors."""
    modified = int(st.st_mtime)
    if_match = request.if_match
    if if_match is not None:
        if not _matches(if_match, etag, weak=False):
            raise _precondition_failed()
    elif (since := request.if_unmodified_since) is not None and modified > since.timestamp():
        raise _precondition_failed()
    if_none_match = request.if_none_match
    if if_none_match is not None:
        if _matches(if_none_match, etag, weak=True):
            return 304, 0, 0
    elif (since := request.if_modified_since) is not None and modified <= since.timestamp():
        return 304, 0, 0
    size = st.st_size
    value = request.headers.get("Range")
    # Range is defined for GET only (14.2); a false If-Range means: ignore it (13.2.2 step 5).
    if value is None or request.method != "GET":
        return 200, 0, size
    if "If-Range" in request.headers and not _if_range_holds(request, etag, st):
        return 200, 0, size
    try:
        chosen = parse_range(value, size)
    except _Unsatisfiable:
        raise _unsatisfiable(size) from None
    if chosen is None:
        return 200, 0, size
    start, end = chosen
    return 206, start, end - start + 1


def _open(path: Path) -> tuple[BinaryIO, os.stat_result]:
    """The open file and its stat, taken from the descriptor (what is sent is what was stat'ed)."""
    handle = path.open("rb")
    try:
        return handle, os.fstat(handle.fileno())
    except OSError:
        handle.close()
        raise


def _read(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    return handle.read(size)


async def send_file(request: web.Request, path: Path, cache_control: str) -> web.StreamResponse:
    """ETag, Last-Modified, 304, 412, one byte range (206/416), HEAD, read in chunks off the
    event loop. Every refusal is a JSON error; a 304 carries the 200's validators and
    Cache-Control and nothing else."""
    loop = asyncio.get_running_loop()
    try:
        handle, st = await loop.run_in_executor(None, _open, path)
    except OSError:
        raise _not_found() from None
    try:
        etag = _etag_of(st)
        status, start, length = decide(request, etag, st)
        response = web.StreamResponse(status=status)
        response.headers["ETag"] = etag
        response.last_modified = st.st_mtime
        response.headers["Cache-Control"] = cache_control
        if status == 304:
            await response.prepare(request)
            await response.write_eof()
            return response
        response.headers["Content-Type"] = content_type(path)
        response.headers["Accept-Ranges"] = "bytes"
        if status == 206:
            response.headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{st.st_size}"
        response.content_length = length
        await response.prepare(request)
        if request.method != "HEAD":
            offset, left = start, length
            while left > 0:
                chunk = await loop.run_in_executor(None, _read, handle, offset, min(left, _CHUNK))
                if not chunk:
                    break  # the file shrank under us: the client sees a short body
                await response.write(chunk)
                offset += len(chunk)
                left -= len(chunk)
        await response.write_eof()
        return response
    finally:
        handle.close()


def _root(request: web.Request) -> SpaRoot:
    builds = request.app.get(_BUILDS)
    if builds:
        return builds[spa.build_for(request.app[ROUTING].streaming(request))]
    return request.app[_ROOT]


async def _from_host(
    request: web.Request, relative: str, bundled: Callable[[], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The embed host's answer for a shell file, else the bundled UI's. Only paths the bundled
    UI could serve are asked for (no dot segments, no encoded separators, nothing reserved for
    the connector's own routes)."""
    host = shell.embed_host(request.app)
    if host is not None and _askable(request, relative):
        answer = await host.relay(request)
        if answer is not None:
            return answer
    return await bundled()


def _askable(request: web.Request, relative: str) -> bool:
    if relative in RESERVED or len(relative) > _MAX_PATH:
        return False
    if _RAW_ESCAPES.search(request.raw_path.partition("?")[0]):
        return False
    return not relative or all(_SEGMENT.match(part) for part in relative.split("/"))


async def index(request: web.Request) -> web.StreamResponse:
    async def bundled() -> web.StreamResponse:
        return await send_file(request, _root(request).file("index.html"), NO_STORE)

    return await _from_host(request, "", bundled)


async def favicon(request: web.Request) -> web.StreamResponse:
    async def bundled() -> web.StreamResponse:
        return await send_file(request, _root(request).file("favicon.ico"), REVALIDATE)

    return await _from_host(request, "favicon.ico", bundled)


async def logo(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]

    async def bundled() -> web.StreamResponse:
        return await send_file(request, _root(request).file(name), REVALIDATE)

    return await _from_host(request, name, bundled)


def _under(prefix: str, cache_control: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        relative = f"{prefix}/{request.match_info['path']}"

        async def bundled() -> web.StreamResponse:
            path = _root(request).file(relative)
            cache = NO_STORE if path.suffix == ".html" else cache_control
            return await send_file(request, path, cache)

        return await _from_host(request, relative, bundled)

    return handler


def setup(app: web.Application) -> None:
    """Register the shell routes (PUBLIC, GET and HEAD). app.py calls this last, so the
    connector-local `/js/embed(.js)` and `/img/app.svg` registered earlier win the match."""
    config = app[CONFIG]
    directory = spa.locate(app, config.spa_dir)
    app[_ROOT] = SpaRoot(directory)
    per_prefix = spa.builds(directory) if directory is not None else None
    if per_prefix is not None:
        app[_BUILDS] = {name: SpaRoot(path) for name, path in per_prefix.items()}
    if not config.demo:
        shell.setup(app)
    routes: list[tuple[str, Handler]] = [
        ("/", index),
        ("/index.html", index),
        ("/favicon.ico", favicon),
        (r"/{name:(?:bee-flow-logo|BeeFlow-logo)[^/]*}", logo),
        ("/assets/{path:.+}", _under("assets", IMMUTABLE)),
        ("/js/{path:.+}", _under("js", REVALIDATE)),
        ("/img/{path:.+}", _under("img", REVALIDATE)),
    ]
    for path, handler in routes:
        for method in ("GET", "HEAD"):
            add_route(app, method, path, handler, Access.PUBLIC)
