"""The Assistant and Talk, as the running connector's heartbeat tells them: whether the Task
Processing providers are registered and for which types, whether tasks fail or a worker's tasks
are left unreported, and whether the Talk bot is registered (docs/assistant.md)."""

from __future__ import annotations

from typing import Any

from beeflow.ops.doctor.result import PASS, SKIP, WARN, Check, Context


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def check_assistant(ctx: Context) -> Check:
    name = "assistant"
    data = ctx.heartbeat
    if not data:
        return Check(name, SKIP, "no running connector to ask (see the connector check)")
    provider = _obj(data.get("taskProcessing"))
    worker = _obj(data.get("assistant"))
    bot = _obj(data.get("talkBot"))
    details = {"taskProcessing": provider, "assistant": worker, "talkBot": bot}
    problems: list[tuple[str, str]] = []
    state = provider.get("state")
    if state == "failed":
        problems.append(
            (
                f"a Task Processing registration was refused ({provider.get('lastError', '?')})",
                "Check that AppAPI answers (doctor's nextcloud checks); the connector retries.",
            )
        )
    elif state == "waiting_for_key":
        problems.append(
            (
                "Bee Flow is not a Task Processing provider yet: no tenant key",
                "Finish the set-up (the bootstrap check says what is missing).",
            )
        )
    if worker.get("ledger") == "failing":
        problems.append(
            (
                "the list of tasks in progress cannot be written: a connector killed mid-task "
                "leaves its task running in Nextcloud",
                "Make APP_PERSISTENT_STORAGE writable.",
            )
        )
    if bot.get("state") == "failed":
        problems.append(
            (
                f"the Talk bot registration was refused ({bot.get('lastError', '?')})",
                "Check Talk and AppAPI; the connector retries.",
            )
        )
    if problems:
        return Check(
            name,
            WARN,
            "; ".join(p[0] for p in problems),
            " ".join(p[1] for p in problems),
            details,
        )
    types = provider.get("types", 0)
    talk = {
        "registered": "the Talk bot is registered",
        "talk_missing": "Talk is not installed (no bot)",
    }.get(str(bot.get("state")), f"Talk bot: {bot.get('state', 'unknown')}")
    summary = f"{types} task type(s) served"
    if worker:
        summary += f", {worker.get('completed', 0)} completed, {worker.get('failed', 0)} failed"
    return Check(name, PASS, f"{summary}; {talk}", details=details)
