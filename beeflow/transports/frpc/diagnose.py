"""Reading what frpc prints: its lines cleaned for our log, the tunnel's state they tell
(docs/transports.md, "Tunnel state"), and what to do about the errors HaRP's frps causes."""

from __future__ import annotations

import json
import logging
import re
import signal
import time
from pathlib import Path
from typing import Final

from beeflow.config import Config
from beeflow.transports.frpc.config import EXAPP_PORTS, port_problem

log = logging.getLogger(__name__)

# Tunnel states read from frpc's output.
STARTING: Final = "starting"  # process up, not (yet) logged in with its proxy started
CONNECTED: Final = "connected"  # "start proxy success": HaRP can reach us
RETRYING: Final = "retrying"  # frpc reports a connection/proxy error and retries by itself
EXITED: Final = "exited"  # no frpc process (crashed, waiting to restart, or stopped)

_ANSI: Final = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_LEVEL: Final = re.compile(r"\[([TDIWE])\]")
# "2026-11-22 14:00:00.000 [W] [client/service.go:298] " before the message itself.
_PREFIX: Final = re.compile(r"^\S+ \S+ \[[TDIWE]\] \[[^\]]*\] ")
_LEVELS: Final = {
    "T": logging.DEBUG,
    "D": logging.DEBUG,
    "I": logging.INFO,
    "W": logging.WARNING,
    "E": logging.ERROR,
}
MAX_LINE: Final = 2000


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def masks(secret: str) -> tuple[str, ...]:
    """The key as it may appear in frpc's output: raw, JSON- or TOML-escaped."""
    if not secret:
        return ()
    forms = {secret, json.dumps(secret)[1:-1]}
    return tuple(sorted(forms, key=len, reverse=True))


def clean_line(text: str, secrets: tuple[str, ...]) -> str:
    """One output line fit for our log: no colour codes, no secret, bounded length."""
    text = strip_ansi(text).strip()
    for secret in secrets:
        text = text.replace(secret, "***")
    return text[:MAX_LINE]


def line_level(line: str) -> int:
    """Our log level for frpc's `[I]`, `[W]`, `[E]`... marker."""
    match = _LEVEL.search(line[:40])
    return _LEVELS[match.group(1)] if match else logging.INFO


def message_of(line: str) -> str:
    """The line without frpc's date, level and source prefix."""
    return _PREFIX.sub("", line)


def describe_exit(code: int) -> str:
    """An exit status in words: `SIGTERM (code -15)`, `code 1`."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{name} (code {code})"
    return f"code {code}"


def _after(line: str, marker: str) -> str:
    idx = line.find(marker)
    return line[idx + len(marker) :].strip() if idx >= 0 else ""


class Tunnel:
    """The tunnel as frpc's lines tell it: state, counters, the last error and its remedy."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = EXITED
        self.connected_since: float | None = None
        self.last_error = ""
        self.remedy = ""  # what to do about last_error, when diagnose() knows
        self.logins = 0
        self.connect_errors = 0
        self.socket_errors = 0
        self._advised: set[str] = set()  # remedies already logged (frpc repeats its errors)

    def started(self) -> None:
        self.state, self.connected_since = STARTING, None

    def exited(self) -> None:
        self.state, self.connected_since = EXITED, None

    def observe(self, line: str) -> None:
        """Follow the tunnel's state from one clean frpc line."""
        if "login to server success" in line:
            self.logins += 1
            if self.state != CONNECTED:
                self.state = STARTING
        elif "start proxy success" in line:
            self.state = CONNECTED
            self.connected_since = time.time()
            self.last_error = self.remedy = ""
        elif "connect to server error" in line:
            self.connect_errors += 1
            self.state, self.connected_since = RETRYING, None
            self._failed(_after(line, "error:") or line)
        elif "login to the server failed" in line:  # only with loginFailExit = true: it exits
            self.connect_errors += 1
            self._failed(_after(line, "failed:").split(". With loginFailExit")[0] or line)
        elif "start error" in line:
            # frps refused the proxy (e.g. `port not allowed`): frpc stays logged in and does
            # not register it again until its next login.
            self.state, self.connected_since = RETRYING, None
            self._failed(line[line.index("start error") :])
        elif "dial to uds" in line:
            # The app's socket refused frpc's dial: with 0.61.x the caller now hangs.
            self.socket_errors += 1

    def _failed(self, error: str) -> None:
        """Record the tunnel's error and, once per distinct remedy, log what to do about it."""
        self.last_error = error
        self.remedy = diagnose(error, self.config)
        if self.remedy and self.remedy not in self._advised:
            self._advised.add(self.remedy)
            log.warning("HaRP tunnel: %s. %s", error, self.remedy)


def port_remedy(app_id: str) -> str:
    return (
        "Let AppAPI choose the port: register the app again without a port override (a manual "
        f"--json-info must give a port in {EXAPP_PORTS[0]}-{EXAPP_PORTS[1]}): "
        f"`occ app_api:app:unregister {app_id}`, then register it again."
    )


def certs_remedy(app_id: str, cert_dir: Path) -> str:
    return (
        f"AppAPI copies HaRP's frp certificates into {cert_dir} when it deploys the ExApp: "
        f"reinstall (redeploy) it so they are copied (`occ app_api:app:unregister {app_id}`, "
        "then register it again). A tunnel without TLS works only when HaRP runs with "
        "HP_FRP_DISABLE_TLS=true."
    )


def diagnose(last_error: str, config: Config) -> str:
    """What to do about the tunnel's last error (docs/transports.md, "Tunnel state"), for the
    log and doctor; "" when the error says nothing specific."""
    error = last_error.lower()
    if not error:
        return ""
    if "port not allowed" in error:
        return f"{port_problem(config.app_port) or 'frps refused APP_PORT'}. " + port_remedy(
            config.app_id
        )
    tls = config.frp_cert_dir.is_dir()
    if error.endswith("eof") and not tls:
        # HaRP's frps forces TLS (transport.tls.force = true) unless HP_FRP_DISABLE_TLS=true:
        # it closes a plain connection without a word, and frpc reads EOF.
        return (
            "frps closed the connection before the login: HaRP forces TLS, and "
            f"{config.frp_cert_dir} is missing, so frpc connects without TLS. "
            + certs_remedy(config.app_id, config.frp_cert_dir)
        )
    if tls and ("no such file" in error or "certificate" in error or "tls" in error):
        return "frpc cannot use the frp certificates. " + certs_remedy(
            config.app_id, config.frp_cert_dir
        )
    if "token" in error or "reject" in error or "plugin" in error:
        return (
            "HaRP refused the login: HP_SHARED_KEY must equal HaRP's shared key (the deploy "
            "daemon's --harp_shared_key)."
        )
    if "dial tcp" in error or "connection refused" in error or "no such host" in error:
        return (
            f"frps at {config.hp_frp_address}:{config.hp_frp_port} is not reachable: HaRP must "
            "run, on the same Docker network, at the daemon's --harp_frp_address."
        )
    return ""
