"""`occ bee_flow:*`: the commands registered with AppAPI's occ_command API at /init. AppAPI's
command posts `{"occ": {"arguments", "options"}}` to the execute handler (no timeout) and copies
the answer's body to occ's output; an answer other than 200 prints only "[name] command
executeHandler failed" and exits 1 (ExAppOccService::buildCommand, AppAPI 32.0.0)
(docs/administration.md, "occ commands")."""

from __future__ import annotations

from typing import Any, Final

import attrs
from aiohttp import web

from beeflow.nextcloud import surface
from beeflow.nextcloud.client import NextcloudClient
from beeflow.phases import InitPhase

OCC_PATH: Final = "/ocs/v1.php/apps/app_api/api/v1/occ_command"
HANDLER_PREFIX: Final = "occ/"
WARMUP_SECONDS: Final = 20.0


@attrs.frozen
class Command:
    name: str  # without the app id
    description: str
    options: tuple[dict[str, Any], ...] = ()
    usages: tuple[str, ...] = ()

    def body(self, app_id: str) -> dict[str, Any]:
        return {
            "name": f"{app_id}:{self.name}",
            "description": self.description,
            "hidden": 0,
            "arguments": [],
            "options": list(self.options),
            "usages": list(self.usages),
            "execute_handler": HANDLER_PREFIX + self.name,
        }


def _flag(name: str, description: str) -> dict[str, Any]:
    """An option without a value (Symfony's VALUE_NONE: AppAPI's mode "none")."""
    return {"name": name, "shortcut": None, "mode": "none", "description": description}


COMMANDS: Final = (
    Command(
        "status",
        "Show the Bee Flow connector's state: service, tenant, registrations",
        (_flag("json", "print one JSON object"),),
    ),
    Command("sync-users", "Reconcile Nextcloud's users and groups with Bee Flow now"),
    Command(
        "rotate-key",
        "Provision a new Bee Flow tenant key (the setup page's key rotation)",
        (_flag("confirm", "do it (without it, only say what would happen)"),),
        ("--confirm",),
    ),
    Command(
        "doctor",
        "Check the Bee Flow connector's installation end to end and say what to fix",
        (_flag("json", "print one JSON object"),),
    ),
)
NAMES: Final = frozenset(c.name for c in COMMANDS)


def setup(app: web.Application, client: NextcloudClient, app_id: str) -> surface.Registrations:
    """The four registrations at /init (progress 60); each is an upsert in AppAPI
    (insertOrUpdate by app and name). The handlers are a feature's (integrations.occ)."""
    status = surface.Registrations()

    def phase(command: Command) -> InitPhase:
        run = surface.register_item(
            lambda: client,
            status,
            f"{app_id}:{command.name}",
            OCC_PATH,
            command.body(app_id),
            warmup=WARMUP_SECONDS,
        )
        return InitPhase(f"occ-{command.name}", 60, run)

    surface.install(
        app,
        surface.Surface(
            name="occCommands",
            phases=[phase(c) for c in COMMANDS],
            health=status.health,
            # AppAPI lists only enabled apps' commands and deletes them on unregister.
            teardown=None,
        ),
    )
    return status
