"""The Administration form against the fake AppAPI (written from AppAPI 32.0.0's settings and
config controllers): registered at /init with a scheme Nextcloud accepts, an admin's change
applied with a re-bootstrap at the new service, a failing one rolled back, the env lock and a
refused URL written back, a setup page change shown in the form, and no call to Nextcloud before
the app is known or while the failure budget is paused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.nextcloud.settings import FORM_ID, form_scheme
from beeflow.service_client import SERVICE_URL
from beeflow.setup import store
from beeflow.setup.admin_form import ADMIN_FORM, STATE_FILE
from beeflow.setup.common import rebootstrap_of
from beeflow.tenant.state import TENANT
from tests.conftest import AutoFactory, ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.nextcloud_appapi import validate_schema
from tests.fakes.service import FakeService
from tests.fakes.service_control import PROVISIONED_KEY, ServiceControl
from tests.helpers import RunningConnector, wait_for
from tests.nextcloud.helpers import settled
from tests.tenant.helpers import heartbeat, run_init

KEY_B = "tk_service_b_00112233445566778899aabbccddeeff"
GET_VALUES = "/ocs/v1.php/apps/app_api/api/v1/ex-app/config/get-values"


@pytest.fixture
async def service_b() -> AsyncIterator[FakeService]:
    control = ServiceControl(verify_key=None)
    control.tenant_key = KEY_B
    async with FakeService(control=control) as svc:
        yield svc


@pytest.fixture
def unlocked(
    connector_factory: ConnectorFactory, storage: Path, service: FakeService
) -> AutoFactory:
    """A connector in auto mode whose service URL comes from the setup page's saved choice (not
    pinned by BEEFLOW_API_BASE_URL)."""

    async def start(**env: str) -> RunningConnector:
        store.save(storage, "self-hosted", str(service.url))
        return await connector_factory(BEEFLOW_TENANT_KEY="auto", **env)

    return start


def shown(fake_nc: FakeNextcloud) -> dict[str, str]:
    (form,) = fake_nc.surfaces.declarative_forms()
    return {f["id"]: f["value"] for f in form["fields"]}


async def test_init_registers_a_form_nextcloud_accepts(
    unlocked: AutoFactory, fake_nc: FakeNextcloud, storage: Path, service: FakeService
) -> None:
    conn = await unlocked()
    await run_init(conn, fake_nc)
    scheme = fake_nc.surfaces.forms[FORM_ID]
    assert validate_schema(scheme)
    assert (scheme["section_type"], scheme["section_id"], scheme["storage_type"]) == (
        "admin",
        "ai",
        "external",
    )
    setup = f"{fake_nc.url}/index.php/apps/app_api/proxy/bee_flow/setup"
    assert scheme["doc_url"] == setup
    assert setup in scheme["description"]
    assert shown(fake_nc) == {
        "deployment_mode": "self-hosted",
        "api_base_url": str(service.url).rstrip("/"),
    }
    # The first poll agrees with what is in force and writes nothing.
    await conn.app[ADMIN_FORM].poll()
    assert fake_nc.surfaces.config == {}
    assert "connected to" in fake_nc.surfaces.forms[FORM_ID]["description"]
    assert (storage / STATE_FILE).exists()


async def test_an_admins_change_retargets_and_reprovisions(
    unlocked: AutoFactory,
    fake_nc: FakeNextcloud,
    storage: Path,
    service: FakeService,
    service_b: FakeService,
) -> None:
    conn = await unlocked()
    await run_init(conn, fake_nc)
    form = conn.app[ADMIN_FORM]
    await form.poll()
    assert conn.app[TENANT].key == PROVISIONED_KEY

    fake_nc.surfaces.admin_sets("api_base_url", str(service_b.url))
    await form.poll()
    assert str(conn.app[SERVICE_URL].url).rstrip("/") == str(service_b.url).rstrip("/")
    assert conn.app[TENANT].key == KEY_B
    assert len(service_b.control.bootstraps) == 1
    saved = store.load(storage)
    assert saved is not None
    assert saved.api_base_url.rstrip("/") == str(service_b.url).rstrip("/")
    body = await heartbeat(conn, trusted=True)
    assert body["adminForm"]["lastChange"] == "applied"
    assert str(service_b.url).rstrip("/") in fake_nc.surfaces.forms[FORM_ID]["description"]
    # The next poll sees the same values: nothing is provisioned again.
    await form.poll()
    assert len(service_b.control.bootstraps) == 1


async def test_a_failing_change_is_rolled_back_and_shown(
    unlocked: AutoFactory,
    fake_nc: FakeNextcloud,
    storage: Path,
    service: FakeService,
    service_b: FakeService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn = await unlocked()
    await run_init(conn, fake_nc)
    form = conn.app[ADMIN_FORM]
    await form.poll()
    service_b.control.provisioning = "pairing_only"  # 403 pairing_required

    fake_nc.surfaces.admin_sets("api_base_url", str(service_b.url))
    await form.poll()
    assert str(conn.app[SERVICE_URL].url).rstrip("/") == str(service.url).rstrip("/")
    assert conn.app[TENANT].key == PROVISIONED_KEY
    assert len(service_b.control.bootstraps) == 1
    # The form shows what is in force again, and says why.
    assert shown(fake_nc)["api_base_url"] == str(service.url).rstrip("/")
    description = fake_nc.surfaces.forms[FORM_ID]["description"]
    assert "not applied" in description
    assert str(service_b.url).rstrip("/") in description
    assert any("rolled back" in r.getMessage() for r in caplog.records)
    saved = store.load(storage)
    assert saved is not None
    assert saved.api_base_url.rstrip("/") == str(service.url).rstrip("/")
    # Nothing is retried on its own: the admin's next change is.
    await form.poll()
    assert len(service_b.control.bootstraps) == 1


async def test_the_environment_pins_the_url(
    auto_connector: AutoFactory,
    fake_nc: FakeNextcloud,
    service: FakeService,
    service_b: FakeService,
) -> None:
    conn = await auto_connector()  # BEEFLOW_API_BASE_URL set
    await run_init(conn, fake_nc)
    assert "BEEFLOW_API_BASE_URL is set" in fake_nc.surfaces.forms[FORM_ID]["description"]
    fake_nc.surfaces.admin_sets("api_base_url", str(service_b.url))
    fake_nc.surfaces.admin_sets("deployment_mode", "self-hosted")
    await conn.app[ADMIN_FORM].poll()
    assert str(conn.app[SERVICE_URL].url).rstrip("/") == str(service.url).rstrip("/")
    assert service_b.control.bootstraps == []
    assert shown(fake_nc)["api_base_url"] == str(service.url).rstrip("/")
    assert conn.app[ADMIN_FORM].outcome.state == "locked"


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("api_base_url", "http://169.254.169.254/latest", "blocked_host"),
        ("api_base_url", "ftp://example.com", "bad_scheme"),
        ("deployment_mode", "<script>", "unknown deployment"),
    ],
)
async def test_refused_values_are_written_back(
    unlocked: AutoFactory,
    fake_nc: FakeNextcloud,
    storage: Path,
    service: FakeService,
    field: str,
    value: str,
    why: str,
) -> None:
    conn = await unlocked()
    await run_init(conn, fake_nc)
    form = conn.app[ADMIN_FORM]
    await form.poll()
    fake_nc.surfaces.admin_sets(field, value)
    await form.poll()
    assert str(conn.app[SERVICE_URL].url).rstrip("/") == str(service.url).rstrip("/")
    assert form.outcome.state == "refused"
    assert why in form.outcome.detail
    assert shown(fake_nc) == {
        "deployment_mode": "self-hosted",
        "api_base_url": str(service.url).rstrip("/"),
    }


async def test_a_setup_page_change_is_shown_in_the_form(
    unlocked: AutoFactory,
    fake_nc: FakeNextcloud,
    storage: Path,
    service: FakeService,
    service_b: FakeService,
) -> None:
    conn = await unlocked()
    await run_init(conn, fake_nc)
    form = conn.app[ADMIN_FORM]
    await form.poll()
    async with await conn.request(
        "POST",
        "/setup",
        user="admin",
        json={"mode": "self-hosted", "apiBaseUrl": str(service_b.url)},
    ) as resp:
        assert resp.status == 200, await resp.text()
    # The page's save re-bootstraps in the background: count only once that run has ended.
    await wait_for(lambda: rebootstrap_of(conn.app).state == "done", timeout=10)
    await form.poll()
    assert shown(fake_nc)["api_base_url"] == str(service_b.url).rstrip("/")
    # ...and reading it back is not taken for an admin's change.
    bootstraps = len(service_b.control.bootstraps)
    assert bootstraps == 1
    await form.poll()
    assert len(service_b.control.bootstraps) == bootstraps
    assert form.outcome.state == "none"


async def test_no_call_before_the_app_is_known_or_while_the_budget_is_paused(
    unlocked: AutoFactory, fake_nc: FakeNextcloud, storage: Path, service: FakeService
) -> None:
    conn = await unlocked()
    form = conn.app[ADMIN_FORM]
    await form.poll()  # no /init yet: Nextcloud may not know the app
    assert fake_nc.calls_to(GET_VALUES) == []
    await run_init(conn, fake_nc)
    await settled(conn)
    client = conn.app[NEXTCLOUD]
    for _ in range(client.budget.limit):
        client.budget.record_failure("test")
    assert client.budget.spent
    await form.poll()
    assert fake_nc.calls_to(GET_VALUES) == []
    client.budget.reset()
    await form.poll()
    assert len(fake_nc.calls_to(GET_VALUES)) == 1


async def test_the_loop_polls_on_its_own(
    unlocked: AutoFactory,
    fake_nc: FakeNextcloud,
    storage: Path,
    service: FakeService,
    service_b: FakeService,
) -> None:
    conn = await unlocked(BEEFLOW_SETTINGS_POLL_SECONDS="1")
    await run_init(conn, fake_nc)
    await wait_for(lambda: conn.app[ADMIN_FORM].polls >= 1, timeout=5)
    fake_nc.surfaces.admin_sets("api_base_url", str(service_b.url))
    target = str(service_b.url).rstrip("/")
    await wait_for(lambda: str(conn.app[SERVICE_URL].url).rstrip("/") == target, timeout=5)
    await wait_for(lambda: conn.app[TENANT].key == KEY_B, timeout=5)


def test_the_status_line_is_cut_but_the_setup_link_stays() -> None:
    from beeflow.nextcloud.settings import FormView

    scheme = form_scheme(FormView("cloud", "https://server.beeflow.nl", "x" * 5000, "https://nc/s"))
    assert scheme["description"].endswith("https://nc/s")
    assert len(scheme["description"]) < 1000
    assert validate_schema(scheme)


async def test_a_change_applied_on_one_replica_reaches_the_other(
    unlocked: AutoFactory,
    fake_nc: FakeNextcloud,
    service: FakeService,
    service_b: FakeService,
) -> None:
    """Two replicas on one storage directory: the form's change, applied by the replica that
    polled, is saved where the setup page saves (setup-config.json), so the other takes the new
    service without a restart, takes the new key from the shared files, and its own poll
    provisions nothing again."""
    fast = {"BEEFLOW_LEASE_TTL_SECONDS": "2"}
    a = await unlocked(**fast)
    b = await unlocked(**fast)
    for conn in (a, b):
        await run_init(conn, fake_nc)
        await conn.app[ADMIN_FORM].poll()
    assert a.app[TENANT].key == b.app[TENANT].key == PROVISIONED_KEY

    fake_nc.surfaces.admin_sets("api_base_url", str(service_b.url))
    await a.app[ADMIN_FORM].poll()
    new = str(service_b.url).rstrip("/")
    assert str(a.app[SERVICE_URL].url).rstrip("/") == new
    # The new key in the shared files may bind the URL first ("bound"); the saved choice is
    # applied on the next look at setup-config.json either way.
    await wait_for(
        lambda: (
            str(b.app[SERVICE_URL].url).rstrip("/") == new and b.app[SERVICE_URL].source == "setup"
        ),
        timeout=5,
    )
    await wait_for(lambda: b.app[TENANT].key == KEY_B, timeout=5)
    await b.app[ADMIN_FORM].poll()
    assert len(service_b.control.bootstraps) == 1
    assert str(b.app[SERVICE_URL].url).rstrip("/") == new
    assert shown(fake_nc)["api_base_url"] == new
