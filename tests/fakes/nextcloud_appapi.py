"""AppAPI's registration surfaces for FakeNextcloud, written from AppAPI's source (32.0.0 as
bundled with Nextcloud 32.0.1, and the setup checks of the 35 development branch):
declarative settings and ExApp config values, Files actions v1/v2, occ commands, and setup
checks. Each handler follows its controller: parameters merged from the JSON body and the
query, insertOrUpdate where the service does it, OCS 404 where a lookup fails.

* `lib/Controller/OCSSettingsController.php`, `Service/UI/SettingsService.php`: registerForm
  stores the scheme as sent (storage_type forced to "external") and answers 200 whatever it
  holds; Nextcloud's DeclarativeManager::validateSchema decides later whether the form is shown
  (`declarative_forms()` applies it, like `GET /ocs/v2.php/settings/api/declarative/forms`).
* `Controller/AppConfigController.php`, `Service/ExAppConfigService.php`: get-values answers a
  row per key that exists; the admin's save lands there through SetValueListener
  (`admin_sets`).
* `Controller/OCSUiController.php`, `Service/UI/FilesActionsMenuService.php`: v1 and v2 POST
  (version 1.0 / 2.0), DELETE and GET under v1 only; action_handler and icon lose a leading "/".
* `Controller/OccCommandController.php`, `Service/ExAppOccService.php`: `run_occ` is the command
  buildCommand makes: POST {"occ": {"arguments", "options"}} to the execute handler, a non-200
  prints "[name] command executeHandler failed" and exits 1, else the body is the output.
* `Controller/SetupCheckController.php`, `Service/ExAppSetupCheckRefreshService.php` (35 dev,
  personality "35"): opt in/out; `refresh_setup_checks` probes GET /setup_checks with 5 s,
  requires a digits-only Content-Length <= 256 KiB, keeps at most 16 issues of status
  warning/error, validates link URLs and caps texts at 4096 characters. On 32 the route does
  not exist: OCS 998 (v1 in-band, v2 HTTP 404), as measured.
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import attrs
from aiohttp import web
from yarl import URL

if TYPE_CHECKING:
    from tests.fakes.nextcloud import FakeNextcloud

FIELD_TYPES: Final = frozenset(
    {
        "multi-select",
        "multi-checkbox",
        "radio",
        "select",
        "checkbox",
        "url",
        "email",
        "number",
        "tel",
        "text",
        "password",
    }
)
OPTION_TYPES: Final = frozenset({"multi-select", "multi-checkbox", "radio", "select"})
SETUP_CHECK_TIMEOUT: Final = 5.0
SETUP_CHECK_MAX_BYTES: Final = 262144
SETUP_CHECK_MAX_CHECKS: Final = 16
SETUP_CHECK_MAX_ENTRIES: Final = 1000
SETUP_CHECK_MAX_TEXT: Final = 4096
_UNSAFE_URL: Final = re.compile(r"[\x00-\x20\x7f\"'<>]")


def validate_schema(schema: Any) -> bool:
    """DeclarativeManager::validateSchema (Nextcloud 32.0.1) with validateField's options rule."""
    if not isinstance(schema, dict):
        return False
    for key in ("id", "section_type", "section_id", "storage_type", "title"):
        if key not in schema:
            return False
    if schema["section_type"] not in ("admin", "personal"):
        return False
    if schema["storage_type"] not in ("external", "internal"):
        return False
    fields = schema.get("fields")
    if not isinstance(fields, list):
        return False
    for field in fields:
        if not isinstance(field, dict) or not {"id", "title", "type"} <= field.keys():
            return False
        if field["type"] not in FIELD_TYPES:
            return False
        if field.get("sensitive") is True and field["type"] not in ("text", "password"):
            return False
        if field["type"] in OPTION_TYPES and "options" not in field:
            return False
    return True


@attrs.define
class SetupCheckIssue:
    severity: str
    text: str
    link_url: str
    link_label: str


