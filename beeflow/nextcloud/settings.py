"""The Administration -> Artificial Intelligence form (AppAPI declarative settings): its scheme,
its registration (an upsert, re-run whenever the status line changes), and the two config calls
that read the values an admin saved and write back the ones in force (docs/administration.md,
"Settings form")."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
from aiohttp import web

from beeflow.config import DEFAULT_API_BASE_URL
from beeflow.errors import NextcloudError
from beeflow.nextcloud import surface
from beeflow.nextcloud.client import NextcloudClient
from beeflow.phases import InitPhase

log = logging.getLogger(__name__)

FORM_PATH: Final = "/ocs/v1.php/apps/app_api/api/v1/ui/settings"
GET_VALUES_PATH: Final = "/ocs/v1.php/apps/app_api/api/v1/ex-app/config/get-values"
CONFIG_PATH: Final = "/ocs/v1.php/apps/app_api/api/v1/ex-app/config"
FORM_ID: Final = "beeflow_admin"
MODE_FIELD: Final = "deployment_mode"
URL_FIELD: Final = "api_base_url"
CLOUD: Final = "cloud"
SELF_HOSTED: Final = "self-hosted"
MODES: Final = (CLOUD, SELF_HOSTED)
WARMUP_SECONDS: Final = 60.0
# What AppAPI keeps per value is a text column; nothing an admin types needs more.
MAX_VALUE: Final = 2048
# The description is shown as one paragraph: long errors are cut, never the setup link.
MAX_STATUS: Final = 600


@attrs.frozen
class FormView:
    """What the form shows: the values in force, the status line, where the setup page is, and
    whether BEEFLOW_API_BASE_URL pins the URL (the form is then informational)."""

    mode: str
    url: str
    status: str
    setup_url: str
    locked: bool = False


@attrs.frozen
class Stored:
    """The values an admin saved through the form (None: never saved)."""

    mode: str | None
    url: str | None

    @property
    def explicit(self) -> bool:
        return self.mode is not None or self.url is not None


def mode_of(url: str) -> str:
    return CLOUD if url.rstrip("/") == DEFAULT_API_BASE_URL else SELF_HOSTED


def form_scheme(view: FormView) -> dict[str, Any]:
    """The declarative-settings scheme (Nextcloud's DeclarativeManager::validateSchema checks
    id, section_type, section_id, storage_type, title and every field's id, title and type)."""
    if view.locked:
        lock = (
            " BEEFLOW_API_BASE_URL is set in the app's environment: this form only shows it. "
            "Change it by re-registering the app with another --env BEEFLOW_API_BASE_URL."
        )
    else:
        lock = " Saving here re-connects within a minute; a failed change is rolled back."
    status = view.status[:MAX_STATUS]
    description = (
        f"Status: {status}.{lock} The setup page (pairing code, e-mail verification, key "
        f"rotation): {view.setup_url}"
    )
    return {
        "id": FORM_ID,
        "priority": 50,
        "section_type": "admin",
        "section_id": "ai",
        "storage_type": "external",
        "title": "Bee Flow",
        "description": description,
        "doc_url": view.setup_url,
        "fields": [
            {
                "id": MODE_FIELD,
                "title": "Deployment",
                "description": "Where the Bee Flow service runs.",
                "type": "radio",
                "default": view.mode,
                "options": [
                    {"name": f"Bee Flow Cloud ({DEFAULT_API_BASE_URL})", "value": CLOUD},
                    {"name": "Self-hosted Bee Flow server", "value": SELF_HOSTED},
                ],
            },
            {
                "id": URL_FIELD,
                "title": "Service URL (self-hosted)",
                "description": "The base URL of your own Bee Flow server; ignored for the Cloud.",
                "type": "url",
                "default": view.url if view.mode == SELF_HOSTED else "",
                "placeholder": "https://bee-flow.your-domain.com",
            },
        ],
    }


def _text(value: Any) -> str | None:
    """A stored value as text (AppAPI answers strings; anything else is not an admin's value)."""
    if isinstance(value, str):
        return value.strip()[:MAX_VALUE]
    return None


def parse_values(data: Any) -> Stored:
    """get-values' `[{configkey, configvalue}, ...]`, leniently: unknown keys and odd rows are
    skipped; an empty value counts as unsaved."""
    found: dict[str, str] = {}
    if isinstance(data, list):
        for row in data:
            if not isinstance(row, Mapping):
                continue
            key, value = row.get("configkey"), _text(row.get("configvalue"))
            if key in (MODE_FIELD, URL_FIELD) and value:
                found[str(key)] = value
    return Stored(found.get(MODE_FIELD), found.get(URL_FIELD))


class SettingsForm:
    """The form's calls to AppAPI. Every call is an upsert or a read, so two replicas running
    them at once end in the same state."""

    def __init__(self, client: NextcloudClient) -> None:
        self._client = client
        self.registered: dict[str, Any] | None = None  # the scheme AppAPI holds, as we sent it
        self.state = "idle"  # idle | registered | failed

    async def register(self, view: FormView, *, warmup: float = 0.0) -> bool:
        """POST ui/settings (AppAPI's SettingsService::registerForm is insertOrUpdate). Skipped
        when AppAPI already holds this exact scheme."""
        scheme = form_scheme(view)
        if scheme == self.registered:
            return True
        try:
            result = await self._client.ocs(
                "POST", FORM_PATH, json_body={"formScheme": scheme}, timeout=5.0, warmup=warmup
            )
        except NextcloudError as exc:
            self.state = "failed"
            log.warning("registering the settings form failed: %s", exc)
            return False
        if not result.done:
            self.state = "failed"
            log.warning(
                "registering the settings form failed: HTTP %s, OCS %s",
                result.http_status,
                result.statuscode,
            )
            return False
        self.registered, self.state = scheme, "registered"
        return True

    async def read(self) -> Stored | None:
        """The values an admin saved, or None when AppAPI could not be asked."""
        try:
            result = await self._client.ocs(
                "POST",
                GET_VALUES_PATH,
                json_body={"configKeys": [MODE_FIELD, URL_FIELD]},
                timeout=5.0,
            )
        except NextcloudError as exc:
            log.debug("reading the settings form failed: %s", exc)
            return None
        if not result.ok:
            log.debug("reading the settings form: HTTP %s", result.http_status)
            return None
        return parse_values(result.data)

    async def write(self, mode: str, url: str) -> bool:
        """Put the values in force back into the form (ex-app/config, not sensitive)."""
        ok = True
        for key, value in ((MODE_FIELD, mode), (URL_FIELD, url if mode == SELF_HOSTED else "")):
            try:
                result = await self._client.ocs(
                    "POST",
                    CONFIG_PATH,
                    json_body={"configKey": key, "configValue": value, "sensitive": 0},
                    timeout=5.0,
                )
            except NextcloudError as exc:
                log.debug("writing %s back failed: %s", key, exc)
                return False
            ok = ok and result.ok
        return ok

    def health(self, trusted: bool) -> dict[str, Any]:
        return {"form": self.state}


FORM: web.AppKey[SettingsForm] = web.AppKey("settings_form")


def install(app: web.Application, form: SettingsForm, view: Callable[[], FormView]) -> None:
    """The form under FORM and its registration at /init (progress 60). `view` is a callable
    giving the FormView in force (the setup feature knows it)."""
    app[FORM] = form

    async def run() -> None:
        if not await form.register(view(), warmup=WARMUP_SECONDS):
            raise RuntimeError("registering the settings form failed")

    surface.install(
        app,
        surface.Surface(
            name="settingsForm",
            phases=[InitPhase("settings-form", 60, run)],
            health=form.health,
            # AppAPI hides a disabled app's forms and deletes them on unregister.
            teardown=None,
        ),
    )
