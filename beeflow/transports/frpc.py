"""The frpc supervisor (HaRP mode): render frpc.toml, run frpc, read its state, restart, stop."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import tomli_w

from beeflow.config import Config
from beeflow.tasks import spawn
from beeflow.transports.base import TransportError

log = logging.getLogger(__name__)
# frpc's own lines get their own logger so operators can filter or silence them.
frpc_log = logging.getLogger("beeflow.frpc")

PINNED_VERSION: Final = "0.61.1"
TLS_SERVER_NAME: Final = "harp.nc"  # HaRP's server certificate is issued for exactly this name
CONFIG_NAME: Final = "frpc.toml"
# Where the repo keeps the pin (a source checkout); images point BEEFLOW_FRPC_PIN_FILE at theirs.
DEFAULT_PIN_FILE: Final = Path(__file__).resolve().parents[2] / "frpc" / "pin.toml"

# Tunnel states read from frpc's output.
STARTING: Final = "starting"  # process up, not (yet) logged in with its proxy started
CONNECTED: Final = "connected"  # "start proxy success": HaRP can reach us
RETRYING: Final = "retrying"  # frpc reports a connection/proxy error and retries by itself
EXITED: Final = "exited"  # no frpc process (crashed, waiting to restart, or stopped)

# HaRP's frps.toml: `allowPorts` 23000-23999 (ExApps: AppAPI picks APP_PORT there) and
# 24000-24099 (remote Docker engines); any other remotePort is refused after the login with
# `[<app id>] start error: port not allowed`.
EXAPP_PORTS: Final = (23000, 23999)
ENGINE_PORTS: Final = (24000, 24099)

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
_VERSION: Final = re.compile(r"\b(\d+\.\d+\.\d+)\b")
# After frpc exited, how long its output reader may still run (a grandchild holding the pipe
# must not keep us): while running, long enough to read frpc's last lines; while stopping,
# short, because it counts against the shutdown budget (docs/transports.md).
READER_DRAIN_SECONDS: Final = 1.0
READER_DRAIN_STOPPING_SECONDS: Final = 0.2
_MAX_LINE: Final = 2000


class FrpcError(TransportError):
    """frpc cannot be run at all (missing, not executable): a start-up error, not a crash loop."""


def render(config: Config, unix_path: Path) -> dict[str, Any]:
    """The frpc.toml document of contract 5.4, plus `log.disablePrintColor` (frp-observed.md)."""
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
        # Keep retrying while HaRP is not up yet (HaRP PR #29); frp's default is to exit.
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
    """What to do about the tunnel's last error (frp-observed.md and HaRP's frps.toml), for the
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


def stop_budget(config: Config) -> float:
    """The longest FrpcSupervisor.stop() takes: TERM, the grace, KILL, the output reader."""
    return config.frpc_stop_grace_seconds + READER_DRAIN_STOPPING_SECONDS


def read_pin(path: Path) -> str | None:
    """The pinned version from frpc/pin.toml, or None if there is no readable pin."""
    try:
        with path.open("rb") as fh:
            version = tomllib.load(fh).get("version")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return version if isinstance(version, str) else None


def resolve_binary(name: str) -> str:
    """The absolute path of the frpc executable, or a FrpcError saying what is wrong."""
    found = shutil.which(name)
    if found:
        return found
    path = Path(name)
    if "/" in name and path.exists():
        if path.is_dir():
            raise FrpcError(f"frpc binary {name} is a directory (set BEEFLOW_FRPC_BIN)")
        raise FrpcError(f"frpc binary {name} is not executable (chmod +x or set BEEFLOW_FRPC_BIN)")
    raise FrpcError(
        f"frpc binary {name!r} not found: HaRP mode needs frpc {PINNED_VERSION} "
        "(install it on PATH or set BEEFLOW_FRPC_BIN)"
    )


class LogBudget:
    """A token bucket for log lines, so a crash loop cannot flood the log."""

    def __init__(self, capacity: int = 40, per_second: float = 0.5) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self._tokens = float(capacity)
        self._stamp = time.monotonic()
        self.suppressed = 0

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.per_second)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.suppressed += 1
        return False


