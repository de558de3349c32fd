"""What the connector asks webhook_listeners for, as data: the event classes and the Bee Flow
event each becomes, the delivery path, and the shared secret Nextcloud echoes on every delivery
(docs/automations.md, "Registration"). Pure: no I/O."""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

import attrs

# Relative: Nextcloud delivers it through AppAPI straight to the connector, with AppAPI's
# headers, on every transport (docs/automations.md, "Why a relative uri").
HOOK_PATH: Final = "/hooks/nextcloud"
SECRET_HEADER: Final = "X-Beeflow-Hook-Secret"  # noqa: S105 - a header name
EVENT_HEADER: Final = "X-Beeflow-Hook-Event"
INSTANCE_HEADER: Final = "X-Beeflow-NC-Instance-Id"
SECRET_LABEL: Final = b"beeflow:webhook-listener:v1"
# The Node connector registered `<Nextcloud>/index.php/apps/app_api/proxy/<app id>` + this.
LEGACY_PATH_SUFFIX: Final = "/hooks/nextcloud"


@attrs.frozen
class HookClass:
    """One PHP event class and the Bee Flow event a delivery of it becomes. `optional`: the
    class may be missing (its app is not installed, or this Nextcloud's version refuses it);
    a refusal then counts as skipped, not as a failure."""

    php_class: str
    event: str
    optional: bool = False


_NODE = "OCP\\Files\\Events\\Node\\"
_CAL = "OCP\\Calendar\\Events\\"

HOOK_CLASSES: Final = (
    HookClass(_NODE + "NodeCreatedEvent", "file.new"),
    HookClass(_NODE + "NodeWrittenEvent", "file.changed"),
    HookClass(_NODE + "NodeDeletedEvent", "file.deleted"),
    HookClass(_NODE + "NodeRenamedEvent", "file.renamed"),
    HookClass(_NODE + "NodeCopiedEvent", "file.copied"),
    # Does not exist on Nextcloud 32.0.1 (refused as not webhook-compatible).
    HookClass(_NODE + "NodeRestoredEvent", "file.restored", optional=True),
    HookClass("OCP\\SystemTag\\TagAssignedEvent", "file.tagged"),
    HookClass("OCP\\SystemTag\\TagUnassignedEvent", "file.untagged"),
    HookClass(_CAL + "CalendarObjectCreatedEvent", "calendar.event.created"),
    HookClass(_CAL + "CalendarObjectUpdatedEvent", "calendar.event.changed"),
    HookClass(_CAL + "CalendarObjectDeletedEvent", "calendar.event.deleted"),
    HookClass(_CAL + "CalendarObjectMovedEvent", "calendar.event.moved"),
    HookClass("OCA\\Forms\\Events\\FormSubmittedEvent", "forms.submitted", optional=True),
    HookClass("OCA\\Tables\\Event\\RowAddedEvent", "tables.row.added", optional=True),
    HookClass("OCA\\Tables\\Event\\RowUpdatedEvent", "tables.row.updated", optional=True),
    HookClass("OCA\\Tables\\Event\\RowDeletedEvent", "tables.row.deleted", optional=True),
    HookClass("OCA\\Deck\\Event\\CardCreatedEvent", "deck.card.created", optional=True),
    HookClass("OCA\\Deck\\Event\\CardUpdatedEvent", "deck.card.changed", optional=True),
    HookClass("OCA\\Deck\\Event\\CardDeletedEvent", "deck.card.deleted", optional=True),
)
EVENT_BY_CLASS: Final = {c.php_class: c.event for c in HOOK_CLASSES}
CLASS_BY_EVENT: Final = {c.event: c for c in HOOK_CLASSES}


def normalise_class(name: str) -> str:
    """The class name as webhook_listeners stores it (it trims leading backslashes)."""
    return name.lstrip("\\")


def hook_secret(tenant_key: str) -> str:
    """hex HMAC-SHA256(tenant key, label): derived from the key, so it rotates with it, and of
    no use against `/nc` (which checks signatures made with the key itself)."""
    return hmac.new(tenant_key.encode("utf-8"), SECRET_LABEL, hashlib.sha256).hexdigest()


def registration_body(hook: HookClass, secret: str, instance_id: str) -> dict[str, object]:
    """The body of a create or an update, byte for byte the Node connector's. `tokenNeeded` is
    never sent: it would put a one-hour token of the acting user in every delivery."""
    return {
        "httpMethod": "POST",
        "uri": HOOK_PATH,
        "event": hook.php_class,
        "eventFilter": {},
        "userIdFilter": None,
        "headers": {EVENT_HEADER: hook.event, INSTANCE_HEADER: instance_id},
        "authMethod": "header",
        "authData": {SECRET_HEADER: secret},
    }
