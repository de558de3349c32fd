"""The setup page itself: its HTML with a strict CSP, and its script (cached, revalidated)."""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Final

from aiohttp import web

from beeflow.config import CONFIG
from beeflow.setup.common import state_of
from beeflow.web.security_headers import frame_ancestors

SCRIPT_PATH: Final = "/js/beeflow-setup.js"


async def page(request: web.Request) -> web.Response:
    """The picker. Its script is referenced relative to the page's own URL (AppAPI serves the
    page under its proxy prefix), with one `../` more when AppAPI delivered it as `setup/`."""
    prefix = "../" if request.path.endswith("/") else ""
    html = state_of(request).page.replace("{{SCRIPT}}", prefix + SCRIPT_PATH.lstrip("/"))
    csp = (
        frame_ancestors(request.app[CONFIG]) + "; default-src 'none'; script-src 'self'; "
        "style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'"
    )
    return web.Response(
        text=html,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store", "Content-Security-Policy": csp},
    )


async def script(request: web.Request) -> web.Response:
    state = state_of(request)
    headers = {
        "Content-Type": "text/javascript; charset=utf-8",
        "Cache-Control": "no-cache",
        "ETag": state.script_etag,
    }
    if state.script_etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=state.script, headers=headers)


def read(name: str) -> bytes:
    """A file shipped beside this module (page.html, setup.js)."""
    return resources.files("beeflow.setup").joinpath(name).read_bytes()


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
