"""The webhook_listeners registration against the strict fake: the exact body, one row per class
however often and from however many processes it runs, optional classes skipped, the rows of
the Node connector removed, a disabled webhook_listeners or a missing key waited out, a new key
or a re-enable registered again, and the rows removed when Nextcloud disables the app."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from beeflow.nextcloud.hooks import (
    CLASS_BY_EVENT,
    HOOK_CLASSES,
    HOOK_PATH,
    hook_secret,
    registration_body,
)
from beeflow.nextcloud.registrar import Registrar
from beeflow.nextcloud.webhooks import REGISTRAR, WATCHER, Watcher
from beeflow.tenant.state import TENANT
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import TENANT_KEY, RunningConnector, wait_for

API = "/ocs/v2.php/apps/webhook_listeners/api/v1/webhooks"
REQUIRED = sorted(h.event for h in HOOK_CLASSES if not h.optional)
OPTIONAL = sorted(h.event for h in HOOK_CLASSES if h.optional)


async def quiet(conn: RunningConnector) -> tuple[Registrar, Watcher]:
    """The registrar and its watcher, the watcher's own loop stopped (the test steps it)."""
    watcher = conn.app[WATCHER]
    await watcher.slot.close()
    return conn.app[REGISTRAR], watcher


def classes(fake: FakeNextcloud, app_id: str = "bee_flow") -> Counter[str]:
    rows = fake.webhook_listeners.rows_for(HOOK_PATH)
    return Counter(r["event"] for r in rows if r["appId"] == app_id)


def one_each(fake: FakeNextcloud, events: list[str]) -> dict[str, int]:
    return {CLASS_BY_EVENT[e].php_class: 1 for e in events}


@pytest.fixture
async def conn(connector_factory: ConnectorFactory) -> RunningConnector:
    return await connector_factory()


