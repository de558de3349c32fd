"""The Bee Flow service's half of the Studio app menus, for FakeService(extra_routes=...):

* `routes/nextcloudStudioApps.js` @e711789a: `GET /api/nextcloud/studio-apps`, mounted behind
  `requireModule('apps')` (a 404 `{"error": "Not found"}` while the module is off), then
  `verifyConnectorSig` (401 `{"error": "unauthorized"}`, no detail; the same check as
  connectorSig.js: ServiceControl.check_signature), then `{"apps": [{id, name, description,
  icon, accentColor, updatedAt, publishedAt}]}` of the org's published, menu-opted-in apps. The
  query string is ignored (it is signed as part of originalUrl).
* `appStudio/nextcloudMenuSync.js` @e711789a: `push()` POSTs `{callback}/hooks/studio-menus`
  with `{reason, studioAppId, sentAt}`, signed by ncSigning.js's signedConnectorHeaders with
  ncUid '' (v2 over the path HOOK_PATH, not the callback's own), 6 s timeout; the answer's
  outcome: synced (200 with ok:true), unsupported (404), unauthorized (401/403/429),
  unreachable (else).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import attrs
from aiohttp import web

from tests.fakes.service_control import ServiceControl, nc_signature

HOOK_PATH = "/hooks/studio-menus"


@attrs.define
class StudioApp:
    id: str
    name: str
    icon: str | None = "Sparkles"
    description: str = ""

    def wire(self) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat()
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "icon": self.icon,
            "accentColor": None,
            "updatedAt": now,
            "publishedAt": now,
        }


@attrs.define
class StudioService:
    control: ServiceControl
    apps: list[StudioApp] = attrs.field(factory=list)
    module_on: bool = True
    fault: int | None = None  # answer this status instead (fault injection, not a branch)
    listings: list[str] = attrs.field(factory=list)  # the outcome of each listing request

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/nextcloud/studio-apps", self._list)]

    async def _list(self, request: web.Request) -> web.Response:
        if not self.module_on:
            self.listings.append("module_off")
            return web.json_response({"error": "Not found"}, status=404)
        if self.fault is not None:
            self.listings.append(f"fault_{self.fault}")
            return web.json_response({"error": "Failed to list apps"}, status=self.fault)
        problem = self.control.check_signature(request, b"")
        if problem:
            self.listings.append("refused_" + problem)
            return web.json_response({"error": "unauthorized"}, status=401)
        self.listings.append("ok")
        return web.json_response({"apps": [a.wire() for a in self.apps]})

    async def push(
        self, callback: str, key: str, *, reason: str = "publish", app_id: str | None = None
    ) -> tuple[str, Any]:
        """One push: (outcome, answer body)."""
        body = json.dumps(
            {"reason": reason, "studioAppId": app_id, "sentAt": datetime.now(UTC).isoformat()}
        ).encode()
        headers = {
            "X-Beeflow-Sig": nc_signature(key, int(time.time()), "POST", HOOK_PATH, "", body),
            "X-Beeflow-NC-Uid": "",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    callback.rstrip("/") + HOOK_PATH,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=6),
                ) as resp,
            ):
                status = resp.status
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            return "unreachable", type(exc).__name__
        if status == 404:
            return "unsupported", data
        if status in (401, 403, 429):
            return "unauthorized", data
        if status != 200 or not isinstance(data, dict) or data.get("ok") is not True:
            return "unreachable", data
        return "synced", data
