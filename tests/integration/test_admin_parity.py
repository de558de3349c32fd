"""One test body, two servers (the fake of tests/fakes/nextcloud_appapi.py and the real Nextcloud
32.0.1 with AppAPI 32.0.0), for the registration APIs the admin surfaces use: what the real one
answers is what the fake must answer. Probe entries get their own names and are removed."""

from __future__ import annotations

import secrets

from tests.integration.test_appapi_parity import Server, _call, _client, _statuscode, server

__all__ = ["server"]

API = "/ocs/v1.php/apps/app_api/api/v1"
API_V2 = "/ocs/v2.php/apps/app_api/api/v1"


async def test_a_settings_form_is_stored_as_sent_and_config_values_read_back(
    server: Server,
) -> None:
    form_id = f"it_{secrets.token_hex(3)}"
    key = f"it_value_{secrets.token_hex(3)}"
    headers = server.headers()
    scheme = {
        "id": form_id,
        "priority": 90,
        "section_type": "admin",
        "section_id": "ai",
        "storage_type": "internal",
        "title": "Probe",
        "fields": [{"id": key, "title": "Probe", "type": "text", "default": "d"}],
    }
    async with _client() as session:
        status, body = await _call(
            session,
            server,
            "POST",
            f"{API}/ui/settings",
            headers=headers,
            json_body={"formScheme": scheme},
        )
        assert (status, _statuscode(body)) == (200, 100)
        status, body = await _call(
            session,
            server,
            "GET",
            f"{API}/ui/settings",
            headers=headers,
            params={"formId": form_id},
        )
        assert body["ocs"]["data"]["storage_type"] == "external"  # forced by AppAPI
        assert body["ocs"]["data"]["fields"] == scheme["fields"]

        status, body = await _call(
            session,
            server,
            "POST",
            f"{API}/ex-app/config/get-values",
            headers=headers,
            json_body={"configKeys": [key]},
        )
        assert (_statuscode(body), body["ocs"]["data"]) == (100, [])
        status, body = await _call(
            session,
            server,
            "POST",
            f"{API}/ex-app/config",
            headers=headers,
            json_body={"configKey": key, "configValue": "self-hosted", "sensitive": 0},
        )
        assert _statuscode(body) == 100
        status, body = await _call(
            session,
            server,
            "POST",
            f"{API}/ex-app/config/get-values",
            headers=headers,
            json_body={"configKeys": [key, "it_missing"]},
        )
        assert body["ocs"]["data"] == [{"configkey": key, "configvalue": "self-hosted"}]
        status, body = await _call(
            session,
            server,
            "POST",
            f"{API}/ex-app/config",
            headers=headers,
            json_body={"configKey": "", "configValue": "x"},
        )
        assert _statuscode(body) == 400

        status, body = await _call(
            session,
            server,
            "DELETE",
            f"{API}/ex-app/config",
            headers=headers,
            json_body={"configKeys": [key]},
        )
        assert _statuscode(body) == 100
        status, body = await _call(
            session,
            server,
            "DELETE",
            f"{API}/ui/settings",
            headers=headers,
            params={"formId": form_id},
        )
        assert _statuscode(body) == 100
        status, body = await _call(
            session,
            server,
            "GET",
            f"{API}/ui/settings",
            headers=headers,
            params={"formId": form_id},
        )
        assert _statuscode(body) == 404


async def test_files_actions_v2_upsert_v1_delete(server: Server) -> None:
    name = f"it_{secrets.token_hex(3)}"
    headers = server.headers()
    path_v2 = "/ocs/v2.php/apps/app_api/api/v2/ui/files-actions-menu"
    async with _client() as session:
        for label in ("One", "Two"):
            entry = {
                "name": name,
                "displayName": label,
                "actionHandler": "/files-action/ask",
                "icon": "/img/app.svg",
                "mime": "text",
                "permissions": 1,
                "order": 11,
            }
            status, body = await _call(
                session, server, "POST", path_v2, headers=headers, json_body=entry
            )
            assert (status, _statuscode(body)) == (200, 200)
        status, body = await _call(
            session,
            server,
            "GET",
            f"{API_V2}/ui/files-actions-menu",
            headers=headers,
            params={"name": name},
        )
        data = body["ocs"]["data"]
        assert {k: data[k] for k in ("display_name", "action_handler", "icon", "version")} == {
            "display_name": "Two",
            "action_handler": "files-action/ask",
            "icon": "img/app.svg",
            "version": "2.0",
        }
        assert (data["permissions"], data["order"]) == ("1", 11)
        for expected in (200, 404):
            status, body = await _call(
                session,
                server,
                "DELETE",
                f"{API_V2}/ui/files-actions-menu",
                headers=headers,
                params={"name": name},
            )
            assert (status, _statuscode(body)) == (expected, expected)


async def test_occ_commands_upsert_and_lose_their_slash(server: Server) -> None:
    name = f"bee_flow:it-{secrets.token_hex(3)}"
    headers = server.headers()
    command = {
        "name": name,
        "description": "probe",
        "execute_handler": "/occ/status",
        "arguments": [],
        "options": [{"name": "json", "shortcut": None, "mode": "none", "description": "j"}],
        "usages": [],
    }
    async with _client() as session:
        for _ in range(2):
            status, body = await _call(
                session,
                server,
                "POST",
                f"{API}/occ_command",
                headers=headers,
                json_body=command,
            )
            assert (status, _statuscode(body)) == (200, 100)
        _, body = await _call(
            session, server, "GET", f"{API}/occ_command", headers=headers, params={"name": name}
        )
        data = body["ocs"]["data"]
        assert (data["execute_handler"], data["hidden"], data["options"]) == (
            "occ/status",
            0,
            command["options"],
        )
        _, body = await _call(
            session,
            server,
            "DELETE",
            f"{API}/occ_command",
            headers=headers,
            params={"name": name},
        )
        assert _statuscode(body) == 100


async def test_no_setup_checks_on_32_and_log_levels(server: Server) -> None:
    headers = server.headers()
    async with _client() as session:
        status, body = await _call(
            session, server, "POST", f"{API}/setup_check", headers=headers, json_body={}
        )
        assert (status, _statuscode(body)) == (200, 998)
        status, body = await _call(
            session, server, "POST", f"{API_V2}/setup_check", headers=headers, json_body={}
        )
        assert (status, _statuscode(body)) == (404, 998)
        status, body = await _call(
            session,
            server,
            "POST",
            f"{API}/log",
            headers=headers,
            json_body={"level": 2, "message": "parity probe"},
        )
        assert _statuscode(body) == 100
        status, body = await _call(
            session,
            server,
            "POST",
            f"{API}/log",
            headers=headers,
            json_body={"level": 7, "message": "parity probe"},
        )
        assert _statuscode(body) == 400
