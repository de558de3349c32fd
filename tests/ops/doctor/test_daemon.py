"""The deploy daemon as the container can know it (AppAPI does not say), and the warning on the
Docker Socket Proxy."""

from __future__ import annotations

from typing import Any

import pytest

from beeflow.config import Config
from beeflow.ops.doctor.daemon import check_deploy_daemon
from beeflow.ops.doctor.result import PASS, WARN, Context, Deployment
from tests.ops.doctor.conftest import Env, checks_of

CONFIG = Config.from_env({"APP_SECRET": "s" * 16, "NEXTCLOUD_URL": "http://nc"})


def check(env: dict[str, str], heartbeat: dict[str, Any] | None = None) -> Any:
    ctx = Context(CONFIG, deployment=Deployment.from_env(env), heartbeat=heartbeat or {})
    return check_deploy_daemon(ctx)


@pytest.mark.parametrize(
    ("env", "heartbeat", "status", "says"),
    [
        ({"HP_SHARED_KEY": "k" * 20, "AA_VERSION": "32.0.0"}, None, PASS, "FRP tunnel"),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "AA_VERSION": "34.0.1"}, None, PASS, "Kubernetes"),
        ({}, None, PASS, "manual install"),
        ({"AA_VERSION": "34.0.0"}, {"routing": {"seen": "harp"}}, PASS, "direct connect"),
        ({"AA_VERSION": "34.0.0"}, {"routing": {"seen": "php"}}, WARN, "behind the Docker Socket"),
        ({"AA_VERSION": "34.0.0"}, {"routing": "php"}, WARN, "behind the Docker Socket"),
        ({"AA_VERSION": "34.0.0"}, None, WARN, "unless the daemon is HaRP with direct connect"),
        ({"AA_VERSION": "32.0.0"}, None, WARN, "--harp_exapp_direct"),
    ],
)
def test_what_the_container_can_tell(
    env: dict[str, str], heartbeat: dict[str, Any] | None, status: str, says: str
) -> None:
    result = check(env, heartbeat)
    assert result.status == status, result
    assert says in result.summary
    assert "k" * 20 not in str(result.to_json())


def test_the_warning_says_when_and_what_to_do() -> None:
    on_34 = check({"AA_VERSION": "34.0.2"})
    assert "AppAPI 34 still runs it, but it is deprecated since AppAPI 34" in on_34.summary
    assert "removal is planned for 35" in on_34.summary
    assert "occ app_api:app:unregister bee_flow" in on_34.remedy
    assert "docs/install-harp.md" in on_34.remedy
    on_32 = check({"AA_VERSION": "32.0.0"})
    assert "deprecated from AppAPI 34 on" in on_32.summary
    assert on_32.details == {"appapiVersion": "32.0.0", "routingSeen": None}


async def test_doctor_warns_but_does_not_fail_on_a_socket_proxy_deploy(env: Env) -> None:
    checks = await checks_of({**env, "AA_VERSION": "34.0.0", "COMPUTE_DEVICE": "CPU"})
    assert checks["deploy_daemon"].status == WARN
    assert all(c.status != "fail" for c in checks.values()), checks
