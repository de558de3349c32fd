"""Studio app menus: the service's published Studio apps as Nextcloud top-menu entries, one per
app, reconciled against the service's signed listing (the routes that trigger it are in
studio_routes). A listing that fails never removes an entry; every registration is an upsert
and every removal takes "not found" as done, and the record of what was registered is merged
under a file lock, so two replicas may reconcile at once (docs/administration.md, "Studio app
menus")."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs

from beeflow import lease
from beeflow.config import Config
from beeflow.errors import NextcloudError
from beeflow.integrations import studio_assets as assets
from beeflow.nextcloud.client import NextcloudClient
from beeflow.service_client import SOURCE, ServiceClient
from beeflow.signing import SIG_HEADER, sign_outbound
from beeflow.storage import describe_os_error
from beeflow.tenant.state import TenantState
from beeflow.web.bodies import read_capped

log = logging.getLogger(__name__)

LIST_PATH: Final = "/api/nextcloud/studio-apps"
HOOK_PATH: Final = "/hooks/studio-menus"
TOP_MENU_PATH: Final = "/ocs/v1.php/apps/app_api/api/v1/ui/top-menu"
SCRIPT_PATH: Final = "/ocs/v1.php/apps/app_api/api/v1/ui/script"
STATE_FILE: Final = "studio-app-menus.json"
LIST_TIMEOUT: Final = 10.0
MAX_LISTING: Final = 1024 * 1024
MAX_APPS: Final = 50  # more is a top bar nobody can use; the rest waits for a slot


@attrs.frozen
class StudioApp:
    id: uuid.UUID
    display_name: str
    icon: str

    @property
    def name(self) -> str:
        return assets.entry_name(self.id)

    def record(self) -> dict[str, str]:
        return {"appId": str(self.id), "displayName": self.display_name, "icon": self.icon}


def parse_listing(data: Any) -> list[StudioApp]:
    """`{"apps": [{"id": <uuid>, "name", "icon"}, ...]}`, leniently: an entry without a valid
    UUID is skipped, a repeated id counts once, at most MAX_APPS."""
    apps = data.get("apps") if isinstance(data, dict) else None
    if not isinstance(apps, list):
        raise ValueError("no apps list")
    out: dict[uuid.UUID, StudioApp] = {}
    for item in apps:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        try:
            app_id = uuid.UUID(item["id"])
        except ValueError:
            continue
        raw_icon = item.get("icon")
        icon = raw_icon[:64] if isinstance(raw_icon, str) else ""
        out.setdefault(app_id, StudioApp(app_id, assets.display_name(item.get("name")), icon))
    if len(out) > MAX_APPS:
        log.warning(
            "the service lists %d Studio apps; the first %d get menu entries", len(out), MAX_APPS
        )
    return list(out.values())[:MAX_APPS]


@attrs.define
class Result:
    ok: bool = True
    added: int = 0
    removed: int = 0
    updated: int = 0
    skipped: str = ""  # unsupported | not_connected | nextcloud_paused
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "added": self.added,
            "removed": self.removed,
            "updated": self.updated,
        }
        if self.skipped:
            out["skipped"] = self.skipped
        if self.error:
            out["error"] = self.error
        return out


class Unsupported(Exception):
    """The service answered 404: its Studio apps module is off (or an older server)."""


class StudioMenus:
    """One reconciliation at a time in this process; callers that arrive during a run share the
    one run after it."""

    def __init__(
        self,
        config: Config,
        client: NextcloudClient,
        service: ServiceClient,
        tenant: TenantState,
    ) -> None:
        self.config = config
        self.client = client
        self.service = service
        self.tenant = tenant
        self.path: Path = config.persistent_storage / STATE_FILE
        self.entries: dict[str, dict[str, str]] = {}
        self.last = Result(ok=True, skipped="not_run")
        self.last_run_at: float | None = None
        self.runs = 0
        self._lock = asyncio.Lock()
        self._storage_warned = False
        self._asked = 0
        self._done = 0

    # ------------------------------------------------------------ state

    def load(self) -> dict[str, dict[str, str]]:
        """The entries this connector registered (shared by replicas), names checked; what is
        in memory when the storage cannot be read."""
        try:
            data = lease.read_json(self.path)
        except OSError as exc:
            self._storage_problem(exc)
            return self.entries
        raw = data.get("entries") if isinstance(data, dict) else None
        entries: dict[str, dict[str, str]] = {}
        if isinstance(raw, dict):
            for name, entry in raw.items():
                if assets.app_id_of(str(name)) is not None and isinstance(entry, dict):
                    entries[str(name)] = {k: str(v) for k, v in entry.items()}
        self.entries = entries
        return entries

    def _save(self, changes: dict[str, dict[str, str] | None]) -> None:
        """Merge this run's changes into the file under its lock (another replica's changes
        to other entries stay)."""

        def apply(current: Any) -> Any:
            entries = current.get("entries") if isinstance(current, dict) else None
            merged = dict(entries) if isinstance(entries, dict) else {}
            for name, entry in changes.items():
                if entry is None:
                    merged.pop(name, None)
                else:
                    merged[name] = entry
            return {"entries": merged}

        try:
            result = lease.update_json(self.path, apply)
        except OSError as exc:
            self._storage_problem(exc)
            self.entries = apply({"entries": self.entries})["entries"]
            return
        self.entries = dict(result["entries"])

    def _storage_problem(self, exc: OSError) -> None:
        if not self._storage_warned:
            self._storage_warned = True
            log.warning(
                "%s cannot be used (%s): the Studio menu entries are remembered in memory only",
                STATE_FILE,
                describe_os_error(exc),
            )

    # ------------------------------------------------------------ the listing

    async def fetch(self) -> list[StudioApp]:
        """GET the listing, signed like every connector -> service call (GET: empty body)."""
        key = self.tenant.key
        if not key:
            raise LookupError("not_connected")
        url = self.service.url(LIST_PATH)
        headers = {
            SIG_HEADER: sign_outbound(key, int(time.time()), "GET", url.raw_path_qs, ""),
            "X-Beeflow-Source": SOURCE,
            "X-Beeflow-NC-Instance-Id": self.tenant.instance_id or "",
            "Accept": "application/json",
        }
        try:
            async with self.service.session.get(
                url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=LIST_TIMEOUT),
                allow_redirects=False,
            ) as resp:
                if resp.status == 404:
                    raise Unsupported
                raw = await read_capped(resp, MAX_LISTING) if resp.status == 200 else b""
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RuntimeError(f"the service could not be reached ({type(exc).__name__})") from None
        if status != 200:
            raise RuntimeError(f"the service answered HTTP {status}")
        if raw is None:
            raise RuntimeError("the listing is too large")
        try:
            return parse_listing(json.loads(raw))
        except (ValueError, RecursionError):
            raise RuntimeError("the listing is not the expected JSON") from None

    # ------------------------------------------------------------ reconcile

    async def run(self, reason: str) -> Result:
        """Reconcile, or join the next run when one is in flight."""
        self._asked += 1
        wanted = self._asked
        async with self._lock:
            if self._done >= wanted:
                return self.last
            upto = self._asked
            try:
                self.last = await self._reconcile(reason)
            except Exception as exc:
                log.exception("Studio menu reconciliation crashed")
                self.last = Result(ok=False, error=type(exc).__name__)
            self._done = upto
            self.last_run_at = time.time()
            self.runs += 1
            return self.last

    async def _reconcile(self, reason: str) -> Result:
        if self.client.app_enabled is not True or self.client.budget.spent:
            return Result(ok=False, skipped="nextcloud_paused", error="Nextcloud calls are paused")
        try:
            apps = await self.fetch()
        except LookupError:
            return Result(ok=True, skipped="not_connected")
        except Unsupported:
            return Result(ok=True, skipped="unsupported")
        except RuntimeError as exc:
            log.warning("Studio app listing failed (%s): %s; menu entries kept", reason, exc)
            return Result(ok=False, error=str(exc))
        current = await asyncio.to_thread(self.load)
        desired = {app.name: app for app in apps}
        result = Result()
        changes: dict[str, dict[str, str] | None] = {}
        for name, app in desired.items():
            known = current.get(name)
            if known is not None and known.get("displayName") == app.display_name:
                if known.get("icon") != app.icon:  # same path: Nextcloud fetches it again
                    changes[name] = app.record()
                    result.updated += 1
                continue
            if await self._register(app):
                changes[name] = app.record()
                if known is None:
                    result.added += 1
                else:
                    result.updated += 1
            else:
                result.ok, result.error = False, "a registration failed"
        for name in set(current) - set(desired):
            if await self._unregister(name):
                changes[name] = None
                result.removed += 1
            else:
                result.ok, result.error = False, "a removal failed"
        if changes:
            await asyncio.to_thread(self._save, changes)
        if result.added or result.removed or result.updated:
            log.info(
                "Studio menus (%s): +%d -%d ~%d",
                reason,
                result.added,
                result.removed,
                result.updated,
            )
        return result

    async def _ocs(self, method: str, path: str, **kw: Any) -> bool:
        try:
            result = await self.client.ocs(method, path, timeout=5.0, **kw)
        except NextcloudError as exc:
            log.warning("%s %s failed: %s", method, path.rsplit("/", 1)[-1], exc)
            return False
        if method == "DELETE" and (result.http_status == 404 or result.statuscode == 404):
            return True  # already gone (another replica, or an admin)
        if not result.done:
            log.warning(
                "%s %s refused: HTTP %s OCS %s",
                method,
                path.rsplit("/", 1)[-1],
                result.http_status,
                result.statuscode,
            )
        return result.done

    async def _register(self, app: StudioApp) -> bool:
        """Top-menu entry then its script; both upserts on AppAPI 32 (insertOrUpdate)."""
        menu = {
            "name": app.name,
            "displayName": app.display_name,
            "icon": assets.icon_path(app.name),
            "adminRequired": 0,
        }
        script = {
            "type": "top_menu",
            "name": app.name,
            "path": assets.SCRIPT_PATH,
            "afterAppId": "",
        }
        return await self._ocs("POST", TOP_MENU_PATH, json_body=menu) and await self._ocs(
            "POST", SCRIPT_PATH, json_body=script
        )

    async def _unregister(self, name: str) -> bool:
        """The script first, then the entry (a script without its entry is never loaded)."""
        script = {"type": "top_menu", "name": name, "path": assets.SCRIPT_PATH}
        return await self._ocs("DELETE", SCRIPT_PATH, params=script) and await self._ocs(
            "DELETE", TOP_MENU_PATH, params={"name": name}
        )

    def health(self, trusted: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "entries": len(self.entries)}
        if trusted:
            out.update(self.last.to_json())
            if self.last_run_at is not None:
                out["lastRunAt"] = round(self.last_run_at, 3)
        return out

    @property
    def state(self) -> str:
        if self.last.skipped:
            return self.last.skipped
        return "ok" if self.last.ok else "failed"
