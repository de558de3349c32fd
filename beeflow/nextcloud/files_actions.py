"""The Files right-click entries (AppAPI files-actions-menu, v2 so the handler may answer a
redirect), registered at /init; entries a development build left behind are deleted with the
v1 DELETE (there is no v2 one) (docs/administration.md, "Files actions")."""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web

from beeflow.errors import NextcloudError
from beeflow.nextcloud import surface
from beeflow.nextcloud.client import NextcloudClient
from beeflow.phases import InitPhase

log = logging.getLogger(__name__)

REGISTER_PATH: Final = "/ocs/v2.php/apps/app_api/api/v2/ui/files-actions-menu"
UNREGISTER_PATH: Final = "/ocs/v2.php/apps/app_api/api/v1/ui/files-actions-menu"
HANDLER_PREFIX: Final = "files-action/"
WARMUP_SECONDS: Final = 20.0
# AppAPI's Files plugin shows an entry when the node's MIME type CONTAINS one of the entry's
# comma-separated `mime` parts (js/app_api-filesplugin.js, 32.0.0; the same in the 35 branch):
# "file" would match almost nothing. Every file's type has one of these IANA top-level types;
# folders ("httpd/unix-directory") have none. "text" also matches OpenDocument text.
ANY_FILE: Final = "application/,audio/,font/,image/,message/,model/,multipart/,text/,video/"
TEXT: Final = "text"

# name -> (label, handler kind, mime, order). `permissions` 1 = read (the browser does not check
# it in AppAPI 32; the service reads the file as the user anyway).
ENTRIES: Final = {
    "beeflow_ask": ("Ask Bee Flow about this", "ask", ANY_FILE, 10),
    "beeflow_summarise": ("Summarise with Bee Flow", "summarise", TEXT, 11),
}
KINDS: Final = frozenset(kind for _, kind, _, _ in ENTRIES.values())
# Left by development builds of the reference connector (its automation entry was withdrawn
# before release under these names).
RETIRED: Final = ("beeflow_routine", "beeflow_automation", "beeflow_app_button")


def entry_body(name: str) -> dict[str, Any]:
    label, kind, mime, order = ENTRIES[name]
    return {
        "name": name,
        "displayName": label,
        "actionHandler": HANDLER_PREFIX + kind,
        "icon": "img/app.svg",
        "mime": mime,
        "permissions": 1,
        "order": order,
    }


class FilesActions:
    """Registers the entries (an upsert in AppAPI: insertOrUpdate by app and name) and removes
    the retired ones (404 is fine: nothing to remove). Safe to run from two replicas at once."""

    def __init__(self, client: NextcloudClient) -> None:
        self._client = client
        self.status = surface.Registrations()

    async def register(self) -> None:
        failed: list[str] = []
        for name in ENTRIES:
            run = surface.register_item(
                lambda: self._client,
                self.status,
                name,
                REGISTER_PATH,
                entry_body(name),
                warmup=WARMUP_SECONDS,
            )
            try:
                await run()
            except RuntimeError as exc:
                failed.append(str(exc))
        await self.remove_retired()
        if failed:
            raise RuntimeError("; ".join(failed))

    async def remove_retired(self) -> None:
        for name in RETIRED:
            try:
                # DELETE takes its parameters in the query (contract 6: GET/DELETE).
                result = await self._client.ocs(
                    "DELETE", UNREGISTER_PATH, params={"name": name}, timeout=5.0
                )
            except NextcloudError as exc:
                log.debug("removing the retired Files action %s failed: %s", name, exc)
                continue
            if result.ok:
                log.info("removed the retired Files action %s", name)

    def health(self, trusted: bool) -> dict[str, Any]:
        return self.status.health(trusted)


def setup(app: web.Application, client: NextcloudClient) -> FilesActions:
    """The registration at /init (progress 60, beside the top menu)."""
    actions = FilesActions(client)
    surface.install(
        app,
        surface.Surface(
            name="filesActions",
            phases=[InitPhase("files-actions", 60, actions.register)],
            health=actions.health,
            # AppAPI hides a disabled app's entries and deletes them on unregister.
            teardown=None,
        ),
    )
    return actions
