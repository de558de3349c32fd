"""The access log: one line per request, written once its answer is sent, with the method, the
route family, the status, the duration, the bytes sent (headers included) and AppAPI's request
id. Never the path as sent, its query, a file name, a user or any other header: the route family
is the matched route's pattern (`/nc/*`, `/setup/status`) and, for the service's catch-all, at
most its first path segment when that is a plain lowercase word (`/api/*`).

Logger `beeflow.access`, at INFO with BEEFLOW_ACCESS_LOG=1, else at DEBUG (shown with
`--log-level debug`); with BEEFLOW_LOG_FORMAT=json each line carries the fields as JSON.
aiohttp calls AccessLogger for every answer a handler gave, through the app's handler arguments
(`handler_args`), whichever runner serves the app. A request whose client went away before its
answer ended (a closed chat stream) never reaches that hook: the middleware logs it, with
nginx's status 499 and no byte count."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, ClassVar, Final

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from beeflow.config import CONFIG, Config
from beeflow.web.responses import Handler

LOGGER: Final = "beeflow.access"
# The attribute JSON lines read the fields from (cli.JsonFormatter).
FIELDS_ATTR: Final = "access"
_VARIABLE: Final = re.compile(r"\{[^}]*\}")
# A first path segment shown for the catch-all: a short lowercase word (`api`, `ai`, `agents`),
# never something that looks like a file, an id or a name with capitals or digits.
_WORD: Final = re.compile(r"^[a-z][a-z-]{0,23}$")
# AppAPI's request id (Nextcloud's 20-character ids, `CLI`); anything else is not logged.
_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def route_family(request: web.BaseRequest) -> str:
    """The matched route's pattern with its variables as `*`; `-` when nothing matched (a
    request the parser refused never reached the router: its `match_info` property would
    raise, so the attribute behind it is read)."""
    match_info = getattr(request, "_match_info", None)
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return "-"
    pattern = _VARIABLE.sub("*", resource.canonical)
    if pattern == "/*":
        first = request.path.lstrip("/").split("/", 1)[0]
        return f"/{first}/*" if _WORD.match(first) else "/*"
    return pattern


def request_id(request: web.BaseRequest) -> str | None:
    value = request.headers.get("AA-REQUEST-ID", "")
    return value if _REQUEST_ID.match(value) else None


def fields(
    request: web.BaseRequest, status: int, seconds: float, sent: int | None
) -> dict[str, Any]:
    return {
        "method": request.method,
        "route": route_family(request),
        "status": status,
        "durationMs": round(seconds * 1000, 1),
        "bytes": sent,
        "requestId": request_id(request),
    }


class AccessLogger(AbstractAccessLogger):
    """aiohttp's hook, called after each answer is sent (its `time` is the request's duration).
    `level` is set per app by handler_args()."""

    level: ClassVar[int] = logging.DEBUG

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(self.level)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        _emit(self.level, fields(request, response.status, time, response.body_length))


CLIENT_GONE: Final = 499  # nginx's "client closed request"


def _emit(level: int, data: dict[str, Any]) -> None:
    bytes_sent = "-" if data["bytes"] is None else data["bytes"]
    logging.getLogger(LOGGER).log(
        level,
        "%s %s %s %.1fms %sB rid=%s",
        data["method"],
        data["route"],
        data["status"],
        data["durationMs"],
        bytes_sent,
        data["requestId"] or "-",
        extra={FIELDS_ATTR: data},
    )


_LEVEL: web.AppKey[int] = web.AppKey("access_log_level")


@web.middleware
async def client_gone(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one case aiohttp's hook misses: the handler cancelled because its client left."""
    started = asyncio.get_running_loop().time()
    try:
        return await handler(request)
    except asyncio.CancelledError:
        level = request.app[_LEVEL]
        if logging.getLogger(LOGGER).isEnabledFor(level):
            seconds = asyncio.get_running_loop().time() - started
            _emit(level, fields(request, CLIENT_GONE, seconds, None))
        raise


def install(app: web.Application) -> None:
    """The middleware for requests whose client left (outermost: it sees every cancellation).
    The level comes from the config, like handler_args()."""
    app[_LEVEL] = logging.INFO if app[CONFIG].access_log else logging.DEBUG
    app.middlewares.append(client_gone)


def handler_args(config: Config) -> dict[str, Any]:
    """What make_app adds to the app's handler arguments: our logger class at the configured
    level, and its logger (they override the runner's `access_log=None`)."""
    level = logging.INFO if config.access_log else logging.DEBUG
    logger_class = type("AccessLogger", (AccessLogger,), {"level": level})
    return {"access_log_class": logger_class, "access_log": logging.getLogger(LOGGER)}
