"""Automations, as the running connector's heartbeat tells them: its webhook_listeners rows,
whether Nextcloud's background jobs run (deliveries wait for them), and what happened to the
deliveries (docs/automations.md, "When deliveries do not arrive")."""

from __future__ import annotations

from typing import Any, Final

from beeflow.ops.doctor.result import FAIL, PASS, SKIP, WARN, Check, Context

NAME: Final = "automations"
STATES: Final = {
    "registered": PASS,
    "partial": WARN,
    "webhook_listeners_disabled": WARN,
    "waiting_for_key": WARN,
    "removed": WARN,
    "failed": FAIL,
}
SAYS: Final = {
    "partial": "some event classes could not be registered with webhook_listeners",
    "webhook_listeners_disabled": "Nextcloud's webhook_listeners app is disabled",
    "waiting_for_key": "no tenant key yet, so nothing is registered",
    "removed": "the rows were removed (Nextcloud disabled the app)",
    "failed": "registering with webhook_listeners failed",
}
REMOVED: Final = "Enable the app (`occ app_api:app:enable bee_flow`): it registers again."


def check_automations(ctx: Context) -> Check:
    heartbeat = ctx.heartbeat
    hooks = heartbeat.get("webhooks")
    if not isinstance(hooks, dict):
        return Check(NAME, SKIP, "no connector answered here (see the connector check)")
    state = str(hooks.get("state") or "idle")
    status = STATES.get(state)
    details = {"webhooks": hooks}
    flow = heartbeat.get("automations")
    if isinstance(flow, dict):
        details["deliveries"] = flow
    if status is None:
        return Check(
            NAME, SKIP, f"not registered yet ({state}): it registers at /init", "", details
        )
    problems: list[tuple[str, str, str]] = []
    if status != PASS:
        remedy = str(hooks.get("remedy") or (REMOVED if state == "removed" else ""))
        error = hooks.get("lastError") or ", ".join(sorted(_dict(hooks.get("failed"))))
        problems.append((status, SAYS[state] + (f" ({error})" if error else ""), remedy))
    cron = _dict(hooks.get("cron"))
    if cron.get("state") not in (None, "ok"):
        what = f"Nextcloud's background jobs: {cron.get('state')} (mode {cron.get('mode')})"
        problems.append((WARN, what, str(cron.get("remedy") or "")))
    if isinstance(flow, dict) and flow.get("dropped"):
        what = f"{flow['dropped']} event(s) did not reach the service ({flow.get('lastError', '')})"
        problems.append((WARN, what, "See the connector's log for the service's answers."))
    if not problems:
        count = len(hooks.get("registered") or [])
        return Check(NAME, PASS, f"{count} event classes registered with Nextcloud", "", details)
    worst = FAIL if any(p[0] == FAIL for p in problems) else WARN
    summary = "; ".join(p[1] for p in problems)
    return Check(NAME, worst, summary, " ".join(p[2] for p in problems if p[2]), details)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
