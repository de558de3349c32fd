"""The connector running in this container, if any: its heartbeat (with the AppAPI secret) tells
the tunnel state, the AppAPI failure budget, the last /init and the bootstrap."""

from __future__ import annotations

import json
from typing import Any, Final

import aiohttp
from yarl import URL

from beeflow.nextcloud.ocs import appapi_headers
from beeflow.ops.doctor.harp import tunnel_cause
from beeflow.ops.doctor.result import FAIL, PASS, SKIP, WARN, Check, Context, remedy_bruteforce
from beeflow.transports.frpc.diagnose import LASTING
from beeflow.transports.frpc.diagnose import remedy as remedy_for

MAX_ANSWER: Final = 64 * 1024
_EXCERPT: Final = 120


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def excerpt(raw: bytes) -> str:
    """The start of an answer as one printable line (doctor's output scrubs secrets too)."""
    text = raw.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = " ".join(text.split())
    if not text:
        return "(empty body)"
    return repr(text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else ""))


async def check_running(ctx: Context) -> Check:
    """Ask the connector running in this container (if any) how it is doing: its heartbeat
    with the AppAPI secret carries the tunnel state, the AppAPI failure budget, the /init
    run and the bootstrap. The heartbeat has no side effects."""
    name = "connector"
    c = ctx.config
    if c.harp:
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=str(c.socket_path))
        url = URL("http://localhost/heartbeat")
        where = str(c.socket_path)
    else:
        connector = aiohttp.TCPConnector(force_close=True)
        url = URL.build(scheme="http", host="127.0.0.1", port=c.app_port, path="/heartbeat")
        where = f"127.0.0.1:{c.app_port}"
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=ctx.timeout)
            ) as session,
            session.get(url, headers=appapi_headers(c, "")) as resp,
        ):
            status, kind = resp.status, resp.headers.get("Content-Type", "no Content-Type")
            raw = await resp.content.read(MAX_ANSWER)
    except (aiohttp.ClientError, TimeoutError):
        return Check(name, SKIP, f"no connector answers on {where} (not running here)")
    data = _json(raw)
    if not isinstance(data, dict) or data.get("status") != "ok":
        return Check(
            name,
            FAIL,
            f"{where} answered GET /heartbeat with something other than this connector's "
            f"heartbeat: HTTP {status}, {kind}: {excerpt(raw)}",
            f"Another program listens on {where}: stop it, or give this connector another "
            + ("HP_EXAPP_SOCK" if c.harp else "APP_PORT")
            + " (and register the app with that port).",
            {"status": status, "contentType": kind},
        )
    ctx.heartbeat = data
    problems: list[tuple[str, str, str]] = []  # (status, what, remedy)
    auth = data.get("appapiAuth") or {}
    if auth.get("spent"):
        problems.append(
            (
                FAIL,
                "it paused its Nextcloud calls after refused AppAPI logins "
                f"({auth.get('lastRefusal', 'refused')})",
                remedy_bruteforce(None),
            )
        )
    tunnel = data.get("tunnel") or {}
    if isinstance(tunnel, dict):
        ctx.tunnel = tunnel
    state = tunnel.get("state")
    last_error = str(tunnel.get("last_error") or "")
    if state == "exited":
        problems.append((FAIL, f"frpc exited ({last_error})", "Read the frpc log lines."))
    elif state in ("retrying", "starting") and c.harp:
        cause = tunnel_cause(c, tunnel)
        specific = str(tunnel.get("remedy") or "") or remedy_for(cause, c)
        problems.append(
            (
                # frps refused our port, our plain connection while it forces TLS, or the
                # proxy name another frpc holds: the tunnel never comes up by itself.
                # Anything else frpc retries.
                FAIL if cause in LASTING else WARN,
                f"the HaRP tunnel is {state} ({last_error or 'not connected yet'})",
                specific
                or "frpc retries by itself; check that HaRP runs and HP_SHARED_KEY matches.",
            )
        )
    init = data.get("init") or {}
    if init.get("state") == "failed":
        problems.append(
            (
                WARN,
                f"the last /init failed: {init.get('error', '')}",
                "Fix the cause, then `occ app_api:app:update` (or disable and enable the app).",
            )
        )
    bootstrap = data.get("bootstrap") or {}
    if bootstrap.get("state") == "failed":
        problems.append(
            (
                WARN,
                f"the tenant bootstrap failed ({bootstrap.get('category', 'unknown')})",
                str(bootstrap.get("remediation", "")),
            )
        )
    details = {
        k: data[k]
        for k in ("tunnel", "appapiAuth", "init", "bootstrap", "userSync")
        if isinstance(data.get(k), dict)
    }
    if not problems:
        summary = f"the connector on {where} is healthy"
        if state:
            summary += f" (tunnel {state})"
        return Check(name, PASS, summary, details=details)
    worst = FAIL if any(p[0] == FAIL for p in problems) else WARN
    summary = "; ".join(p[1] for p in problems)
    remedy = " ".join(p[2] for p in problems if p[2])
    return Check(name, worst, summary, remedy, details)
