"""The log of aiohttp's HTTP server protocol: a request head its parser refuses becomes one line
without the request's bytes, and at most one such line a minute (docs/bad-input.md)."""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from beeflow.limits import Interval

HTTP_LOGGER: Final = "beeflow.http"
MESSAGE: Final = "request from %s refused by the HTTP parser (%s, HTTP %s)"
# Like the AppAPI warnings: a flood of bad requests is one line a minute, saying how many.
INTERVAL_SECONDS: Final = 60.0


def _exception(exc_info: object) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        value = exc_info[1]
        return value if isinstance(value, BaseException) else None
    return None


class ParserLog(logging.LoggerAdapter[logging.Logger]):
    """What aiohttp's RequestHandler logs through (make_app passes one per app in its
    handler_args). aiohttp logs every request head its parser refuses at ERROR with a traceback,
    and the exception's message quotes the offending line: a user's Cookie or Basic credentials,
    an AppAPI token. Such a call becomes one line naming the error class (WARNING for a line
    over the size limit, which real clients hit with huge cookies; INFO otherwise; aiohttp's own
    DEBUG stays DEBUG), at most once per `interval` seconds; the next line says how many were
    left out. Every other call passes unchanged."""

    def __init__(self, logger: logging.Logger, *, interval: float = INTERVAL_SECONDS) -> None:
        super().__init__(logger, {})
        self._interval = Interval(interval)
        self.left_out = 0

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = _exception(kwargs.get("exc_info"))
        if not isinstance(exc, HttpProcessingError):
            super().log(level, msg, *args, **kwargs)
            return
        wanted = logging.WARNING if isinstance(exc, LineTooLong) else logging.INFO
        level = min(level, wanted)
        if not self.logger.isEnabledFor(level):
            return
        if not self._interval.ready():
            self.left_out += 1
            return
        remote = args[0] if args else "?"
        line, values = MESSAGE, [remote, type(exc).__name__, exc.code]
        if self.left_out:
            line += "; %d more refused since the last such line"
            values.append(self.left_out)
            self.left_out = 0
        self.logger.log(level, line, *values)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return msg, kwargs


def http_logger(*, interval: float = INTERVAL_SECONDS) -> ParserLog:
    """A fresh log for one app's HTTP server protocol (its own rate limit)."""
    return ParserLog(logging.getLogger(HTTP_LOGGER), interval=interval)
