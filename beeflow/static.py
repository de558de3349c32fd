"""Static SPA serving: the seeds' PUBLIC shell routes, from one directory, nothing outside it."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from aiohttp import web

from beeflow import keys
from beeflow.appapi import Access, Handler, add_route
from beeflow.errors import BeeflowError, NotFound

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

_ROOT: web.AppKey[SpaRoot] = web.AppKey("spa_root")


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


def candidates(configured: Path | None) -> list[Path]:
    """Where the UI may live, first match wins: BEEFLOW_SPA_DIR; `spa/` beside the package (a
    source checkout or editable install); the wheel's data files (`<prefix>/share/beeflow/spa`)."""
    if configured is not None:
        return [configured]
    package = Path(__file__).resolve().parent
    return [package.parent / "spa", Path(sys.prefix) / "share" / "beeflow" / "spa"]


def find_spa_dir(configured: Path | None, options: Sequence[Path] | None = None) -> Path | None:
    for path in options if options is not None else candidates(configured):
        if (path / "index.html").is_file():
            return path
    if configured is not None:
        log.warning("BEEFLOW_SPA_DIR %s has no index.html: the web UI will answer 404", configured)
    else:
        log.warning("no web UI found (looked in %s)", ", ".join(map(str, candidates(None))))
    return None


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), FALLBACK_TYPE)


_CONDITIONS: Final = ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since")
_SUFFIX_ZERO: Final = re.compile(r"^bytes=-0+$", re.ASCII | re.IGNORECASE)


def _unsatisfiable(size: int) -> BeeflowError:
    return BeeflowError(
        "The requested range is not satisfiable",
        status=416,
        code="range_not_satisfiable",
        headers={"Content-Range": f"bytes */{size}"},
    )


def check_range(request: web.Request, path: Path) -> None:
    """Refuse, as a JSON error, a Range that aiohttp's FileResponse would answer with a bare
    416 (unparseable, more than one range, start past the end) or would wrongly serve whole
    (`bytes=-0`, an empty suffix). Preconditions are left to FileResponse (they come first,
    RFC 9110 13.2.2), and so is a Range that a stale If-Range makes it ignore."""
    value = request.headers.get("Range")
    if value is None or any(name in request.headers for name in _CONDITIONS):
        return
    try:
        stat = path.stat()
    except OSError:
        return
    if_range = request.if_range
    if if_range is not None and stat.st_mtime > if_range.timestamp():
        return
    if _SUFFIX_ZERO.match(value.strip()):
        raise _unsatisfiable(stat.st_size)
    try:
        start = request.http_range.start
    except ValueError:
        raise _unsatisfiable(stat.st_size) from None
    if start is not None and start >= stat.st_size:
        raise _unsatisfiable(stat.st_size)


def _file_response(request: web.Request, path: Path, cache_control: str) -> web.FileResponse:
    """aiohttp's FileResponse gives us ETag, Last-Modified, 304, 412, Range, HEAD and sendfile."""
    check_range(request, path)
    return web.FileResponse(
        path, headers={"Content-Type": content_type(path), "Cache-Control": cache_control}
    )


def _root(request: web.Request) -> SpaRoot:
    return request.app[_ROOT]


async def index(request: web.Request) -> web.StreamResponse:
    return _file_response(request, _root(request).file("index.html"), NO_STORE)


async def favicon(request: web.Request) -> web.StreamResponse:
    return _file_response(request, _root(request).file("favicon.ico"), REVALIDATE)


async def logo(request: web.Request) -> web.StreamResponse:
    return _file_response(request, _root(request).file(request.match_info["name"]), REVALIDATE)


def _under(prefix: str, cache_control: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        relative = f"{prefix}/{request.match_info['path']}"
        path = _root(request).file(relative)
        return _file_response(request, path, NO_STORE if path.suffix == ".html" else cache_control)

    return handler


def setup(app: web.Application) -> None:
    """Register the shell routes (PUBLIC, GET and HEAD). app.py calls this last, so the
    connector-local `/js/embed(.js)` and `/img/app.svg` registered earlier win the match."""
    config = app[keys.CONFIG]
    app[_ROOT] = SpaRoot(find_spa_dir(config.spa_dir))
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
