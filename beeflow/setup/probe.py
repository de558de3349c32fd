"""The picker's connectivity test: GET {url}/api/health, 5 s, redirects NOT followed. The
service answers `{status, timestamp, appVersion, otel}` (its index.js): `appVersion` is the
build (APP_BUILD_SHA, empty when the operator did not set one)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
from yarl import URL

from beeflow.setup.urlcheck import GuardedResolver

TIMEOUT: Final = 5.0
MAX_BODY: Final = 64 * 1024
HEALTH_PATH: Final = "/api/health"


async def probe_session() -> AsyncIterator[aiohttp.ClientSession]:
    """One small pool for probes. No cookies, no proxy env, no credentials of any kind: the URL
    is whatever an admin typed, so nothing of ours may be sent to it."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(), limit=4, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        headers={"User-Agent": "beeflow-connector setup probe", "Accept": "application/json"},
    ) as session:
        yield session


def _field(body: Any, name: str) -> str | None:
    if isinstance(body, dict):
        value = body.get(name)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)[:100]
    return None


async def probe(session: aiohttp.ClientSession, base: URL) -> dict[str, Any]:
    """Never raises for network trouble: the answer says what happened, with a stable code."""
    target = URL(str(base).rstrip("/") + HEALTH_PATH)
    out: dict[str, Any] = {"ok": False, "url": str(target), "status": None}
    started = time.monotonic()
    try:
        async with session.get(target, allow_redirects=False) as resp:
            out["status"] = resp.status
            raw = await resp.content.read(MAX_BODY)
            body: Any = None
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if 300 <= resp.status < 400:
                out["code"] = "redirect"
                out["error"] = (
                    f"The server answered with a redirect (HTTP {resp.status}); "
                    "enter the final URL instead"
                )
            elif resp.status >= 400:
                out["code"] = "unhealthy"
                out["error"] = f"The server answered HTTP {resp.status}"
            else:
                out["ok"] = True
            out["appVersion"] = _field(body, "appVersion")
    except TimeoutError:
        out["code"], out["error"] = "timeout", f"No answer within {TIMEOUT:g} s"
    except aiohttp.ClientConnectorError as exc:
        if "blocked address" in str(exc.os_error):
            out["code"] = "blocked_host"
            out["error"] = "That host resolves to a link-local or reserved address"
        else:
            out["code"], out["error"] = "unreachable", "Could not connect to the server"
    except aiohttp.InvalidURL:
        out["code"], out["error"] = "malformed_url", "The URL cannot be requested"
    except aiohttp.ClientError as exc:
        out["code"], out["error"] = "unreachable", f"Connection failed ({type(exc).__name__})"
    out["elapsedMs"] = round((time.monotonic() - started) * 1000)
    return out
