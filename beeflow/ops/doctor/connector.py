"""The connector running in this container, if any: its heartbeat (with the AppAPI secret) tells
the tunnel state, the AppAPI failure budget, the last /init and the bootstrap."""

from __future__ import annotations

import json
import pwd
from typing import Any, Final

import aiohttp
from yarl import URL

from beeflow.nextcloud.ocs import appapi_headers
from beeflow.ops.doctor.harp import tunnel_cause
from beeflow.ops.doctor.listener import tcp_listener_uids, trusted_uids, unix_listener_uid
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


def _users(uids: set[int]) -> str:
    names = []
    for uid in sorted(uids):
        try:
            names.append(f"{pwd.getpwuid(uid).pw_name} (uid {uid})")
        except KeyError:
            names.append(f"uid {uid}")
    return ", ".join(names)


def _is_connector(data: Any) -> bool:
    """The public heartbeat's shape: status ok and the /init run's state, which every beeflow
    answers to anyone. It proves nothing (anyone can copy it): the owner check does that."""
    if not isinstance(data, dict) or data.get("status") != "ok":
        return False
    init = data.get("init")
    return isinstance(init, dict) and isinstance(init.get("state"), str)


async def check_running(ctx: Context) -> Check:
    """Ask the connector running in this container (if any) how it is doing: its heartbeat
    with the AppAPI secret carries the tunnel state, the AppAPI failure budget, the /init
    run and the bootstrap. The heartbeat has no side effects.

    The secret goes only to a listener proven safe first: owned by our user or root (read from
    the kernel's tables, listener.py; anyone else's process could collect it), and answering
    the public heartbeat, asked without the secret, as this connector does."""
    name = "connector"
    c = ctx.config
    owners: set[int] | None
    if c.harp:
        where = str(c.socket_path)
        uid = unix_listener_uid(c.socket_path)
        owners = None if uid is None else {uid}
        url = URL("http://localhost/heartbeat")

        def connector() -> aiohttp.BaseConnector:
            return aiohttp.UnixConnector(path=str(c.socket_path))
    else:
        where = f"127.0.0.1:{c.app_port}"
        owners = tcp_listener_uids(c.app_port, ctx.proc_net)
        url = URL.build(scheme="http", host="127.0.0.1", port=c.app_port, path="/heartbeat")

        def connector() -> aiohttp.BaseConnector:
            return aiohttp.TCPConnector(force_close=True)

    strangers = (owners or set()) - trusted_uids()
    if strangers:
        return Check(
            name,
            FAIL,
            f"a process of {_users(strangers)} listens on {where}: not this connector's user "
            "nor root, so doctor did not send it the AppAPI secret",
            f"If it is the connector, run doctor as the user it runs as. Otherwise it is another "
            f"program, possibly collecting what is sent there: stop it, or give this connector "
            f"another {'HP_EXAPP_SOCK' if c.harp else 'APP_PORT'} (and register the app with it).",
            {"uids": sorted(strangers)},
        )

    async def get(headers: dict[str, str]) -> tuple[int, str, bytes]:
        async with (
            aiohttp.ClientSession(
                connector=connector(), timeout=aiohttp.ClientTimeout(total=ctx.timeout)
            ) as session,
            session.get(url, headers=headers, allow_redirects=False) as resp,
        ):
            kind = resp.headers.get("Content-Type", "no Content-Type")
            return resp.status, kind, await resp.content.read(MAX_ANSWER)

    try:
        status, kind, raw = await get({})
    except (aiohttp.ClientError, TimeoutError):
        return Check(name, SKIP, f"no connector answers on {where} (not running here)")
    if not _is_connector(_json(raw)):
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
    if not owners:
        # No kernel table to read (not Linux), or the answer came from a socket they do not
        # list (another network namespace): the owner is unknown, so is who gets the secret.
        return Check(
            name,
            WARN,
            f"{where} answers like this connector, but doctor could not tell which user's "
            "process listens there, so it did not send the AppAPI secret (no details)",
            "Run doctor inside the connector's container (or on Linux as the connector's "
            "user) to see its tunnel, init and bootstrap states.",
        )
    try:
        status, kind, raw = await get(appapi_headers(c, ""))
    except (aiohttp.ClientError, TimeoutError):
        return Check(name, SKIP, f"no connector answers on {where} (not running here)")
    data = _json(raw)
    if not _is_connector(data):
        return Check(
            name,
            FAIL,
            f"{where} answered the public heartbeat but not the one with the AppAPI secret: "
            f"HTTP {status}, {kind}: {excerpt(raw)}",
            "Check that APP_SECRET here is the connector's (the same environment as the "
            "running connector), then run doctor again.",
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
