"""aiohttp's HTTP parser logs every refused request head with a traceback that quotes the
offending line; here such a record becomes one line without the request's bytes."""

from __future__ import annotations

import logging
from typing import Final

from aiohttp.http_exceptions import HttpProcessingError, LineTooLong


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
