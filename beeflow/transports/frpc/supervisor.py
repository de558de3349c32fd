"""The frpc supervisor (HaRP mode): one frpc child, started once the Unix socket listens,
restarted with capped backoff only when it exits (frpc retries connections by itself), stopped
with TERM -> grace -> KILL -> reap (docs/transports.md, "The frpc supervisor")."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from beeflow.config import Config
from beeflow.limits import TokenBucket
from beeflow.tasks import spawn
from beeflow.transports.frpc.binary import FrpcError, pin_warning, read_version, resolve_binary
from beeflow.transports.frpc.config import port_problem, render
from beeflow.transports.frpc.diagnose import (
    Tunnel,
    clean_line,
    describe_exit,
    line_level,
    masks,
    message_of,
    port_remedy,
)
from beeflow.transports.frpc.launch import RenderedConfig, start_frpc

log = logging.getLogger(__name__)
# frpc's own lines get their own logger so operators can filter or silence them.
frpc_log = logging.getLogger("beeflow.frpc")

# After frpc exited, how long its output reader may still run (a grandchild holding the pipe
# must not keep us): while running, long enough to read frpc's last lines; while stopping,
# short, because it counts against the time shutdown may take (docs/transports.md).
READER_DRAIN_SECONDS: Final = 1.0
READER_DRAIN_STOPPING_SECONDS: Final = 0.2


def stop_budget(config: Config) -> float:
    """The longest FrpcSupervisor.stop() takes: TERM, the grace, KILL, the output reader."""
    return config.frpc_stop_grace_seconds + READER_DRAIN_STOPPING_SECONDS


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
        log_limit: TokenBucket | None = None,
    ) -> None:
        self.config = config
        self.unix_path = unix_path
        self.version_timeout = version_timeout
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._log_limit = log_limit or TokenBucket()
        self._binary: str | None = None
        self._rendered: RenderedConfig | None = None
        self.config_file: Path | None = None  # what frpc reads (-c): see launch.RenderedConfig
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._version_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._term_sent = False
        self._failures = 0  # consecutive short-lived runs: drives the backoff
        self._masks = masks(config.hp_shared_key)
        self._problem = ""  # the last warning/error line of the current run
        self._warned: set[str] = set()
        # status
        self.tunnel = Tunnel(config)
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.started_at: float | None = None
        self.version: str | None = None
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
        try:
            self.version = await read_version(self._binary, self.version_timeout)
        except FrpcError as exc:
            log.warning("%s", exc)
            return
        finally:
            await self._notify()
        if warning := pin_warning(self.version, self._binary, self.config):
            log.warning("%s", warning)

    async def start(self) -> None:
        """Write the config and start frpc. Call only once the Unix socket listens."""
        if self._binary is None:
            await self.preflight()
        if problem := port_problem(self.config.app_port):
            log.warning("%s. %s", problem, port_remedy(self.config.app_id))
        self._rendered = RenderedConfig.create(
            render(self.config, self.unix_path), self.config.frpc_config_dir
        )
        self.config_file = self._rendered.path
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
        assert self._rendered is not None
        while not self._stop_requested():
            began = loop.time()
            try:
                # Its own session (a Ctrl-C on our terminal must not kill the tunnel before
                # our requests drained: we stop it ourselves, in order), and tied to us: if
                # we are killed, so is frpc, and no orphan keeps the proxy name at HaRP.
                proc = await start_frpc(self._binary, self._rendered, on_warning=self._warn_once)
            except OSError as exc:
                message = f"cannot start {self._binary}: {exc.strerror or exc}"
                if not first.done():
                    first.set_result(message)
                    return
                self.tunnel.last_error = message
                self.last_exit_code = None
            else:
                self._proc = proc
                self._term_sent = False
                self._problem = ""
                self.tunnel.started()
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
                self.tunnel.exited()
                if self._stop_requested() and self._term_sent:
                    # Real frpc does not handle TERM: dying by signal 15 is its clean stop.
                    how = "stopped" if code == -signal.SIGTERM else f"stopped (code {code})"
                    log.info("frpc %s", how)
                    break
                self.tunnel.last_error = f"frpc exited with {describe_exit(code)}" + (
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
            self._emit(
                log, logging.WARNING, "%s; restarting in %.2f s", self.tunnel.last_error, delay
            )
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
            line = clean_line(raw.decode(errors="replace"), self._masks)
            if not line:
                continue
            self.tunnel.observe(line)
            level = line_level(line)
            if level >= logging.WARNING:
                self._problem = message_of(line)
            await self._notify()
            self._emit(frpc_log, level, "%s", line)

    def _emit(self, logger: logging.Logger, level: int, msg: str, *args: object) -> None:
        """Log through the token bucket: a crash loop cannot flood the log."""
        if not self._log_limit.take():
            return
        if self._log_limit.refused:
            logger.warning("(%d frpc log line(s) suppressed: crash loop?)", self._log_limit.refused)
            self._log_limit.refused = 0
        logger.log(level, msg, *args)

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
        if self._rendered is not None:
            self._rendered.close()

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s", message)

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
            "state": self.tunnel.state,
            "running": self.running,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "last_error": self.tunnel.last_error,
            "cause": self.tunnel.cause,
            "remedy": self.tunnel.remedy,
            "connected_since": self.tunnel.connected_since,
            "started_at": self.started_at,
            "next_restart_in": self.next_restart_in,
            "logins": self.tunnel.logins,
            "connect_errors": self.tunnel.connect_errors,
            "socket_errors": self.tunnel.socket_errors,
            "frpc_version": self.version,
            "server": f"{self.config.hp_frp_address}:{self.config.hp_frp_port}",
            "tls": self.config.frp_cert_dir.is_dir(),
        }
