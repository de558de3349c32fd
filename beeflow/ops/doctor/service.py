"""The Bee Flow service: the URL the server would use, and its health endpoint."""

from __future__ import annotations

from typing import Final

import aiohttp
from yarl import URL

from beeflow.config import Config
from beeflow.ops.doctor.result import (
    FAIL,
    PASS,
    Check,
    Context,
    network_reason,
    probe_get,
    read_json_file,
)
from beeflow.tenant.store import KEY_FILE

SETUP_FILE: Final = "setup-config.json"  # the setup picker's saved choice (beeflow.setup.store)


def api_base(config: Config) -> tuple[URL, str]:
    """The service URL the server would use: env, else the tenant binding, else the setup
    page's choice, else the default."""
    c = config
    if c.api_base_url_from_env:
        return c.api_base_url, "BEEFLOW_API_BASE_URL"
    record, _ = read_json_file(c.persistent_storage / KEY_FILE)
    bound = record.get("boundApiBaseUrl") if isinstance(record, dict) else None
    if isinstance(bound, str) and bound.startswith(("http://", "https://")):
        return URL(bound.rstrip("/")), f"{KEY_FILE} (bound)"
    choice, _ = read_json_file(c.persistent_storage / SETUP_FILE)
    chosen = choice.get("apiBaseUrl") if isinstance(choice, dict) else None
    if isinstance(chosen, str) and chosen.startswith(("http://", "https://")):
        return URL(chosen.rstrip("/")), "the setup page"
    return c.api_base_url, "default"


async def check_service(ctx: Context, session: aiohttp.ClientSession) -> Check:
    base, source = api_base(ctx.config)
    url = URL(str(base) + "/api/health", encoded=True)
    details = {"url": str(url), "source": source}
    remedy = (
        "The container must reach the Bee Flow service over HTTPS: check DNS, proxy and "
        "firewall, and the service URL (BEEFLOW_API_BASE_URL or the setup page)."
    )
    try:
        probe = await probe_get(ctx, session, url)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Check("service", FAIL, f"{url}: {network_reason(exc)}", remedy, details)
    ctx.service_probe = probe
    if 300 <= probe.status < 400:
        return Check(
            "service",
            FAIL,
            f"{url} redirects (HTTP {probe.status}) to {probe.location}",
            "Enter the final URL of the service: redirects are not followed.",
            details,
        )
    if probe.status != 200:
        return Check("service", FAIL, f"{url} answered HTTP {probe.status}", remedy, details)
    data = probe.data if isinstance(probe.data, dict) else {}
    version = data.get("version")
    summary = f"{url} is healthy" + (f" (version {version})" if version else "")
    return Check("service", PASS, summary, details=details)
