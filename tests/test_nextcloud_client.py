"""The control-plane client: OCS verdicts, warm-up retry, network errors, the failure budget."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beeflow import keys
from beeflow.config import Config
from beeflow.errors import NextcloudError
from beeflow.nextcloud import AuthBudget, appapi_headers, parse_ocs, user_from_ocs
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
    client = conn.app[keys.NEXTCLOUD]
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
    client = conn.app[keys.NEXTCLOUD]
    fake_nc.locked_until["127.0.0.1"] = time.monotonic() + 60
    started = time.monotonic()
    v1 = await client.ocs("GET", "/ocs/v1.php/apps/app_api/ex-app/state", warmup=5)
    assert (v1.http_status, v1.statuscode, v1.auth_refused) == (200, 429, True)
    v2 = await client.ocs("GET", "/ocs/v2.php/apps/app_api/ex-app/state", warmup=5)
    assert (v2.http_status, v2.auth_refused) == (429, True)
    assert time.monotonic() - started < 1.0  # a lock-out is not a warm-up: no retries
    assert client.budget.used == 2


async def test_anonymous_calls_carry_no_appapi_headers(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud
) -> None:
    conn = await connector_factory()
    result = await conn.app[keys.NEXTCLOUD].ocs("GET", "/ocs/v2.php/cloud/capabilities", user=None)
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
