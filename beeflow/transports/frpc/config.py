"""The frpc.toml the supervisor writes (docs/transports.md, "frpc.toml"), and the remote ports
HaRP's frps accepts for it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Final

import tomli_w

from beeflow.config import Config

TLS_SERVER_NAME: Final = "harp.nc"  # HaRP's server certificate is issued for exactly this name
CONFIG_NAME: Final = "frpc.toml"

# HaRP's frps.toml: `allowPorts` 23000-23999 (ExApps: AppAPI picks APP_PORT there) and
# 24000-24099 (remote Docker engines); any other remotePort is refused after the login with
# `[<app id>] start error: port not allowed`.
EXAPP_PORTS: Final = (23000, 23999)
ENGINE_PORTS: Final = (24000, 24099)


def render(config: Config, unix_path: Path) -> dict[str, Any]:
    """The frpc.toml document HaRP's ExApps write, plus `log.disablePrintColor` (frpc colours
    its output even into a pipe)."""
    cert_dir = config.frp_cert_dir
    tls: dict[str, Any]
    if cert_dir.is_dir():
        tls = {
            "enable": True,
            "certFile": str(cert_dir / "client.crt"),
            "keyFile": str(cert_dir / "client.key"),
            "trustedCaFile": str(cert_dir / "ca.crt"),
            "serverName": TLS_SERVER_NAME,
        }
    else:
        # frp >= 0.50 defaults to TLS on: say "off" explicitly when HaRP gave us no certificates.
        tls = {"enable": False}
    return {
        "serverAddr": config.hp_frp_address,
        "serverPort": config.hp_frp_port,
        # Keep retrying while HaRP is not up yet; frp's default is to exit.
        "loginFailExit": False,
        "log": {"disablePrintColor": True},
        "transport": {"tls": tls},
        # HaRP's login plugin checks this; frps has no auth.token, so we must not set one.
        "metadatas": {"token": config.hp_shared_key},
        "proxies": [
            {
                "name": config.app_id,
                "type": "tcp",
                "remotePort": config.app_port,
                "plugin": {"type": "unix_domain_socket", "unixPath": str(unix_path)},
            }
        ],
    }


def write_config(document: dict[str, Any], directory: Path) -> Path:
    """Write frpc.toml with mode 0600 (it holds the shared key), atomically."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = directory / CONFIG_NAME
    data = tomli_w.dumps(document).encode()
    fd, tmp = tempfile.mkstemp(prefix=".frpc-", suffix=".toml", dir=directory)  # 0600 already
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def harp_allows_port(port: int) -> bool:
    """Whether HaRP's frps accepts `port` as a remotePort (its allowPorts)."""
    return any(low <= port <= high for low, high in (EXAPP_PORTS, ENGINE_PORTS))


def port_problem(port: int) -> str:
    """Why APP_PORT will not work behind HaRP, or ""."""
    if harp_allows_port(port):
        return ""
    return (
        f"APP_PORT {port} is outside the ports HaRP's frps allows ({EXAPP_PORTS[0]}-"
        f"{EXAPP_PORTS[1]} for ExApps, {ENGINE_PORTS[0]}-{ENGINE_PORTS[1]} for Docker engines): "
        "frps will refuse the tunnel with 'port not allowed'"
    )
