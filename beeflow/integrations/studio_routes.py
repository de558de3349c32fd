"""The Studio menus' routes: the service's push `POST /hooks/studio-menus` (the v2 signature is
its authentication; always answered 200, a 5xx would count towards HaRP's ban list), the entry
icons and the embed script Nextcloud loads for an entry's page, and the wiring: the run after
/init and the poll (docs/administration.md, "Studio app menus")."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Final

import attrs
from aiohttp import web

from beeflow.config import CONFIG
from beeflow.health import provide
from beeflow.integrations import studio_assets as assets
from beeflow.integrations.studio import HOOK_PATH, StudioMenus
from beeflow.limits import RateLimiter
from beeflow.phases import InitPhase, add_phase
from beeflow.signing import SIG_HEADER, UID_HEADER, SigFormatError, nc_message_v2, parse_sig_header
from beeflow.tasks import spawn
from beeflow.tenant.state import TenantState
from beeflow.web.auth import Access, add_route
from beeflow.web.bodies import read_capped
from beeflow.web.responses import json_response

log = logging.getLogger(__name__)

MAX_HOOK_BODY: Final = 64 * 1024
HOOK_WAIT: Final = 5.0  # the service gives up after 6 s
HOOK_FAILURES: Final = (60, 60.0)  # refused pushes per minute before every push is refused
SEEN_MAX: Final = 1024


@attrs.define
class PushGuard:
    """Checks a push like an /nc v2 call: the tenant key's HMAC over
    "{ts}\\nPOST\\n/hooks/studio-menus\\n{uid}\\n{sha256(body)}" within the clock skew; a
    signature already used is not run again; refusals are rate-limited."""

    tenant: TenantState
    skew: float
    limiter: RateLimiter = attrs.field(factory=lambda: RateLimiter(*HOOK_FAILURES))
    seen: dict[bytes, float] = attrs.field(factory=dict)

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        """'' when the push may run; else why (never naming an expected value)."""
        key = self.tenant.key
        if not key:
            return "not_connected"
        try:
            sig = parse_sig_header(headers.get(SIG_HEADER, ""))
        except SigFormatError as exc:
            return exc.code
        now = time.time()
        if abs(now - sig.ts) > self.skew:
            return "signature_expired"
        digest = hashlib.sha256(body).hexdigest()
        message = nc_message_v2(sig.ts_text, "POST", HOOK_PATH, headers.get(UID_HEADER, ""), digest)
        mac = hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).digest()
        if not hmac.compare_digest(mac, sig.mac):
            return "signature_invalid"
        self.seen = {m: t for m, t in self.seen.items() if now - t <= 2 * self.skew}
        if sig.mac in self.seen:
            return "replayed"
        if len(self.seen) >= SEEN_MAX:
            return "busy"
        self.seen[sig.mac] = now
        return ""


STUDIO: web.AppKey[StudioMenus] = web.AppKey("studio_menus")
_GUARD: web.AppKey[PushGuard] = web.AppKey("studio_push_guard")
_SCRIPT: web.AppKey[bytes] = web.AppKey("studio_embed_script")


async def hook(request: web.Request) -> web.Response:
    """{ok, added, removed, updated} once the reconciliation ran, or {ok: false, error}."""
    menus, guard = request.app[STUDIO], request.app[_GUARD]
    if guard.limiter.blocked("hook"):
        return json_response({"ok": False, "error": "rate_limited"})
    raw = await read_capped(request, MAX_HOOK_BODY)
    if raw is None:
        guard.limiter.hit("hook")
        return json_response({"ok": False, "error": "body_too_large"})
    problem = guard.verify(request.headers, raw)
    if problem == "replayed":
        return json_response(
            {"ok": True, "added": 0, "removed": 0, "updated": 0, "skipped": problem}
        )
    if problem:
        guard.limiter.hit("hook")
        log.info("Studio menu push refused: %s", problem)
        return json_response({"ok": False, "error": problem})
    reason = "push"
    with contextlib.suppress(ValueError, RecursionError):
        body = json.loads(raw or b"{}")
        if isinstance(body, dict) and isinstance(body.get("reason"), str):
            reason += ": " + "".join(c for c in body["reason"][:40] if c.isprintable())
    task = spawn(menus.run(reason), name="studio-menus-push")
    try:
        result = await asyncio.wait_for(asyncio.shield(task), HOOK_WAIT)
    except TimeoutError:
        return json_response({"ok": False, "error": "still_reconciling"})
    return json_response(result.to_json())


async def icon(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    menus = request.app[STUDIO]
    entry = menus.entries.get(name)
    if entry is None:
        entry = (await asyncio.to_thread(menus.load)).get(name)  # another replica's entry
    if entry is None:
        return json_response({"code": "not_found", "error": "No such menu icon"}, status=404)
    return web.Response(
        body=assets.letter_tile(entry.get("displayName", "")),
        content_type="image/svg+xml",
        headers={
            "Cache-Control": assets.ICON_CACHE,
            "Content-Security-Policy": "default-src 'none'",
        },
    )


async def embed_app(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[_SCRIPT],
        content_type="text/javascript",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


async def _loop(menus: StudioMenus, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await menus.run("poll")


async def _after_init(menus: StudioMenus) -> None:
    # In the background: the listing may take its 10 s, and AppAPI waits for progress 100.
    spawn(menus.run("init"), name="studio-menus-init")


def install(app: web.Application, menus: StudioMenus) -> None:
    """The push hook (PUBLIC: the signature is the authentication), the icons and the embed
    script (PUBLIC: Nextcloud loads them for the page), the run after /init, the poll."""
    config = app[CONFIG]
    app[STUDIO] = menus
    app[_GUARD] = PushGuard(menus.tenant, float(config.sig_skew_seconds))
    app[_SCRIPT] = assets.embed_app_script(config)
    add_route(app, "POST", HOOK_PATH, hook, Access.PUBLIC)
    add_route(app, "GET", "/img/studio-app/{name:sa_[a-z2-7]{26}}.svg", icon, Access.PUBLIC)
    for path in ("/js/embed-app", "/js/embed-app.js"):
        add_route(app, "GET", path, embed_app, Access.PUBLIC)
    add_phase(app, InitPhase("studio-menus", 100, lambda: _after_init(menus)))
    provide(app, "studioMenus", menus.health)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await asyncio.to_thread(menus.load)
        task = spawn(_loop(menus, config.studio_menu_sync_seconds), name="studio-menus-poll")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(ctx)