class FrpcSupervisor:
    """Runs one frpc child: started after the socket listens, restarted only when it exits
    (frpc retries connections by itself), stopped with TERM -> grace -> KILL -> reap."""

    def __init__(
        self,
        config: Config,
        unix_path: Path,
        *,
        version_timeout: float = 5.0,
        rng: random.Random | None = None,
        budget: LogBudget | None = None,
    ) -> None:
        self.config = config
        self.unix_path = unix_path
        self.version_timeout = version_timeout
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._budget = budget or LogBudget()
        self._binary: str | None = None
        self._config_dir: Path | None = None
        self._own_dir = False
        self.config_file: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._version_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._term_sent = False
        self._failures = 0  # consecutive short-lived runs: drives the backoff
        self._masks = _masks(config.hp_shared_key)
        self._problem = ""  # the last warning/error line of the current run
        self._advised: set[str] = set()  # remedies already logged (frpc repeats its errors)
        # status
        self.state = EXITED
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.last_error = ""
        self.remedy = ""  # what to do about last_error, when it says (diagnose())
        self.connected_since: float | None = None
        self.started_at: float | None = None
        self.version: str | None = None
        self.logins = 0
        self.connect_errors = 0
        self.socket_errors = 0
        self.next_restart_in: float | None = None
        self.backoff_history: collections.deque[float] = collections.deque(maxlen=20)

    # ------------------------------------------------------------------ start

    async def preflight(self) -> None:
        """Fail fast, before anything binds: the binary must exist and be executable."""
        self._binary = resolve_binary(self.config.frpc_bin)

    async def check_version(self) -> None:
        """Warn when `frpc -v` differs from the pin. Runs beside the first start: a slow
        `-v` must not delay the tunnel, and a binary that cannot run fails the start anyway."""
        if self._binary is None:
            await self.preflight()
        assert self._binary is not None
        pin_file = self.config.frpc_pin_file or DEFAULT_PIN_FILE
        pinned = read_pin(pin_file)
        try:
            self.version = await self._read_version(self._binary)
        except FrpcError as exc:
            log.warning("%s", exc)
            return
        finally:
            await self._notify()
        if pinned is None:
            if self.config.frpc_pin_file is not None:
                log.warning("frpc pin file %s is missing or unreadable", pin_file)
            return
        if self.version is None:
            log.warning(
                "could not read the frpc version (%s -v); pinned is %s", self._binary, pinned
            )
        elif self.version != pinned:
            log.warning(
                "frpc reports version %s but %s pins %s (HaRP's frps is %s): "
                "the tunnel may misbehave",
                self.version,
                pin_file,
                pinned,
                PINNED_VERSION,
            )

    async def _read_version(self, binary: str) -> str | None:
        return await read_version(binary, self.version_timeout)

    async def start(self) -> None:
        """Write the config and start frpc. Call only once the Unix socket listens."""
        if self._binary is None:
            await self.preflight()
        if problem := port_problem(self.config.app_port):
            log.warning("%s. %s", problem, port_remedy(self.config.app_id))
        if self.config.frpc_config_dir is not None:
            self._config_dir = self.config.frpc_config_dir
        else:
            self._config_dir = Path(tempfile.mkdtemp(prefix="beeflow-frpc-"))
            self._own_dir = True
        self.config_file = write_config(render(self.config, self.unix_path), self._config_dir)
        first = asyncio.get_running_loop().create_future()
        self._task = spawn(self._supervise(first), name="frpc-supervisor")
        self._version_task = spawn(self.check_version(), name="frpc-version")
        # The first spawn's failure (e.g. the binary vanished or lost +x) is a start-up error.
        error = await first
        if error is not None:
            # Nothing runs: leave nothing behind either (the config holds the shared key).
            self._stopping = True
            await self._task
            await self._cancel_version_check()
            self._remove_config()
            raise FrpcError(error)

    # ------------------------------------------------------------------ run loop

    async def _supervise(self, first: asyncio.Future[str | None]) -> None:
        loop = asyncio.get_running_loop()
        assert self._binary is not None
        assert self.config_file is not None
        while not self._stop_requested():
            began = loop.time()
            try:
                proc = await asyncio.create_subprocess_exec(
                    self._binary,
                    "-c",
                    str(self.config_file),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    # Its own session: a Ctrl-C on our terminal must not kill the tunnel
                    # before our requests drained (we stop it ourselves, in order).
                    start_new_session=True,
                )
            except OSError as exc:
                message = f"cannot start {self._binary}: {exc.strerror or exc}"
                if not first.done():
                    first.set_result(message)
                    return
                self.last_error = message
                self.last_exit_code = None
            else:
                self._proc = proc
                self._term_sent = False
                self._problem = ""
                self.state, self.connected_since = STARTING, None
                self.started_at = time.time()
                self.next_restart_in = None
                if not first.done():
                    first.set_result(None)
                log.info("frpc started (pid %d)", proc.pid)
                await self._notify()
                if self._stop_requested():  # stop() raced with the spawn
                    await self._terminate(proc)
                code = await self._watch(proc)
                self._proc = None
                self.last_exit_code = code
                self.state, self.connected_since = EXITED, None
                if self._stop_requested() and self._term_sent:
                    # Real frpc does not handle TERM: dying by signal 15 is its clean stop.
                    how = "stopped" if code == -signal.SIGTERM else f"stopped (code {code})"
                    log.info("frpc %s", how)
                    break
                self.last_error = f"frpc exited with {_describe_exit(code)}" + (
                    f" after: {self._problem}" if self._problem else ""
                )
            if self._stop_requested():
                break
            if loop.time() - began >= self.config.frpc_backoff_reset_seconds:
                self._failures = 0
            delay = self._backoff(self._failures)
            self._failures += 1
            self.next_restart_in = delay
            await self._notify()
            self.backoff_history.append(delay)
            self._emit(log, logging.WARNING, "%s; restarting in %.2f s", self.last_error, delay)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            if self._stop_requested():
                break
            self.restarts += 1
        self.next_restart_in = None
        await self._notify()
        if not first.done():
            first.set_result(None)

    def _backoff(self, failures: int) -> float:
        """Capped exponential backoff with jitter: the first retry comes within `initial`."""
        base = self.config.frpc_backoff_initial_seconds * (2.0 ** min(failures, 30))
        ceiling = min(self.config.frpc_backoff_cap_seconds, base)
        return ceiling * self._rng.uniform(0.5, 1.0)

    async def _watch(self, proc: asyncio.subprocess.Process) -> int:
        assert proc.stdout is not None
        reader = spawn(self._pump(proc.stdout), name="frpc-output")
        code = await proc.wait()
        # The pipe closes with the process; a grandchild holding it must not keep us here.
        drain = READER_DRAIN_STOPPING_SECONDS if self._stop_requested() else READER_DRAIN_SECONDS
        done, _ = await asyncio.wait([reader], timeout=drain)
        if not done:
            reader.cancel()
            await asyncio.wait([reader])
        return code

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the reader's limit: skip the rest of it
                raw = b"<line too long>\n"
                with contextlib.suppress(asyncio.LimitOverrunError, ValueError):
                    await stream.readuntil(b"\n")
            if not raw:
                return
            line = self._clean(raw.decode(errors="replace"))
            if not line:
                continue
            self.observe(line)
            level = _line_level(line)
            if level >= logging.WARNING:
                self._problem = _PREFIX.sub("", line)
            await self._notify()
            self._emit(frpc_log, level, "%s", line)

    def _emit(self, logger: logging.Logger, level: int, msg: str, *args: object) -> None:
        """Log through the budget: a crash loop cannot flood the log."""
        if not self._budget.take():
            return
        if self._budget.suppressed:
            logger.warning("(%d frpc log line(s) suppressed: crash loop?)", self._budget.suppressed)
            self._budget.suppressed = 0
        logger.log(level, msg, *args)

    def _clean(self, text: str) -> str:
        text = _ANSI.sub("", text).strip()
        for secret in self._masks:
            text = text.replace(secret, "***")
        return text[:_MAX_LINE]

    def observe(self, line: str) -> None:
        """Follow the tunnel's state from one (clean) frpc line (frp-observed.md)."""
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

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate()` holds (re-checked at every line, start and exit)."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except TimeoutError:
                return False
        return True

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ------------------------------------------------------------------ stop

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """TERM, a short grace, KILL, reap (frpc handles neither TERM nor INT gracefully)."""
        if proc.returncode is not None:
            return
        self._term_sent = True
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), self.config.frpc_stop_grace_seconds)
        except TimeoutError:
            log.warning(
                "frpc (pid %d) ignored TERM for %.1f s; killing it",
                proc.pid,
                self.config.frpc_stop_grace_seconds,
            )
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        """Stop frpc for good and remove the rendered config (it holds the shared key).
        Takes at most stop_budget(config) (the reap after a KILL is immediate)."""
        self._stopping = True
        self._wake.set()
        proc = self._proc
        if proc is not None:
            await self._terminate(proc)
        if self._task is not None:
            await asyncio.wait([self._task])
        await self._cancel_version_check()
        self._remove_config()

    async def _cancel_version_check(self) -> None:
        if self._version_task is not None and not self._version_task.done():
            self._version_task.cancel()
            await asyncio.wait([self._version_task])

    def kill_now(self) -> None:
        """Emergency exit (second Ctrl-C): no waiting, just do not leave frpc behind."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        self._remove_config()

    def _remove_config(self) -> None:
        if self.config_file is not None:
            with contextlib.suppress(OSError):
                self.config_file.unlink()
        if self._own_dir and self._config_dir is not None:
            shutil.rmtree(self._config_dir, ignore_errors=True)
            self._own_dir = False

    # ------------------------------------------------------------------ status

    def _stop_requested(self) -> bool:
        # A call, not an attribute: mypy would narrow an attribute across the awaits.
        return self._stopping

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def status(self) -> dict[str, Any]:
        """A snapshot for the heartbeat, the setup status and doctor (no I/O)."""
        return {
            "state": self.state,
            "running": self.running,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "last_error": self.last_error,
            "remedy": self.remedy,
            "connected_since": self.connected_since,
            "started_at": self.started_at,
            "next_restart_in": self.next_restart_in,
            "logins": self.logins,
            "connect_errors": self.connect_errors,
            "socket_errors": self.socket_errors,
            "frpc_version": self.version,
            "server": f"{self.config.hp_frp_address}:{self.config.hp_frp_port}",
            "tls": self.config.frp_cert_dir.is_dir(),
        }


def _masks(secret: str) -> tuple[str, ...]:
    """The key as it may appear in frpc's output: raw, JSON- or TOML-escaped."""
    if not secret:
        return ()
    forms = {secret, json.dumps(secret)[1:-1]}
    return tuple(sorted(forms, key=len, reverse=True))


def _line_level(line: str) -> int:
    match = _LEVEL.search(line[:40])
    return _LEVELS[match.group(1)] if match else logging.INFO


def _after(line: str, marker: str) -> str:
    idx = line.find(marker)
    return line[idx + len(marker) :].strip() if idx >= 0 else ""


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{name} (code {code})"
    return f"code {code}"


async def read_version(binary: str, timeout: float) -> str | None:
    """What `frpc -v` says (ANSI stripped), or None if it said nothing usable in time.
    Raises FrpcError if the binary cannot run."""
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "-v",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise FrpcError(f"cannot run frpc binary {binary}: {exc.strerror or exc}") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        return None
    finally:
        if proc.returncode is None:  # timed out, or we are stopping: reap it
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    match = _VERSION.search(_ANSI.sub("", out.decode(errors="replace")))
    return match.group(1) if match else None
