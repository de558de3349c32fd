"""The control-plane client: OCS verdicts, warm-up retry, network errors, the failure budget."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beeflow.config import Config
from beeflow.errors import NextcloudError
from beeflow.nextcloud.budget import (
    ATTEMPTS_PER_REFUSAL,
    BRUTEFORCE_WINDOW,
    BUDGET_FILE,
    NC_MAX_ATTEMPTS,
    AuthBudget,
)
from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.nextcloud.ocs import appapi_headers, parse_ocs
from beeflow.nextcloud.users import USERS, user_from_ocs
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import SECRET


@pytest.mark.parametrize(
    ("status", "body", "ok", "exists", "refused"),
    [
        (200, b'{"ocs":{"meta":{"statuscode":100},"data":[]}}', True, False, False),
        (200, b'{"ocs":{"meta":{"statuscode":200},"data":{}}}', True, False, False),
        (200, b'{"ocs":{"meta":{"statuscode":409},"data":[]}}', False, True, False),
        (409, b'{"ocs":{"meta":{"statuscode":409},"data":[]}}', False, True, False),
        (200, b'{"ocs":{"meta":{"statuscode":400},"data":[]}}', False, False, False),
        (401, b'{"ocs":{"meta":{"statuscode":997},"data":[]}}', False, False, True),
        (200, b'{"ocs":{"meta":{"statuscode":429},"data":[]}}', False, False, True),
        (429, b"", False, False, True),
        (200, b"<ocs><meta><statuscode>100</statuscode></meta></ocs>", True, False, False),
        (200, b"<ocs><meta><statuscode>996</statuscode></meta></ocs>", False, False, False),
        (200, b"not json", True, False, False),
        (500, b"", False, False, False),
    ],
)
def test_ocs_verdicts(status: int, body: bytes, ok: bool, exists: bool, refused: bool) -> None:
    result = parse_ocs(status, body)
    assert (result.ok, result.exists, result.auth_refused) == (ok, exists, refused)


@given(st.binary(max_size=300), st.integers(100, 599))
def test_parse_ocs_never_raises(body: bytes, status: int) -> None:
    parse_ocs(status, body)


def test_appapi_headers_wire_format(make_config: Callable[..., Config]) -> None:
    headers = appapi_headers(make_config(), "alice")
    assert headers["EX-APP-ID"] == "bee_flow"
    assert headers["EX-APP-VERSION"] == "1.0.0"
    assert headers["AA-VERSION"] == "32.0.0"
    assert base64.b64decode(headers["AUTHORIZATION-APP-API"]).decode() == f"alice:{SECRET}"


def test_user_from_ocs_is_lenient() -> None:
    user = user_from_ocs("bob", {"id": "bob", "display-name": "Bob", "groups": ["admin"]})
    assert (user.display_name, user.email, user.is_admin) == ("Bob", None, True)
    odd = user_from_ocs("x", {"groups": "admin", "email": 3})
    assert (odd.uid, odd.display_name, odd.groups, odd.email) == ("x", "x", (), None)


def test_budget_window_and_reset() -> None:
    budget = AuthBudget(limit=2, window=0.05)

    def spent() -> bool:
        return budget.spent

    budget.record_failure("a")
    assert not spent()
    budget.record_failure("b")
    assert spent()
    assert "security:bruteforce:reset" in budget.snapshot()["remedy"]
    time.sleep(0.06)
    assert not spent()
    budget.record_failure("c")
    budget.record_success()
    assert budget.used == 0


async def test_network_errors_are_retried_within_the_warmup_budget(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud
) -> None:
    conn = await connector_factory()
    client = conn.app[NEXTCLOUD]
    await fake_nc.stop()
    started = time.monotonic()
    with pytest.raises(NextcloudError) as err:
        await client.ocs("GET", "/ocs/v2.php/cloud/capabilities", user=None, warmup=1.2)
    assert err.value.kind == "network"
    assert 0.4 < time.monotonic() - started < 3.0
    # Unreachable is not a refused login: the budget is untouched.
    assert client.budget.used == 0


async def test_lockout_answers_count_as_refusals_and_stop_retries(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud
) -> None:
    conn = await connector_factory()
    client = conn.app[NEXTCLOUD]
    fake_nc.locked_until["127.0.0.1"] = time.monotonic() + 60
    started = time.monotonic()
    v1 = await client.ocs("GET", "/ocs/v1.php/apps/app_api/ex-app/state", warmup=5)
    assert (v1.http_status, v1.statuscode, v1.auth_refused) == (200, 429, True)
    assert time.monotonic() - started < 1.0  # a lock-out is not a warm-up: no retries
    # Nextcloud's count is over its threshold: nothing else goes out, not even a lifted trial.
    assert client.budget.spent
    assert client.budget.attempts > NC_MAX_ATTEMPTS
    client.budget.lift()
    with pytest.raises(NextcloudError) as err:
        await client.ocs("GET", "/ocs/v2.php/apps/app_api/ex-app/state", warmup=5)
    assert err.value.kind == "auth_budget_spent"
    assert len(fake_nc.calls_to("/ocs/v2.php/apps/app_api/ex-app/state")) == 0


async def test_anonymous_calls_carry_no_appapi_headers(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud
) -> None:
    conn = await connector_factory()
    result = await conn.app[NEXTCLOUD].ocs("GET", "/ocs/v2.php/cloud/capabilities", user=None)
    assert result.ok
    call = fake_nc.calls_to("/ocs/v2.php/cloud/capabilities")[-1]
    assert "AUTHORIZATION-APP-API" not in call.headers
    assert call.headers["OCS-APIRequest"] == "true"
    assert call.query == "format=json"


def test_inbound_trust_lifts_the_pause_for_one_call_a_minute() -> None:
    budget = AuthBudget(limit=2, window=60, lift_interval=0.05)

    def spent() -> bool:
        return budget.spent

    budget.record_failure("a")
    budget.lift()  # not exhausted: nothing to lift
    budget.record_failure("b")
    assert spent()
    budget.lift()
    assert not spent()
    budget.begin_call()  # the trial call goes out...
    assert spent()  # ...and nothing else may follow it
    budget.record_failure("c")  # refused again
    budget.lift()  # too soon after the last lift
    assert spent()
    time.sleep(0.06)
    budget.lift()
    budget.begin_call()
    budget.record_success()  # accepted: both counters are clear
    assert not spent()
    assert budget.used == 0


USER_INFO = "/ocs/v2.php/cloud/users/{}"
STATE = "/ocs/v1.php/apps/app_api/ex-app/state"


@pytest.mark.parametrize(("limit", "slack"), [("4", 0), ("2", 2), ("1", 3)])
async def test_a_disabled_users_refusal_is_theirs_not_a_spent_budget(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud, limit: str, slack: int
) -> None:
    """Review P2-3: impersonating a disabled user is 997 that Nextcloud does not count; with our
    credentials proven good the budget does not count it either, and says whose it is. Refusals
    taken on trust are budgeted like counted ones: the default budget (4 refusals, 8 attempts)
    leaves no room for them, so each is re-proved."""
    for n in range(8):
        fake_nc.add_user(f"off{n}", enabled=False)
    conn = await connector_factory(BEEFLOW_AUTH_FAILURE_BUDGET=limit)
    client = conn.app[NEXTCLOUD]
    assert (await client.probe()).ok  # a success: the credentials are proven
    assert client.budget.user_slack == slack
    for n in range(8):
        result = await client.ocs("GET", USER_INFO.format(f"off{n}"), user=f"off{n}", warmup=5)
        assert (result.http_status, result.auth_refused, result.user_refused) == (401, True, True)
    assert client.budget.used == 0
    assert not client.budget.spent
    assert client.budget.snapshot()["userRefusals"] == 8
    # Past the slack each refusal is re-proved with one empty-user ex-app/state call.
    assert len(fake_nc.calls_to(STATE)) == 1 + 8 // (slack + 1)
    assert fake_nc.failure_count_total == 0
    with pytest.raises(NextcloudError) as err:
        await conn.app[USERS].lookup("off0")
    assert err.value.kind == "user_refused"


async def test_impersonated_refusals_before_any_success_count(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud
) -> None:
    fake_nc.add_user("off", enabled=False)
    conn = await connector_factory()
    client = conn.app[NEXTCLOUD]
    result = await client.ocs("GET", USER_INFO.format("off"), user="off")
    assert (result.auth_refused, result.user_refused) == (True, False)
    assert client.budget.used == 1  # nothing proved the secret yet: it may be the secret


async def test_a_secret_gone_bad_after_a_success_stays_under_the_lockout(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud
) -> None:
    """The trust in the last success is bounded: Nextcloud counts the refusals taken on trust
    plus the ones we count, and that stays within its threshold."""
    conn = await connector_factory()
    client = conn.app[NEXTCLOUD]
    assert (await client.probe()).ok
    fake_nc.secret = "re-registered with another secret"
    kinds: list[str] = []
    for _ in range(20):
        try:
            await client.ocs("GET", USER_INFO.format("alice"), user="alice")
        except NextcloudError as exc:
            kinds.append(exc.kind)
    assert client.budget.spent
    assert kinds
    assert set(kinds) == {"auth_budget_spent"}
    assert fake_nc.attempts_for() <= NC_MAX_ATTEMPTS
    assert not fake_nc.is_locked()


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5, 7, 9])
def test_user_slack_keeps_the_worst_case_under_nextclouds_threshold(limit: int) -> None:
    budget = AuthBudget(limit=limit)
    # Counted refusals, refusals taken on trust and one lifted trial, 2 attempts each.
    worst = min(limit, NC_MAX_ATTEMPTS // 2) + budget.user_slack + 1
    assert worst * ATTEMPTS_PER_REFUSAL <= NC_MAX_ATTEMPTS or budget.user_slack == 0
    budget.record_success()
    taken = 0
    while budget.take_user_refusal():
        taken += 1
    assert taken == budget.user_slack
    budget.record_failure("x")
    assert not budget.take_user_refusal()  # after a counted refusal nothing is taken on trust


# ------------------------------------------------------------------ counted as Nextcloud counts


def test_refusals_count_two_attempts_and_pause_below_nextclouds_threshold() -> None:
    """Issue 19 (3b): each refused call adds 2 attempts on Nextcloud's side, which refuses every
    login from the IP past NC_MAX_ATTEMPTS. The default budget stops at 8; one lifted trial may
    take it to 10 (still let in), never further."""
    budget = AuthBudget(limit=4, lift_interval=0.0)
    for n in range(4):
        assert not budget.spent
        budget.record_failure(f"refused {n}")
    assert (budget.used, budget.attempts, budget.spent) == (4, 8, True)
    budget.lift()
    assert not budget.spent  # room for one more: 10 is not past the threshold
    budget.begin_call()
    budget.record_failure("the trial was refused too")
    assert budget.attempts == NC_MAX_ATTEMPTS
    budget.lift()
    assert budget.spent  # another refusal would lock the IP out: no trial any more


@pytest.mark.parametrize("limit", [5, 7, 9])
def test_a_large_budget_is_capped_by_nextclouds_threshold(limit: int) -> None:
    budget = AuthBudget(limit=limit, lift_interval=0.0)
    while not budget.spent:
        budget.record_failure("refused")
        budget.lift()
        budget.begin_call()
    assert budget.attempts <= NC_MAX_ATTEMPTS


def test_a_success_clears_only_the_refusals_of_its_own_user() -> None:
    """Nextcloud resets the attempts whose metadata (app id, user) match the login."""
    budget = AuthBudget(limit=4)
    budget.record_failure("as the app", user="")
    budget.record_failure("as bob", user="bob")
    budget.record_success(user="")
    assert budget.attempts == ATTEMPTS_PER_REFUSAL
    budget.record_success(user="bob")
    assert budget.attempts == 0


def test_a_lockout_answer_is_a_count_over_the_threshold_until_a_success() -> None:
    budget = AuthBudget(limit=4, lift_interval=0.0)
    budget.record_lockout("GET ... -> HTTP 429")
    assert budget.attempts == NC_MAX_ATTEMPTS + 1
    budget.lift()
    assert budget.spent
    budget.record_success(user="alice")  # any accepted login: Nextcloud let us in again
    assert (budget.attempts, budget.spent) == (0, False)


def test_refusals_leave_the_window_after_30_minutes() -> None:
    now = [1_000_000.0]
    budget = AuthBudget(limit=2, clock=lambda: now[0])
    budget.record_failure("a")
    budget.record_failure("b")
    assert budget.spent
    now[0] += BRUTEFORCE_WINDOW - 1
    assert budget.spent
    now[0] += 2
    assert (budget.used, budget.spent) == (0, False)


def test_restoring_a_budget_is_lenient() -> None:
    now = 2_000_000.0
    budget = AuthBudget(clock=lambda: now)
    kept = budget.restore(
        {
            "version": 1,
            "refusals": [
                {"at": now - 10, "user": "", "attempts": 2},
                {"at": now + 3600, "user": "bob", "attempts": 2},  # clock went back: now
                {"at": now - BRUTEFORCE_WINDOW - 5, "user": "", "attempts": 2},  # too old
                {"at": now - 5, "user": None, "attempts": 99},  # a lock-out, capped
                {"at": "yesterday", "user": ""},
                {"at": now, "user": 7},
                {"at": True, "user": ""},
                "junk",
            ],
            "lastRefusal": "GET /ocs/... -> HTTP 401 (OCS 997)",
        }
    )
    assert kept == 3
    assert budget.attempts == 2 + 2 + NC_MAX_ATTEMPTS + 1
    assert budget.last_refusal.startswith("GET /ocs/")
    junk: tuple[Any, ...] = (None, [], {"refusals": "x"}, {"version": 1})
    for data in junk:
        assert AuthBudget().restore(data) == 0


async def test_the_budget_survives_a_restart(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud, storage: Path
) -> None:
    """Issue 19 (3b): every restart's boot probe added 2 attempts to Nextcloud's count while
    the connector started from zero each time; six restarts locked it out."""
    fake_nc.registered = False
    first = await connector_factory()
    for _ in range(2):
        result = await first.app[NEXTCLOUD].probe()
        assert result.auth_refused
    assert fake_nc.attempts_for() == 4
    saved = json.loads((storage / BUDGET_FILE).read_text())
    assert [r["attempts"] for r in saved["refusals"]] == [2, 2]
    assert (storage / BUDGET_FILE).stat().st_mode & 0o777 == 0o600
    second = await connector_factory()
    budget = second.app[NEXTCLOUD].budget
    assert (budget.used, budget.attempts) == (2, 4)
    for _ in range(2):
        await second.app[NEXTCLOUD].probe()
    assert budget.spent
    with pytest.raises(NextcloudError):
        await second.app[NEXTCLOUD].probe()
    assert fake_nc.attempts_for() == 8 < NC_MAX_ATTEMPTS


async def test_an_unwritable_storage_keeps_the_budget_in_memory(
    connector_factory: ConnectorFactory,
    fake_nc: FakeNextcloud,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    fake_nc.registered = False
    conn = await connector_factory(APP_PERSISTENT_STORAGE=str(blocker))
    client = conn.app[NEXTCLOUD]
    for _ in range(2):
        await client.probe()
    assert client.budget.attempts == 4
    warnings = [r for r in caplog.records if "kept in memory only" in r.getMessage()]
    assert len(warnings) == 1
