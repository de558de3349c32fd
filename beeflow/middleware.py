"""Cross-cutting request handling: errors to JSON, draining, security headers, CSRF."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from beeflow import keys
from beeflow.errors import BeeflowError, Forbidden, ServiceUnavailable
from beeflow.redact import loggable_path

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Every dynamic JSON answer: exact `application/json`, never cached (contract 4.3, 9.25)."""
    out = {"Cache-Control": "no-store"}
    if headers:
        out.update(headers)
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode("utf-8"),
        status=status,
        content_type="application/json",
        headers=out,
    )


def error_response(exc: BeeflowError) -> web.Response:
    return json_response(exc.body(), status=exc.instance_status, headers=exc.headers)


_AIOHTTP_CODES: Final = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    414: "uri_too_long",
    416: "range_not_satisfiable",
    431: "headers_too_large",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One place that turns failures into JSON with a stable `code` and no internals."""
    try:
        return await handler(request)
    except BeeflowError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _AIOHTTP_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return json_response(
            {"code": code, "error": exc.reason}, status=exc.status, headers=headers
        )
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception:
        request_id = uuid.uuid4().hex[:12]
        log.exception(
            "unhandled error on %s %s (request %s)",
            request.method,
            loggable_path(request.path),
            request_id,
        )
        return json_response(
            {"code": "internal_error", "error": "Internal error", "requestId": request_id},
            status=500,
        )


@web.middleware
async def draining_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """While shutting down, answer new requests 503 and count the ones still running."""
    draining = request.app[keys.DRAINING]
    if draining.active:
        raise ServiceUnavailable(
            "The connector is restarting; try again in a moment",
            code="shutting_down",
            headers={"Retry-After": "5", "Connection": "close"},
        )
    draining.enter()
    try:
        return await handler(request)
    finally:
        draining.leave()


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Browsers mark cross-site writes; AppAPI and HaRP do no CSRF check, so we do (reference 11).
    Server-to-server calls carry no Sec-Fetch-Site and are judged by their signature."""
    if (
        request.method not in SAFE_METHODS
        and request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site"
    ):
        raise Forbidden(
            "Cross-site requests are not accepted by this app.",
            code="cross_site_request_blocked",
        )
    return await handler(request)


def frame_ancestors(app: web.Application) -> str:
    """Nextcloud's own origins only; never the request's Origin (reference 11)."""
    config = app[keys.CONFIG]
    origins: list[str] = []
    for url in (config.nextcloud_url, config.public_nextcloud_url):
        origin = str(url.origin())
        if origin not in origins:
            origins.append(origin)
    for origin in config.trusted_embed_origins:
        if origin not in origins:
            origins.append(origin)
    return "frame-ancestors 'self' " + " ".join(origins)


_CSP: web.AppKey[str] = web.AppKey("csp")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", request.app[_CSP])
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Robots-Tag"] = "noindex, nofollow"
    headers["X-Permitted-Cross-Domain-Policies"] = "none"


def install_security_headers(app: web.Application) -> None:
    """Headers on every response, streamed ones included (on_response_prepare sees them all)."""
    app[_CSP] = frame_ancestors(app)
    app.on_response_prepare.append(_security_headers)


# ------------------------------------------------------------------ the HTTP parser's log


class ParserErrorFilter(logging.Filter):
    """aiohttp logs every request head its parser refuses at ERROR with a traceback, and the
    exception's message quotes the offending line: a user's Cookie or Basic credentials, an
    AppAPI token. Such a record becomes one line naming the error class (WARNING for a line over
    the size limit, which real clients hit with huge cookies; INFO otherwise). Every other record
    passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        remote = args[0] if args else "?"
        level = logging.WARNING if isinstance(exc, LineTooLong) else logging.INFO
        if record.levelno < level:
            level = record.levelno  # aiohttp's own DEBUG for non-HTTP traffic stays DEBUG
        record.msg = "request from %s refused by the HTTP parser (%s, HTTP %s)"
        record.args = (remote, type(exc).__name__, exc.code)
        record.levelno, record.levelname = level, logging.getLevelName(level)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return logging.getLogger(record.name).isEnabledFor(level)


HTTP_LOGGER: Final = "beeflow.http"


def http_logger() -> logging.Logger:
    """The logger the HTTP server protocol writes to (make_app passes it in handler_args)."""
    logger = logging.getLogger(HTTP_LOGGER)
    if not any(isinstance(f, ParserErrorFilter) for f in logger.filters):
        logger.addFilter(ParserErrorFilter())
    return logger