async def test_init_registers_one_row_per_class_with_the_exact_body(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    registrar, _ = await quiet(conn)
    async with await conn.request("POST", "/init", user="") as resp:
        assert resp.status == 200
    await wait_for(lambda: registrar.status.state == "registered", timeout=10)
    await wait_for(lambda: any(p.get("progress") == 100 for p in fake_nc.progress))
    assert classes(fake_nc) == one_each(fake_nc, REQUIRED)
    hooks = fake_nc.webhook_listeners
    instance = conn.app[TENANT].instance_id or ""
    for call in fake_nc.calls_to(API, "POST"):
        body = call.json()
        hook = next(h for h in HOOK_CLASSES if h.php_class == body["event"])
        assert body == registration_body(hook, hook_secret(TENANT_KEY), instance)
        assert "tokenNeeded" not in body
        assert call.user == ""  # the ExApp itself: webhook_listeners admits it without a user
    for row in hooks.rows_for(HOOK_PATH):
        assert row["userId"] is None
        assert row["authData"].startswith("enc:")
        assert hooks._auth[row["id"]] == {"X-Beeflow-Hook-Secret": hook_secret(TENANT_KEY)}
    status = registrar.status
    assert sorted(status.registered) == REQUIRED
    assert sorted(status.skipped) == OPTIONAL  # none of their apps, no NodeRestoredEvent
    assert status.failed == {}


async def test_ten_runs_leave_one_row_per_class_and_update_in_place(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    registrar, _ = await quiet(conn)
    for _ in range(10):
        await registrar.ensure()
    assert classes(fake_nc) == one_each(fake_nc, REQUIRED)
    creates = [c for c in fake_nc.calls_to(API, "POST") if c.path == API]
    # The first run creates the required rows; the optional classes are asked each time.
    assert len(creates) == len(REQUIRED) + 10 * len(OPTIONAL)
    assert registrar.status.state == "registered"


async def test_a_periodic_look_changes_nothing_that_is_right(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    registrar, _ = await quiet(conn)
    await registrar.ensure()
    before = len(fake_nc.calls)
    await registrar.ensure(force=False)
    writes = [c for c in fake_nc.calls[before:] if c.method != "GET"]
    assert [c.path for c in writes] == [API] * len(OPTIONAL)  # only the refused ones, again
    assert classes(fake_nc) == one_each(fake_nc, REQUIRED)


async def test_two_processes_at_once_converge_on_one_row_per_class(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud
) -> None:
    first, _ = await quiet(await connector_factory())
    second, _ = await quiet(await connector_factory())
    for _ in range(3):
        await asyncio.gather(first.ensure(), second.ensure())
        assert classes(fake_nc) == one_each(fake_nc, REQUIRED)
    assert first.status.registered == second.status.registered


async def test_duplicates_and_stale_rows_are_cleaned_up(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    registrar, _ = await quiet(conn)
    hooks = fake_nc.webhook_listeners
    node_created = CLASS_BY_EVENT["file.new"].php_class

    def add(uri: str, event: str, app_id: str | None) -> int:
        row_id = hooks._next_id
        hooks._next_id += 1
        hooks.rows[row_id] = {
            "id": row_id,
            "appId": app_id,
            "userId": None,
            "httpMethod": "POST",
            "uri": uri,
            "event": event,
            "eventFilter": [],
            "userIdFilter": "",
            "headers": None,
            "authMethod": "none",
            "authData": None,
        }
        return row_id

    dup_a, dup_b = (
        add(HOOK_PATH, node_created, "bee_flow"),
        add(HOOK_PATH, node_created, "bee_flow"),
    )
    old_class = add(HOOK_PATH, "OCP\\Files\\Events\\Node\\NodeTouchedEvent", "bee_flow")
    legacy = add(
        f"{fake_nc.url}/index.php/apps/app_api/proxy/bee_flow/hooks/nextcloud",
        node_created,
        "bee_flow",
    )
    foreign = add(HOOK_PATH, node_created, "other_app")
    admins = add("https://example.org/hook", node_created, None)
    await registrar.ensure()
    assert classes(fake_nc) == one_each(fake_nc, REQUIRED)
    assert dup_a in hooks.rows
    assert dup_b not in hooks.rows
    assert registrar.status.registered["file.new"] == dup_a
    assert old_class not in hooks.rows
    assert legacy not in hooks.rows
    assert foreign in hooks.rows
    assert admins in hooks.rows


async def test_a_row_that_vanishes_during_the_run_is_made_again(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    """An update of a missing id answers 200 and writes nothing (measured): the check after
    the run finds the class missing and creates it."""
    registrar, _ = await quiet(conn)
    await registrar.ensure()
    hooks = fake_nc.webhook_listeners
    victim = registrar.status.registered["file.changed"]

    def admin_deletes(row_id: int) -> None:
        if row_id == victim:
            hooks.rows.pop(victim, None)

    hooks.on_update = admin_deletes
    await registrar.ensure()
    assert classes(fake_nc) == one_each(fake_nc, REQUIRED)
    assert registrar.status.registered["file.changed"] != victim


async def test_optional_classes_register_when_their_apps_are_there(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    registrar, _ = await quiet(conn)
    fake_nc.webhook_listeners.apps.update({"forms", "tables", "deck"})
    await registrar.ensure()
    assert sorted(registrar.status.skipped) == ["file.restored"]
    assert len(registrar.status.registered) == len(HOOK_CLASSES) - 1


async def test_webhook_listeners_disabled_is_waited_out_and_does_not_fail_init(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    registrar, watcher = await quiet(conn)
    watcher.retry_base = 0.0
    fake_nc.webhook_listeners.enabled = False
    async with await conn.request("POST", "/init", user="") as resp:
        assert resp.status == 200
    await wait_for(lambda: any(p.get("progress") == 100 for p in fake_nc.progress), timeout=10)
    assert not any(p.get("error") for p in fake_nc.progress)
    health = registrar.health(False)
    assert health["state"] == "webhook_listeners_disabled"
    assert "occ app:enable webhook_listeners" in health["remedy"]
    fake_nc.webhook_listeners.enabled = True
    await watcher.step()  # notes the failed run and schedules the retry (now)
    await watcher.step()
    assert registrar.status.state == "registered"
    assert classes(fake_nc) == one_each(fake_nc, REQUIRED)


async def test_without_a_key_it_waits_and_registers_when_one_arrives(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    registrar, watcher = await quiet(conn)
    state = conn.app[TENANT]
    state.key = None
    await registrar.ensure()
    assert registrar.status.state == "waiting_for_key"
    assert not fake_nc.calls_to(API)
    conn.app[REGISTRAR]._client.app_enabled = True
    await watcher.step()
    assert not fake_nc.calls_to(API)
    state.key = "tk_" + "b" * 40
    await watcher.step()
    assert registrar.status.state == "registered"
    hooks = fake_nc.webhook_listeners
    assert {str(a) for a in hooks._auth.values()} == {
        str({"X-Beeflow-Hook-Secret": hook_secret(state.key)})
    }


async def test_a_new_key_updates_every_row_in_place(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    registrar, watcher = await quiet(conn)
    registrar._client.app_enabled = True
    await registrar.ensure()
    ids = set(fake_nc.webhook_listeners.rows)
    conn.app[TENANT].key = "tk_rotated_" + "c" * 32
    await watcher.step()
    assert set(fake_nc.webhook_listeners.rows) == ids
    secrets = {a["X-Beeflow-Hook-Secret"] for a in fake_nc.webhook_listeners._auth.values() if a}
    assert secrets == {hook_secret("tk_rotated_" + "c" * 32)}
    assert registrar.registered_secret == hook_secret("tk_rotated_" + "c" * 32)


async def test_the_watcher_never_calls_before_the_app_is_known_enabled(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    registrar, watcher = await quiet(conn)
    watcher.retry_base = watcher.drift = 0.0
    watcher._next_retry = 0.0  # a run would be due at once, were the app known enabled
    assert registrar._client.app_enabled is None
    for _ in range(3):
        await watcher.step()
    registrar._client.app_enabled = False
    await watcher.step()
    assert not fake_nc.calls_to(API)


async def test_disable_removes_the_rows_and_enable_brings_them_back(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    registrar, watcher = await quiet(conn)
    registrar._client.app_enabled = True
    await registrar.ensure()
    await watcher.step()
    async with await conn.request("PUT", "/enabled?enabled=0", user="") as resp:
        assert (await resp.json()) == {"error": ""}
    # Gone when AppAPI gets its answer: right after it, AppAPI refuses every call of ours.
    assert registrar.status.state == "removed"
    assert classes(fake_nc) == Counter()
    await watcher.step()  # disabled: nothing
    async with await conn.request("PUT", "/enabled?enabled=1", user="") as resp:
        assert (await resp.json()) == {"error": ""}
    await watcher.step()
    assert classes(fake_nc) == one_each(fake_nc, REQUIRED)


async def test_a_deleted_row_is_repaired_by_the_periodic_look(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    registrar, watcher = await quiet(conn)
    registrar._client.app_enabled = True
    await registrar.ensure()
    await watcher.step()
    fake_nc.webhook_listeners.rows.pop(registrar.status.registered["file.deleted"])
    watcher.drift = 0.0
    await watcher.step()
    assert classes(fake_nc) == one_each(fake_nc, REQUIRED)


async def test_health_shows_details_only_to_trusted_callers(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    registrar, _ = await quiet(conn)
    await registrar.ensure()
    assert registrar.health(False) == {"state": "registered"}
    detail: dict[str, Any] = registrar.health(True)
    assert detail["registered"] == REQUIRED
    assert set(detail["skipped"]) == set(OPTIONAL)
    assert detail["cron"]["state"] == "ok"
    assert detail["cron"]["mode"] == "cron"
    assert hook_secret(TENANT_KEY) not in str(detail)


@pytest.mark.parametrize(
    ("mode", "age", "state", "words"),
    [
        ("cron", 3600, "stale", "system cron entry"),
        ("ajax", 10, "ajax", "occ background:cron"),
        ("cron", None, "never", "never run"),
    ],
)
async def test_background_jobs_that_do_not_run_are_named_with_the_fix(
    conn: RunningConnector,
    fake_nc: FakeNextcloud,
    mode: str,
    age: int | None,
    state: str,
    words: str,
) -> None:
    import time

    registrar, _ = await quiet(conn)
    fake_nc.app_config[("core", "backgroundjobs_mode")] = mode
    fake_nc.app_config[("core", "lastcron")] = "0" if age is None else str(int(time.time()) - age)
    await registrar.ensure()
    cron = registrar.health(True)["cron"]
    assert cron["state"] == state
    assert words in cron["remedy"]
    assert "background-job:worker" in cron["remedy"] or state == "never"


async def test_a_disable_nextcloud_did_not_send_heals_itself(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    """lifecycle takes a few PUT /enabled without the AppAPI secret (older AppAPIs sent none):
    one from someone else removes the rows, and the watcher, asking Nextcloud, restores them."""
    registrar, watcher = await quiet(conn)
    registrar._client.app_enabled = True
    await registrar.ensure()
    await watcher.step()
    async with await conn.request("PUT", "/enabled?enabled=0") as resp:  # no AppAPI headers
        assert (await resp.json()) == {"error": ""}
    assert classes(fake_nc) == Counter()
    await watcher.step()
    assert classes(fake_nc) == Counter()  # not asked yet: the interval has not passed
    watcher.probe_interval = 0.0
    watcher._next_probe = 0.0
    await watcher.step()
    assert fake_nc.calls_to("/ocs/v1.php/apps/app_api/ex-app/state")
    assert classes(fake_nc) == one_each(fake_nc, REQUIRED)


async def test_asking_stops_once_the_app_is_unregistered(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    registrar, watcher = await quiet(conn)
    registrar._client.app_enabled = True
    await registrar.ensure()
    async with await conn.request("PUT", "/enabled?enabled=0", user="") as resp:
        assert resp.status == 200
    fake_nc.registered = False  # `occ app_api:app:unregister`
    watcher.probe_interval = 0.0
    watcher._next_probe = 0.0
    for _ in range(3):
        await watcher.step()
    assert len(fake_nc.calls_to("/ocs/v1.php/apps/app_api/ex-app/state")) == 1


async def test_no_run_starts_once_the_app_is_stopping(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud
) -> None:
    """A pipeline still running at shutdown reaches the webhooks phase after the surface
    closed: that run must not start (the Nextcloud session closes next)."""
    conn = await connector_factory()
    registrar, _ = await quiet(conn)
    await conn.close()
    before = len(fake_nc.calls)
    await registrar.ensure()
    assert len(fake_nc.calls) == before
    assert registrar.status.runs == 0


async def test_nextcloud_down_is_a_failed_run_with_its_reason(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    registrar, _ = await quiet(conn)
    fake_nc.down = True
    await registrar.ensure()
    health = registrar.health(True)
    assert health["state"] == "failed"
    assert "HTTP 503" in health["lastError"]
    assert "retries by itself" in health["remedy"]


async def test_a_required_class_nextcloud_refuses_makes_the_run_partial(
    conn: RunningConnector, fake_nc: FakeNextcloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    registrar, _ = await quiet(conn)
    hooks = fake_nc.webhook_listeners
    compatible = hooks.compatible
    written = CLASS_BY_EVENT["file.changed"].php_class
    monkeypatch.setattr(hooks, "compatible", lambda cls: cls != written and compatible(cls))
    await registrar.ensure()
    status = registrar.status
    assert status.state == "partial"
    assert "not an event class compatible" in status.failed["file.changed"]
    assert registrar.registered_secret is None  # the next look updates every row again
    assert "file.changed" not in status.registered


@pytest.mark.parametrize(
    ("users", "state", "why"),
    [
        ({"alice": ["staff"]}, "unknown", "no administrator found"),
        ({"admin": ["admin"]}, "ok", ""),
    ],
)
async def test_background_jobs_are_read_as_an_administrator(
    connector_factory: ConnectorFactory,
    fake_nc: FakeNextcloud,
    users: dict[str, list[str]],
    state: str,
    why: str,
) -> None:
    from beeflow.nextcloud.cron import CronCheck
    from beeflow.nextcloud.users import USERS

    fake_nc.users.clear()
    for uid, groups in users.items():
        fake_nc.add_user(uid, groups=groups)
    conn = await connector_factory()
    check = CronCheck(conn.app[REGISTRAR]._client, conn.app[USERS])
    status = await check.run()
    assert (status.state, status.why) == (state, why)
    if state == "unknown":
        assert "could not read" in status.remedy().lower()
        return
    calls = fake_nc.calls_to("/ocs/v2.php/apps/provisioning_api/")
    assert {c.user for c in calls} == {"admin"}
    await check.run()  # the administrator is remembered: no second user lookup
    assert len(fake_nc.calls_to("/ocs/v2.php/cloud/users/")) == 1
