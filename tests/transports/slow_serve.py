"""`python tests/transports/slow_serve.py serve ...`: the real CLI, plus one slow test route.

Shutdown tests need a request that stays in flight; no production route does that on demand.
Everything else (transport, signals, drain, frpc) is the unmodified `beeflow.cli`."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiohttp import web

from beeflow import cli
from beeflow.app import make_app as real_make_app
from beeflow.config import Config
from beeflow.web.auth import Access, add_route
from beeflow.web.responses import json_response

log = logging.getLogger("slow_serve")


async def slow(request: web.Request) -> web.Response:
    seconds = float(request.query.get("seconds", "1"))
    tag = request.query.get("tag", "")
    log.warning("slow request %s started (%.2f s)", tag, seconds)
    await asyncio.sleep(seconds)
    log.warning("slow request %s finished", tag)
    return json_response({"slept": seconds, "tag": tag})


def make_app(config: Config, **kw: Any) -> web.Application:
    app = real_make_app(config, **kw)
    add_route(app, "GET", "/test/slow", slow, Access.PUBLIC)
    return app


vars(cli)["make_app"] = make_app  # the one test seam: an extra route

if __name__ == "__main__":
    sys.exit(cli.main())
