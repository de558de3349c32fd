"""`occ bee_flow:*` against the fake AppAPI: the four commands registered at /init as AppAPI 32's
occ_command API stores them, and each run the way ExAppOccService's built command runs it
(POST {"occ": {...}} to the execute handler, the body copied to occ's output): what it prints,
that it prints no secret, and what a bad call gets."""

from __future__ import annotations

import json
import sys

import pytest

from beeflow.integrations import occ_commands
from beeflow.nextcloud.occ import COMMANDS
from beeflow.tenant.state import TENANT, fingerprint
from beeflow.tenant.wiring import BOOTSTRAPPER
from tests.conftest import AutoFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.fakes.service_control import PROVISIONED_KEY
from tests.helpers import SECRET, TENANT_KEY, RunningConnector
from tests.nextcloud.helpers import settled
from tests.tenant.helpers import run_init


async def installed(conn: RunningConnector, nc: FakeNextcloud) -> None:
    await run_init(conn, nc)
    await settled(conn)


def no_secret(output: str) -> None:
    for secret in (SECRET, TENANT_KEY, PROVISIONED_KEY):
        assert secret not in output


async def test_init_registers_the_four_commands(
    connector: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    await installed(connector, fake_nc)
    commands = fake_nc.surfaces.occ_commands
    assert sorted(commands) == [
        "bee_flow:doctor",
        "bee_flow:rotate-key",
        "bee_flow:status",
        "bee_flow:sync-users",
    ]
    assert commands["bee_flow:status"]["execute_handler"] == "occ/status"
    assert [o["name"] for o in commands["bee_flow:rotate-key"]["options"]] == ["confirm"]
    assert all(c.description for c in COMMANDS)


async def test_status_prints_the_state_without_secrets(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud
) -> None:
    conn = await auto_connector()
    await installed(conn, fake_nc)
    code, output = await fake_nc.surfaces.run_occ("bee_flow:status")
    assert code == 0
    lines = output.splitlines()
    assert lines[0].startswith("Bee Flow connector ")
    assert f"key fingerprint {fingerprint(PROVISIONED_KEY)}" in output
    assert "Tenant:       ok" in output
    assert "Install:      done (progress 100)" in output
    assert "AppAPI calls: ok" in output
    assert f"Setup page:   {fake_nc.url}/index.php/apps/app_api/proxy/bee_flow/setup" in lines
    no_secret(output)
    code, output = await fake_nc.surfaces.run_occ("bee_flow:status", options={"json": True})
    report = json.loads(output)
    assert report["tenant"]["fingerprint"] == fingerprint(PROVISIONED_KEY)
    assert report["health"]["occCommands"]["bee_flow:doctor"] == "registered"
    no_secret(output)


async def test_sync_users_runs_the_reconciliation(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud
) -> None:
    conn = await auto_connector()
    await installed(conn, fake_nc)
    fake_nc.add_user("carol", email="carol@example.com")
    code, output = await fake_nc.surfaces.run_occ("bee_flow:sync-users")
    assert code == 0
    assert output.splitlines()[0] == "Reconciling Nextcloud's users and groups with Bee Flow..."
    assert "State:        ok" in output
    assert "usersSeen:    3" in output
    assert "eventsSent:   1" in output  # carol


async def test_rotate_key_asks_for_confirmation_then_rotates(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud
) -> None:
    conn = await auto_connector()
    await installed(conn, fake_nc)
    before = conn.app[TENANT].fingerprint
    code, output = await fake_nc.surfaces.run_occ("bee_flow:rotate-key")
    assert code == 0
    assert "Run it again with --confirm" in output
    assert "Nothing done." in output
    code, output = await fake_nc.surfaces.run_occ("bee_flow:rotate-key", options={"confirm": True})
    assert code == 0, output
    assert f"Rotating the tenant key (current fingerprint {before})..." in output
    assert f"Done: key fingerprint {conn.app[TENANT].fingerprint}." in output
    no_secret(output)


async def test_rotate_key_refuses_a_key_from_the_environment(
    connector: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    await installed(connector, fake_nc)
    code, output = await fake_nc.surfaces.run_occ("bee_flow:rotate-key", options={"confirm": True})
    assert code == 0
    assert "set by BEEFLOW_TENANT_KEY" in output
    assert connector.app[TENANT].key == TENANT_KEY


async def test_doctor_streams_its_report(
    connector: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    await installed(connector, fake_nc)
    code, output = await fake_nc.surfaces.run_occ("bee_flow:doctor")
    assert code == 0
    # This process's environment is the test runner's, not a container's: doctor says so.
    assert output.startswith("beeflow doctor ")
    assert "FAIL" in output
    assert "config" in output
    assert "(doctor exit code 1: see the FAIL lines above)" in output
    no_secret(output)


@pytest.mark.parametrize(
    ("user", "path", "body", "status"),
    [
        (None, "/occ/status", {"occ": {}}, 401),
        ("alice", "/occ/status", {"occ": {}}, 403),
        ("", "/occ/nope", {"occ": {}}, 404),
        ("", "/occ/status", "not json", 400),
    ],
)
async def test_bad_calls(
    connector: RunningConnector, user: str | None, path: str, body: object, status: int
) -> None:
    kwargs = {"json": body} if not isinstance(body, str) else {"data": body}
    async with await connector.request("POST", path, user=user, **kwargs) as resp:
        assert resp.status == status
        assert "code" in await resp.json()


async def test_an_admin_may_run_status_directly(connector: RunningConnector) -> None:
    async with await connector.request(
        "POST", "/occ/status", user="admin", json={"occ": {"arguments": None, "options": None}}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert (await resp.text()).startswith("Bee Flow connector ")


async def test_doctor_that_crashes_or_hangs_is_reported(
    connector: RunningConnector, fake_nc: FakeNextcloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    await installed(connector, fake_nc)
    crash = (
        "import sys; print('half a report'); sys.stderr.write('Traceback: boom\\n'); sys.exit(3)"
    )
    monkeypatch.setattr(occ_commands, "DOCTOR", [sys.executable, "-c", crash])
    code, output = await fake_nc.surfaces.run_occ("bee_flow:doctor")
    assert code == 0
    assert output.splitlines() == [
        "half a report",
        "doctor ended with exit code 3:",
        "  Traceback: boom",
    ]
    monkeypatch.setattr(
        occ_commands, "DOCTOR", [sys.executable, "-c", "import time; time.sleep(30)"]
    )
    monkeypatch.setattr(occ_commands, "DOCTOR_TIMEOUT", 0.5)
    code, output = await fake_nc.surfaces.run_occ("bee_flow:doctor", options={"json": True})
    assert output.splitlines()[0] == "doctor did not finish within 0.5 s"


async def test_rotate_key_while_busy_and_when_it_fails(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, service: FakeService
) -> None:
    conn = await auto_connector()
    await installed(conn, fake_nc)
    boot = conn.app[BOOTSTRAPPER]
    async with boot.lock:
        _, output = await fake_nc.surfaces.run_occ("bee_flow:rotate-key", options={"confirm": True})
    assert "A provisioning is running" in output
    before = conn.app[TENANT].key
    service.control.fault = (500, {"error": "Internal server error"})
    _, output = await fake_nc.surfaces.run_occ("bee_flow:rotate-key", options={"confirm": True})
    assert "FAILED: " in output
    assert "Fix: " in output
    assert output.rstrip().endswith("The previous key stays in use.")
    assert conn.app[TENANT].key == before
    no_secret(output)


async def test_status_names_the_last_error_and_its_fix(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, service: FakeService
) -> None:
    service.control.provisioning = "pairing_only"
    conn = await auto_connector(slow_retries=True)  # no second attempt during the test
    await installed(conn, fake_nc)
    _, output = await fake_nc.surfaces.run_occ("bee_flow:status")
    assert "Tenant:       failed" in output
    assert "Last error:   " in output
    assert "Fix:          " in output
    assert "pairing" in output.lower()
