"""HaRP mode: the Unix socket, APP_PORT against frps's allowPorts, the frpc binary and its pin,
frps reachable, and the frp certificates."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from beeflow.config import Config
from beeflow.ops.doctor.result import FAIL, PASS, WARN, Check, Context
from beeflow.transports.frpc.binary import (
    DEFAULT_PIN_FILE,
    PINNED_VERSION,
    FrpcError,
    read_pin,
    read_version,
    resolve_binary,
)
from beeflow.transports.frpc.config import ENGINE_PORTS, EXAPP_PORTS, port_problem
from beeflow.transports.frpc.diagnose import TLS_REQUIRED, certs_remedy, classify, port_remedy

CERT_FILES: Final = ("ca.crt", "client.crt", "client.key")


def tunnel_cause(config: Config, tunnel: Mapping[str, Any]) -> str:
    """Why the running connector's tunnel is down (diagnose's codes), from its status: the
    supervisor's own `cause` (it follows frpc's lines, and keeps a TLS refusal's diagnosis
    until a login succeeds), else what the last error's words say."""
    cause = tunnel.get("cause")
    if isinstance(cause, str):
        return cause
    logged_in = bool(tunnel.get("logins"))
    return classify(str(tunnel.get("last_error") or ""), config, logged_in=logged_in)


async def check_harp_socket(ctx: Context) -> Check:
    path = ctx.config.socket_path
    name = "harp_socket"
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            return Check(
                name,
                FAIL,
                f"{path} exists and is not a socket",
                f"Remove {path} or set HP_EXAPP_SOCK to a free path.",
            )
        if await socket_listens(path, ctx.timeout):
            return Check(name, PASS, f"the connector listens on {path}")
        return Check(
            name,
            WARN,
            f"{path} is a stale socket: nothing listens",
            "Start the connector (it replaces the stale file); if it runs, read its log.",
        )
    parent = path.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return Check(
            name,
            FAIL,
            f"cannot create {path}: {parent} is not a writable directory",
            "Set HP_EXAPP_SOCK to a path in a writable directory.",
        )
    return Check(name, PASS, f"{path} is free and {parent} is writable (server not running)")


def check_harp_port(ctx: Context) -> Check:
    """APP_PORT is frpc's remotePort: HaRP's frps refuses ports outside its allowPorts."""
    name = "harp_port"
    port = ctx.config.app_port
    if problem := port_problem(port):
        return Check(name, FAIL, problem, port_remedy(ctx.config.app_id), {"port": port})
    if not EXAPP_PORTS[0] <= port <= EXAPP_PORTS[1]:
        return Check(
            name,
            WARN,
            f"APP_PORT {port} is in {ENGINE_PORTS[0]}-{ENGINE_PORTS[1]}, the ports HaRP keeps "
            f"for Docker engines ({ENGINE_PORTS[0]} is its bundled one)",
            port_remedy(ctx.config.app_id),
            {"port": port},
        )
    return Check(name, PASS, f"APP_PORT {port} is in HaRP's ExApp range", details={"port": port})


async def check_frpc(ctx: Context) -> Check:
    name = "frpc"
    pin_file = ctx.config.frpc_pin_file or DEFAULT_PIN_FILE
    pinned = read_pin(pin_file) or PINNED_VERSION
    remedy = (
        f"Install frpc {pinned}, the version HaRP's frps runs: a different frpc caused silent "
        "handshake failures. The image ships a pinned, verified /usr/local/bin/frpc "
        "(BEEFLOW_FRPC_BIN)."
    )
    try:
        binary = resolve_binary(ctx.config.frpc_bin)
    except FrpcError as exc:
        return Check(name, FAIL, str(exc), remedy)
    version = await frpc_version(binary, ctx.timeout)
    if version is None:
        return Check(name, FAIL, f"{binary} -v printed no version", remedy)
    details = {"binary": binary, "version": version, "pinned": pinned}
    if version != pinned:
        return Check(
            name, FAIL, f"{binary} is frpc {version}, the pin is {pinned}", remedy, details
        )
    return Check(name, PASS, f"{binary} is frpc {version} (pinned)", details=details)


async def check_frps(ctx: Context) -> Check:
    host, port = ctx.config.hp_frp_address, ctx.config.hp_frp_port
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), ctx.timeout)
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return Check(
            "frps",
            FAIL,
            f"cannot open TCP {host}:{port}: {reason}",
            "HP_FRP_ADDRESS:HP_FRP_PORT (the daemon's --harp_frp_address) must be reachable "
            "from this container: same Docker network as HaRP, HaRP running.",
        )
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Check("frps", PASS, f"frps at {host}:{port} accepts TCP connections")


def check_frp_certs(ctx: Context) -> Check:
    directory = ctx.config.frp_cert_dir
    name = "frp_certs"
    reinstall = certs_remedy(ctx.config.app_id, directory)
    if not directory.exists():
        if tunnel_cause(ctx.config, ctx.tunnel) == TLS_REQUIRED:
            last_error = str(ctx.tunnel.get("last_error") or "")
            return Check(
                name,
                FAIL,
                f"{directory} does not exist, and frps closed frpc's plain connection "
                f"({last_error}): HaRP forces TLS",
                reinstall,
            )
        return Check(
            name,
            WARN,
            f"{directory} does not exist: frpc connects without TLS, so HP_SHARED_KEY "
            "crosses the network in clear text",
            reinstall,
        )
    missing = []
    for file in CERT_FILES:
        path = directory / file
        try:
            head = path.read_bytes()[:4096]
        except OSError:
            missing.append(f"{file} (missing or unreadable)")
            continue
        if b"-----BEGIN " not in head:
            missing.append(f"{file} (not PEM)")
    if missing:
        return Check(name, FAIL, f"{directory} is incomplete: " + ", ".join(missing), reinstall)
    return Check(name, PASS, f"{directory} holds {', '.join(CERT_FILES)}")


async def socket_listens(path: Path, timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def frpc_version(binary: str, timeout: float) -> str | None:
    try:
        return await read_version(binary, timeout)
    except FrpcError:
        return None
