"""The outermost middleware: every failure becomes JSON with a stable `code` and no internals."""

from __future__ import annotations

import logging
import uuid
from typing import Final

from aiohttp import web

from beeflow.errors import BeeflowError
from beeflow.redact import loggable_path
from beeflow.web.responses import Handler, error_response, json_response

log = logging.getLogger(__name__)

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
    """Our errors answer with their status and code; aiohttp's own HTTP errors get a code too;
    anything else is logged once with a request id and answers 500 `internal_error`."""
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


def install(app: web.Application) -> None:
    app.middlewares.append(error_middleware)
