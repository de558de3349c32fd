"""Answers written below the application: the guard's refusals (bytes on a raw connection) and
the refusals of aiohttp's HTTP parser, both as the error middleware would write them: JSON with
a stable `code` and the security headers every other answer carries (docs/bad-input.md).

    answer(status, reason, code, message, **extra) -> bytes   a complete HTTP/1.1 answer
    answering(handler)   makes aiohttp's RequestHandler answer parser refusals (and the
                         failures it handles itself, outside the app) this way

aiohttp answers a request head its parser refuses from `RequestHandler.handle_error`, as
`text/plain` quoting the parser's message (which may quote the offending bytes back) and
without the app's response hooks (the request matched no route). `answering` switches one
handler instance to a subclass that overrides only that method; nothing else of aiohttp's
protocol changes. The log line still comes from aiohttp's call to its logger (the app's
parser log, beeflow.web.parser_log, rate-limits it).
"""

from __future__ import annotations

import json
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    DecompressSizeError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.web_protocol import RequestHandler

# The security headers of answers no route produced: nothing in them is a page to frame or run.
SECURITY_HEADERS: Final = (
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Robots-Tag", "noindex, nofollow"),
    ("X-Permitted-Cross-Domain-Policies", "none"),
)

# Most specific first: each parser refusal's stable code and a message that quotes nothing of
# the request.
PARSER_CODES: Final[tuple[tuple[type[HttpProcessingError], str, str], ...]] = (
    (BadHttpMethod, "method_invalid", "The request method is not valid HTTP"),
    (BadStatusLine, "request_line_invalid", "The request line is not valid HTTP"),
    (InvalidURLError, "target_invalid", "The request target is not valid"),
    (LineTooLong, "line_too_long", "A line of the request head is too long"),
    (InvalidHeader, "header_invalid", "A request header is not valid HTTP"),
    (TransferEncodingError, "transfer_encoding_invalid", "The chunked body is not valid"),
    (ContentLengthError, "content_length_invalid", "The body does not match its length"),
    (DecompressSizeError, "content_encoding_invalid", "The body's encoding is not valid"),
    (ContentEncodingError, "content_encoding_invalid", "The body's encoding is not valid"),
    (HttpProcessingError, "bad_request", "The request is not valid HTTP"),
)
_STATUS_CODES: Final = {
    500: ("internal_error", "Internal error"),
    504: ("timeout", "The request took too long"),
}


def answer(status: int, reason: str, code: str, message: str, **extra: str) -> bytes:
    """A complete HTTP/1.1 JSON error answer, as the error middleware would write it."""
    body = json.dumps({"code": code, "error": message}).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json; charset=utf-8"]
    lines += [f"{name}: {value}" for name, value in SECURITY_HEADERS]
    lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in extra.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def refusal(status: int, exc: BaseException | None) -> tuple[str, str]:
    """The (code, message) of an answer aiohttp's protocol writes itself."""
    if isinstance(exc, HttpProcessingError):
        for kind, code, message in PARSER_CODES:
            if isinstance(exc, kind):
                return code, message
    return _STATUS_CODES.get(status, ("http_error", "The request failed"))


class _Answering(RequestHandler):
    """aiohttp's RequestHandler whose own error answers are JSON with the security headers."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Too late for an answer: aiohttp logs and closes the connection.
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, BadHttpMethod):
            # Mostly not HTTP at all (TLS to a plain port, scanners): aiohttp's own level.
            self.logger.debug("Error handling request from %s", request.remote, exc_info=exc)
        else:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        code, text = refusal(status, exc)
        response = web.Response(
            status=status,
            body=json.dumps({"code": code, "error": text}).encode(),
            content_type="application/json",
            headers=dict(SECURITY_HEADERS),
        )
        response.force_close()
        return response


def answering(handler: RequestHandler) -> RequestHandler:
    """`handler`, answering its own errors as JSON (see the module docstring)."""
    handler.__class__ = _Answering
    return handler
