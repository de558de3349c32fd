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


# Why the tunnel is down, when frpc's words tell: stable codes for the status, the log and doctor
# (docs/transports.md, "Tunnel state").
TLS_REQUIRED: Final = "tls_required"  # frps forces TLS; without certificates we connect in clear
CERTS_UNUSABLE: Final = "certs_unusable"  # TLS on, but frpc cannot use the certificates
PORT_NOT_ALLOWED: Final = "port_not_allowed"  # APP_PORT outside frps's allowPorts
PROXY_TAKEN: Final = "proxy_taken"  # another frpc holds the proxy name at frps
KEY_REFUSED: Final = "key_refused"  # HaRP's login plugin refused HP_SHARED_KEY
FRPS_UNREACHABLE: Final = "frps_unreachable"  # nothing answers at HP_FRP_ADDRESS:HP_FRP_PORT
# The causes that never clear by themselves: frpc retries for ever, and doctor fails on them.
LASTING: Final = frozenset({TLS_REQUIRED, CERTS_UNUSABLE, PORT_NOT_ALLOWED, PROXY_TAKEN})

# How frpc 0.61.1 reports a connection that HaRP's frps (`transport.tls.force = true`) closed
# because it did not start with TLS. The same cause, several words: frps closes while frpc is
# still writing or reading its login, and which of these frpc sees is a race
# (frp-observed.md: 40 tries gave EOF, "session shutdown", "stream closed", and "write tcp
# ...: connection reset by peer" or "...: broken pipe").
CLOSED_BEFORE_LOGIN: Final = (
    "eof",
    "session shutdown",
    "stream closed",
    "connection reset by peer",
    "broken pipe",
)


def classify(error: str, config: Config, *, logged_in: bool) -> str:
    """The cause behind one of frpc's errors, or "" when its words say nothing specific.
    `logged_in`: a login succeeded before (then frps accepts us as we connect, and a closed
    session is frps going away, not a refusal)."""
    error = error.lower()
    if not error:
        return ""
    if "port not allowed" in error:
        return PORT_NOT_ALLOWED
    if "already exists" in error:
        return PROXY_TAKEN
    tls = config.frp_cert_dir.is_dir()
    if not tls and not logged_in and error.endswith(CLOSED_BEFORE_LOGIN):
        return TLS_REQUIRED
    if tls and ("no such file" in error or "certificate" in error or "tls" in error):
        return CERTS_UNUSABLE
    if "token" in error or "reject" in error or "plugin" in error:
        return KEY_REFUSED
    if "dial tcp" in error or "connection refused" in error or "no such host" in error:
        return FRPS_UNREACHABLE
    return ""


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


def proxy_taken_remedy(app_id: str) -> str:
    return (
        f"HaRP's frps already has a tunnel named {app_id}: another frpc with this app's name is "
        "still connected: one that outlived a killed connector process of an older release, or "
        "a second container of the same app. This frpc asks again every 30 s and takes over "
        "once that one is gone; to end it now, restart this container (a leftover frpc dies "
        "with it) or stop the other one."
    )


def remedy(cause: str, config: Config) -> str:
    """What to do about a cause (docs/transports.md, "Tunnel state"); "" for none."""
    if cause == PORT_NOT_ALLOWED:
        why = port_problem(config.app_port) or "frps refused APP_PORT"
        return f"{why}. " + port_remedy(config.app_id)
    if cause == PROXY_TAKEN:
        return proxy_taken_remedy(config.app_id)
    if cause == TLS_REQUIRED:
        # HaRP's frps forces TLS (transport.tls.force = true) unless HP_FRP_DISABLE_TLS=true:
        # it drops a plain connection without answering.
        return (
            "frps closed the connection before the login: HaRP forces TLS, and "
            f"{config.frp_cert_dir} is missing, so frpc connects without TLS. "
            + certs_remedy(config.app_id, config.frp_cert_dir)
        )
    if cause == CERTS_UNUSABLE:
        return "frpc cannot use the frp certificates. " + certs_remedy(
            config.app_id, config.frp_cert_dir
        )
    if cause == KEY_REFUSED:
        return (
            "HaRP refused the login: HP_SHARED_KEY must equal HaRP's shared key (the deploy "
            "daemon's --harp_shared_key)."
        )
    if cause == FRPS_UNREACHABLE:
        return (
            f"frps at {config.hp_frp_address}:{config.hp_frp_port} is not reachable: HaRP must "
            "run, on the same Docker network, at the daemon's --harp_frp_address."
        )
    return ""


def diagnose(last_error: str, config: Config, *, logged_in: bool = False) -> str:
    """What to do about one error of frpc's, for callers that have only its words."""
    return remedy(classify(last_error, config, logged_in=logged_in), config)


class Tunnel:
    """The tunnel as frpc's lines tell it: state, counters, the last error, its cause and the
    remedy."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = EXITED
        self.connected_since: float | None = None
        self.last_error = ""
        self.cause = ""  # classify()'s code for the error the remedy is about
        self.remedy = ""  # what to do about it, when the cause is known
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
            if self.cause == TLS_REQUIRED:  # frps took our login: TLS was not the problem
                self.cause = self.remedy = ""
        elif "start proxy success" in line:
            self.state = CONNECTED
            self.connected_since = time.time()
            self.last_error = self.cause = self.remedy = ""
        elif "connect to server error" in line:
            self.connect_errors += 1
            self.state, self.connected_since = RETRYING, None
            self._failed(_after(line, "error:") or line)
        elif "login to the server failed" in line:  # only with loginFailExit = true: it exits
            self.connect_errors += 1
            self._failed(_after(line, "failed:").split(". With loginFailExit")[0] or line)
        elif "start error" in line:
            # frps refused the proxy (`port not allowed`, `proxy [...] already exists`): frpc
            # stays logged in and asks again 30 s later.
            self.state, self.connected_since = RETRYING, None
            self._failed(line[line.index("start error") :])
        elif "dial to uds" in line:
            # The app's socket refused frpc's dial: with 0.61.x the caller now hangs.
            self.socket_errors += 1

    def _failed(self, error: str) -> None:
        """Record the tunnel's error and its cause; log each distinct remedy once.

        A plain connection dropped by a TLS-forcing frps keeps its diagnosis until a login
        succeeds, whatever frpc says in between: its words for that refusal vary from one try
        to the next, and an unrelated error on the way (frps restarting) does not fix it."""
        self.last_error = error
        cause = classify(error, self.config, logged_in=self.logins > 0)
        if self.cause == TLS_REQUIRED and cause != TLS_REQUIRED:
            cause = TLS_REQUIRED
        self.cause, self.remedy = cause, remedy(cause, self.config)
        if self.remedy and self.remedy not in self._advised:
            self._advised.add(self.remedy)
            log.warning("HaRP tunnel: %s. %s", error, self.remedy)
