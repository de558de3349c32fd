"""The connector's JSON answers: every dynamic answer and every error goes out through here."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from beeflow.errors import BeeflowError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Exact `application/json`, never cached (docs/appapi-wire.md, "Answers")."""
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
