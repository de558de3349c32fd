"""`python -m beeflow doctor`: check this installation end to end and say what to do about it.

Every check prints one PASS / WARN / FAIL / SKIP line and, when it is not a pass, the fix.
`--json` prints the same as one JSON object. Exit code 0 when nothing failed, 1 otherwise.
Secrets (APP_SECRET, the tenant key, HP_SHARED_KEY) are never printed: the tenant key appears
only as its 16-hex fingerprint.

Nextcloud counts every refused AppAPI login against this container's IP and locks the IP out
after more than 10 in 30 minutes, so doctor makes exactly ONE authenticated call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping
from typing import Final

import aiohttp

from beeflow import __version__
from beeflow.config import Config
from beeflow.errors import ConfigError
from beeflow.ops.doctor import (
    assistant,
    automations,
    clocks,
    connector,
    daemon,
    harp,
    local,
    nextcloud,
    service,
    tenant_key,
)
from beeflow.ops.doctor.result import (
    FAIL,
    PASS,
    SKIP,
    WARN,
    Check,
    Clock,
    Context,
    Deployment,
    read_json_file,
)
from beeflow.tenant.store import KEY_FILE

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
_MASK: Final = "***"


async def run_all(ctx: Context) -> list[Check]:
    """Every check, in order: later ones use what earlier ones learnt (ctx)."""
    config = ctx.config
    checks = [local.check_config(ctx), local.check_storage(ctx)]
    session_connector = aiohttp.TCPConnector(limit=4, force_close=True)
    async with aiohttp.ClientSession(
        connector=session_connector,
        timeout=aiohttp.ClientTimeout(total=ctx.timeout),
        headers={"User-Agent": f"beeflow-doctor/{__version__}"},
    ) as session:
        checks.append(await nextcloud.check_nextcloud(ctx, session))
        checks.append(nextcloud.check_nextcloud_version(ctx))
        checks.append(await nextcloud.check_appapi_secret(ctx, session))
        checks.append(
            clocks.skew_check("clock_nextcloud", "Nextcloud", ctx.nc_probe, config.sig_skew_seconds)
        )
        checks.append(await service.check_service(ctx, session))
        checks.append(
            clocks.skew_check(
                "clock_service",
                "the Bee Flow service",
                ctx.service_probe,
                config.sig_skew_seconds,
            )
        )
    checks.append(tenant_key.check_tenant_key(ctx))
    checks.append(await connector.check_running(ctx))
    checks.append(assistant.check_assistant(ctx))
    checks.append(automations.check_automations(ctx))
    checks.append(daemon.check_deploy_daemon(ctx))
    if config.harp:
        checks.append(await harp.check_harp_socket(ctx))
        checks.append(harp.check_harp_port(ctx))
        checks.append(await harp.check_frpc(ctx))
        checks.append(await harp.check_frps(ctx))
        checks.append(harp.check_frp_certs(ctx))
    return checks


# ------------------------------------------------------------------ output


def _secrets(config: Config | None) -> list[str]:
    if config is None:
        return []
    values = [config.app_secret, config.hp_shared_key, config.tenant_key_env or ""]
    record, _ = read_json_file(config.persistent_storage / KEY_FILE)
    if isinstance(record, dict) and isinstance(record.get("tenantKey"), str):
        values.append(record["tenantKey"].strip())
    return sorted({v for v in values if len(v) >= 6}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """Defence in depth: no check prints a secret, and this masks one if it ever would."""
    for secret in secrets:
        text = text.replace(secret, _MASK)
    return text


def render_text(checks: list[Check]) -> str:
    counts = {s: sum(1 for c in checks if c.status == s) for s in (PASS, WARN, FAIL, SKIP)}
    width = max(len(c.name) for c in checks)
    lines = [
        f"beeflow doctor {__version__}: {counts[PASS]} passed, {counts[WARN]} warning(s), "
        f"{counts[FAIL]} failed, {counts[SKIP]} skipped",
        "",
    ]
    for c in checks:
        lines.append(f"{c.status.upper():<5} {c.name:<{width}}  {c.summary}")
        if c.remedy and c.status != PASS:
            lines.append(f"{'':<5} {'':<{width}}  fix: {c.remedy}")
    return "\n".join(lines) + "\n"


def render_json(checks: list[Check]) -> str:
    counts = {s: sum(1 for c in checks if c.status == s) for s in (PASS, WARN, FAIL, SKIP)}
    body = {
        "ok": counts[FAIL] == 0,
        "version": __version__,
        "counts": counts,
        "checks": [c.to_json() for c in checks],
    }
    return json.dumps(body, indent=2) + "\n"


def config_failure(exc: ConfigError) -> Check:
    problems = "; ".join(f"{name} {why}" for name, why in exc.problems.items())
    return Check(
        "config",
        FAIL,
        f"{len(exc.problems)} problem(s) in the environment: {problems}",
        "Fix these variables (docs/configuration.md); AppAPI sets APP_* and NEXTCLOUD_URL.",
        {"variables": sorted(exc.problems)},
    )


# ------------------------------------------------------------------ the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (__doc__ or "").split("\n\n")[0]
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds allowed for each network check (default 10)",
    )


async def run_checks(
    env: Mapping[str, str], *, clock: Clock = time.time, timeout: float = 10.0
) -> tuple[list[Check], Config | None]:
    try:
        config = Config.from_env(env)
    except ConfigError as exc:
        return [config_failure(exc)], None
    context = Context(config, clock=clock, timeout=timeout, deployment=Deployment.from_env(env))
    return await run_all(context), config


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    timeout = max(0.5, float(getattr(args, "timeout", 10.0)))
    checks, config = asyncio.run(run_checks(env, timeout=timeout))
    text = render_json(checks) if args.json else render_text(checks)
    sys.stdout.write(scrub(text, _secrets(config)))
    sys.stdout.flush()
    return EXIT_FAILED if any(c.status == FAIL for c in checks) else EXIT_OK