@attrs.define
class AppApiSurfaces:
    """The surfaces' tables for one FakeNextcloud (personality decides setup checks)."""

    nc: FakeNextcloud
    forms: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    config: dict[str, str] = attrs.field(factory=dict)
    files_actions: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    occ_commands: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    setup_checks_opted_in: bool = False
    setup_check_issues: list[SetupCheckIssue] = attrs.field(factory=list)
    setup_check_probes: list[dict[str, Any]] = attrs.field(factory=list)
    # Nextcloud's own app config as provisioning_api shows it to an admin.
    app_config: dict[str, dict[str, str]] = attrs.field(factory=dict)

    @property
    def has_setup_checks(self) -> bool:
        return self.nc.personality == "35"

    def routes(self) -> list[web.RouteDef]:
        r: list[web.RouteDef] = []
        for v in ("v1", "v2"):
            api = f"/ocs/{v}.php/apps/app_api/api/v1"
            r += [
                web.post(f"{api}/ui/settings", self._form_add),
                web.delete(f"{api}/ui/settings", self._form_del),
                web.get(f"{api}/ui/settings", self._form_get),
                web.post(f"{api}/ex-app/config", self._config_set),
                web.post(f"{api}/ex-app/config/get-values", self._config_get),
                web.delete(f"{api}/ex-app/config", self._config_del),
                web.post(f"{api}/ui/files-actions-menu", self._files_action_v1),
                web.post(
                    f"/ocs/{v}.php/apps/app_api/api/v2/ui/files-actions-menu",
                    self._files_action_v2,
                ),
                web.delete(f"{api}/ui/files-actions-menu", self._files_action_del),
                web.get(f"{api}/ui/files-actions-menu", self._files_action_get),
                web.post(f"{api}/occ_command", self._occ_add),
                web.delete(f"{api}/occ_command", self._occ_del),
                web.get(f"{api}/occ_command", self._occ_get),
                web.post(f"{api}/setup_check", self._setup_check_in),
                web.delete(f"{api}/setup_check", self._setup_check_out),
            ]
            r.append(
                web.get(
                    f"/ocs/{v}.php/apps/provisioning_api/api/v1/config/apps/{{app}}/{{key}}",
                    self._app_config_get,
                )
            )
        return r

    async def _app_config_get(self, request: web.Request) -> web.Response:
        """provisioning_api AppConfigController::getValue: admins only (no NoAdminRequired),
        `{"data": value}`, the default ("") for a missing key."""
        if (denied := self.nc._require(request, admin=True)) is not None:
            return denied
        app, key = request.match_info["app"], request.match_info["key"]
        return self._ok(request, {"data": self.app_config.get(app, {}).get(key, "")})

    # ------------------------------------------------------------ helpers

    def _denied(self, request: web.Request) -> web.Response | None:
        return self.nc._require(request, login=False)

    def _params(self, request: web.Request) -> dict[str, Any]:
        from tests.fakes.nextcloud import _json

        return _json(request)

    def _ok(self, request: web.Request, data: Any = None) -> web.Response:
        return self.nc._ocs(request, data)

    def _fail(self, request: web.Request, code: int, message: str) -> web.Response:
        return self.nc._ocs(request, None, code, message)

    # ------------------------------------------------------------ declarative settings

    async def _form_add(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        scheme = self._params(request).get("formScheme")
        if not isinstance(scheme, dict) or "id" not in scheme:
            return self._fail(request, 400, "")
        self.forms[str(scheme["id"])] = {**scheme, "storage_type": "external"}
        return self._ok(request)

    async def _form_del(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        form_id = str(self._params(request).get("formId", ""))
        if self.forms.pop(form_id, None) is None:
            return self._fail(request, 404, "")
        return self._ok(request)

    async def _form_get(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        form = self.forms.get(str(self._params(request).get("formId", "")))
        if form is None:
            return self._fail(request, 404, "")
        return self._ok(request, form)

    def declarative_forms(self) -> list[dict[str, Any]]:
        """What `GET /ocs/v2.php/settings/api/declarative/forms` lists for an admin: the valid
        schemes, each field with its value (stored, else the default, as GetValueListener)."""
        out = []
        for scheme in self.forms.values():
            if not validate_schema(scheme):
                continue
            fields = []
            for field in scheme["fields"]:
                value = self.config.get(field["id"])
                if not value:
                    default = field.get("default", "")
                    value = default if isinstance(default, str) else json.dumps(default)
                fields.append({**field, "value": value})
            out.append({**scheme, "fields": fields, "app": self.nc.app_id})
        return out

    def admin_sets(self, field_id: str, value: str) -> None:
        """An admin saves one field (DeclarativeSettingsController::setValue -> SetValueListener
        -> ExAppConfigService::setAppConfigValue), for a field of a registered form."""
        for scheme in self.forms.values():
            if any(f.get("id") == field_id for f in scheme.get("fields", [])):
                self.config[field_id] = value
                return
        raise KeyError(field_id)

    async def _config_set(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        params = self._params(request)
        key = params.get("configKey")
        if not isinstance(key, str) or key == "":
            return self._fail(request, 400, "Config key cannot be empty")
        value = params.get("configValue", "")
        self.config[key] = value if isinstance(value, str) else json.dumps(value)
        return self._ok(request, {"appid": self.nc.app_id, "configkey": key})

    async def _config_get(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        keys = self._params(request).get("configKeys")
        if not isinstance(keys, list):
            return self._fail(request, 400, "")
        rows = [
            {"configkey": k, "configvalue": self.config[k]}
            for k in keys
            if isinstance(k, str) and k in self.config
        ]
        return self._ok(request, rows)

    async def _config_del(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        keys = self._params(request).get("configKeys")
        gone = [k for k in keys or [] if isinstance(k, str) and k in self.config]
        for key in gone:
            del self.config[key]
        if not gone:
            return self._fail(request, 404, "No appconfig_ex values deleted")
        return self._ok(request, len(gone))

    # ------------------------------------------------------------ Files actions

    async def _files_action(self, request: web.Request, version: str) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        p = self._params(request)
        if not all(isinstance(p.get(k), str) for k in ("name", "displayName", "actionHandler")):
            return self._fail(request, 400, "")
        try:
            permissions, order = int(p.get("permissions", 31)), int(p.get("order", 0))
        except (TypeError, ValueError):
            return self._fail(request, 400, "")
        self.files_actions[p["name"]] = {
            "appid": self.nc.app_id,
            "name": p["name"],
            "display_name": p["displayName"],
            "mime": str(p.get("mime", "file")),
            "permissions": str(permissions),
            "order": order,
            "icon": str(p.get("icon", "")).lstrip("/"),
            "action_handler": p["actionHandler"].lstrip("/"),
            "version": version,
        }
        return self._ok(request)

    async def _files_action_v1(self, request: web.Request) -> web.Response:
        return await self._files_action(request, "1.0")

    async def _files_action_v2(self, request: web.Request) -> web.Response:
        return await self._files_action(request, "2.0")

    async def _files_action_del(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        if self.files_actions.pop(str(self._params(request).get("name", "")), None) is None:
            return self._fail(request, 404, "FileActionMenu not found")
        return self._ok(request)

    async def _files_action_get(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        entry = self.files_actions.get(str(self._params(request).get("name", "")))
        if entry is None:
            return self._fail(request, 404, "FileActionMenu not found")
        return self._ok(request, entry)

    # ------------------------------------------------------------ occ commands

    async def _occ_add(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        p = self._params(request)
        if not all(isinstance(p.get(k), str) for k in ("name", "description", "execute_handler")):
            return self._fail(request, 400, "")
        self.occ_commands[p["name"]] = {
            "appid": self.nc.app_id,
            "name": p["name"],
            "description": p["description"],
            "hidden": int(p.get("hidden", 0) or 0),
            "arguments": list(p.get("arguments") or []),
            "options": list(p.get("options") or []),
            "usages": list(p.get("usages") or []),
            "execute_handler": p["execute_handler"].lstrip("/"),
        }
        return self._ok(request)

    async def _occ_del(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        if self.occ_commands.pop(str(self._params(request).get("name", "")), None) is None:
            return self._fail(request, 404, "")
        return self._ok(request)

    async def _occ_get(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        entry = self.occ_commands.get(str(self._params(request).get("name", "")))
        if entry is None:
            return self._fail(request, 404, "")
        return self._ok(request, entry)

    async def run_occ(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[int, str]:
        """`occ <name>` as AppAPI's built command runs it: (exit code, output)."""
        command = self.occ_commands[name]
        if command["arguments"]:
            args = {a["name"]: (arguments or {}).get(a["name"]) for a in command["arguments"]}
        else:
            args = None
        if command["options"]:
            opts = {o["name"]: (options or {}).get(o["name"]) for o in command["options"]}
        else:
            opts = None
        status, body = await self._call(
            "POST", "/" + command["execute_handler"], {"occ": {"arguments": args, "options": opts}}
        )
        if status != 200:
            return 1, f"[{name}] command executeHandler failed\n"
        return 0, body

    # ------------------------------------------------------------ setup checks (35 dev)

    async def _setup_check_in(self, request: web.Request) -> web.Response:
        if not self.has_setup_checks:
            return self._fail(request, 998, "Invalid query")
        if (denied := self._denied(request)) is not None:
            return denied
        self.setup_checks_opted_in = True
        return self._ok(request)

    async def _setup_check_out(self, request: web.Request) -> web.Response:
        if not self.has_setup_checks:
            return self._fail(request, 998, "Invalid query")
        if (denied := self._denied(request)) is not None:
            return denied
        self.setup_checks_opted_in = False
        self.setup_check_issues = []
        return self._ok(request)

    async def refresh_setup_checks(self) -> list[SetupCheckIssue]:
        """ExAppSetupCheckRefreshService::probe + parseResponse for this app."""
        if not self.setup_checks_opted_in:
            self.setup_check_issues = []
            return []
        started = time.monotonic()
        status, headers, raw = await self._probe_setup_checks()
        self.setup_check_probes.append(
            {"status": status, "seconds": time.monotonic() - started, "headers": headers}
        )
        issues = self._parse_setup_checks(status, headers, raw)
        self.setup_check_issues = issues
        return issues

    def _not_responding(self) -> list[SetupCheckIssue]:
        return [SetupCheckIssue("warning", "not responding", "", "")]

    def _parse_setup_checks(
        self, status: int, headers: dict[str, str], raw: bytes
    ) -> list[SetupCheckIssue]:
        if not 200 <= status < 300:
            return self._not_responding()
        length = headers.get("content-length", "")
        if not length.isascii() or not length.isdigit() or int(length) > SETUP_CHECK_MAX_BYTES:
            return self._not_responding()
        if len(raw) > SETUP_CHECK_MAX_BYTES:
            return self._not_responding()
        try:
            body = json.loads(raw)
        except ValueError:
            return self._not_responding()
        if not isinstance(body, dict | list):
            return self._not_responding()
        values = body.values() if isinstance(body, dict) else body
        issues: list[SetupCheckIssue] = []
        scanned = 0
        for result in values:
            if len(issues) >= SETUP_CHECK_MAX_CHECKS or scanned >= SETUP_CHECK_MAX_ENTRIES:
                break
            scanned += 1
            if not isinstance(result, dict):
                continue
            raw_status = result.get("status")
            severity = raw_status.strip().lower() if isinstance(raw_status, str) else ""
            if severity not in ("warning", "error"):
                continue
            text = result.get("text") if isinstance(result.get("text"), str) else ""
            link = result.get("link_url") if isinstance(result.get("link_url"), str) else ""
            label = result.get("link_label") if isinstance(result.get("link_label"), str) else ""
            issues.append(
                SetupCheckIssue(
                    severity,
                    (text or "reported a problem")[:SETUP_CHECK_MAX_TEXT],
                    _safe_url(link or ""),
                    (label or "")[:SETUP_CHECK_MAX_TEXT],
                )
            )
        return issues

    async def _probe_setup_checks(self) -> tuple[int, dict[str, str], bytes]:
        try:
            async with (
                aiohttp.ClientSession(auto_decompress=False) as session,
                session.get(
                    self._connector_url("/setup_checks"),
                    headers=self._headers(),
                    timeout=aiohttp.ClientTimeout(total=SETUP_CHECK_TIMEOUT),
                ) as resp,
            ):
                body = await resp.content.read(SETUP_CHECK_MAX_BYTES + 1)
                headers = {k.lower(): v for k, v in resp.headers.items()}
                return resp.status, headers, body
        except (aiohttp.ClientError, TimeoutError):
            return 0, {}, b""

    # ------------------------------------------------------------ calls to the connector

    def _connector_url(self, path: str) -> URL:
        if self.nc.connector_url is None:
            raise RuntimeError("no connector set")
        return URL(str(self.nc.connector_url) + path, encoded=True)

    def _headers(self) -> dict[str, str]:
        token = base64.b64encode(f":{self.nc.secret}".encode()).decode()
        return {
            "AA-VERSION": "32.0.0",
            "EX-APP-ID": self.nc.app_id,
            "EX-APP-VERSION": "1.0.0",
            "AUTHORIZATION-APP-API": token,
            "AA-REQUEST-ID": "CLI",
        }

    async def _call(self, method: str, path: str, body: Any) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                self._connector_url(path),
                json=body,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=None),
            ) as resp,
        ):
            return resp.status, await resp.text()


def _safe_url(url: str) -> str:
    if not re.match(r"https?://", url, re.I) or _UNSAFE_URL.search(url):
        return ""
    return url
