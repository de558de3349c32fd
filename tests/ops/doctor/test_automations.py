"""doctor's automations line, from the heartbeat of the connector running here: each state the
registration can be in, background jobs that do not run, events the service did not take."""

from __future__ import annotations

from typing import Any

import pytest

from beeflow.config import Config
from beeflow.ops.doctor.automations import check_automations
from beeflow.ops.doctor.result import FAIL, PASS, SKIP, WARN, Context

CONFIG = Config.from_env({"APP_SECRET": "s" * 16, "NEXTCLOUD_URL": "http://nc"})
OK_CRON = {"state": "ok", "mode": "cron"}


def check(heartbeat: dict[str, Any]) -> Any:
    return check_automations(Context(CONFIG, heartbeat=heartbeat))


@pytest.mark.parametrize(
    ("webhooks", "status", "says", "fix"),
    [
        ({"state": "registered", "registered": ["file.new"], "cron": OK_CRON}, PASS, "1 event", ""),
        (
            {"state": "webhook_listeners_disabled", "remedy": "`occ app:enable webhook_listeners`"},
            WARN,
            "webhook_listeners app is disabled",
            "occ app:enable webhook_listeners",
        ),
        ({"state": "removed"}, WARN, "removed", "occ app_api:app:enable"),
        (
            {"state": "failed", "lastError": "listing webhooks: HTTP 500", "remedy": "retries"},
            FAIL,
            "HTTP 500",
            "retries",
        ),
        ({"state": "partial", "failed": {"file.new": "HTTP 500"}}, WARN, "file.new", ""),
        ({"state": "waiting_for_key"}, WARN, "no tenant key", ""),
        ({"state": "idle"}, SKIP, "registers at /init", ""),
        (
            {
                "state": "registered",
                "cron": {"state": "stale", "mode": "cron", "remedy": "cron.php"},
            },
            WARN,
            "background jobs: stale",
            "cron.php",
        ),
    ],
)
def test_each_state_and_its_fix(webhooks: dict[str, Any], status: str, says: str, fix: str) -> None:
    result = check({"status": "ok", "webhooks": webhooks})
    assert result.status == status, result
    assert says in result.summary
    assert fix in result.remedy


def test_no_connector_here_is_a_skip() -> None:
    assert check({}).status == SKIP


def test_events_the_service_did_not_take_are_a_warning() -> None:
    result = check(
        {
            "webhooks": {"state": "registered", "cron": OK_CRON},
            "automations": {"dropped": 3, "lastError": "file.new: HTTP 404"},
        }
    )
    assert result.status == WARN
    assert "3 event(s)" in result.summary
    assert "HTTP 404" in result.summary
    assert result.details["deliveries"]["dropped"] == 3
