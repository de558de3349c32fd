"""The bench's child processes: start one, know when it serves, read its CPU and memory (summed
over its process tree: nginx is a master and a worker), stop it with TERM then KILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bench import proc
from bench.client import Target

# util-linux's setpriv asks Linux to TERM a child when the bench dies (PR_SET_PDEATHSIG), for
# programs that cannot ask themselves (nginx, node); the Python children do it themselves.
SETPRIV = shutil.which("setpriv")


def clean_env() -> dict[str, str]:
    """The environment without any of the connector's settings (each child gets its own)."""
    drop = ("APP_", "BEEFLOW_", "HP_", "NEXTCLOUD_", "AA_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def with_parent_death(argv: Sequence[str]) -> list[str]:
    if SETPRIV is None:
        return list(argv)
    return [SETPRIV, "--pdeathsig", "TERM", "--", *argv]


class Child:
    """A subprocess that serves: it prints `READY <value>` (the Python and Node children), or
    `start_listening()` waits until its address accepts connections (nginx). stderr goes to a
    log file, quoted when it fails to start."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.ready = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def _spawn(
        cls, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path, log: Path
    ) -> Child:
        with log.open("ab") as err:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=dict(env),
                cwd=str(cwd),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        return cls(name, process, log)

    @classmethod
    async def start(
        cls, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path, log: Path
    ) -> Child:
        """Start and wait for its `READY <value>` line (value kept in `ready`)."""
        child = await cls._spawn(name, argv, env, cwd, log)
        assert child.process.stdout is not None
        try:
            line = await asyncio.wait_for(child.process.stdout.readline(), timeout=60)
        except TimeoutError:
            line = b""
        text = line.decode().strip()
        if not text.startswith("READY "):
            await child.fail(f"{name} did not start ({text!r})")
        child.ready = text[6:]
        return child

    @classmethod
    async def start_listening(
        cls,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
        target: Target,
        timeout: float = 20.0,
    ) -> Child:
        """Start and wait until `target` accepts a connection."""
        child = await cls._spawn(name, argv, env, cwd, log)
        deadline = time.monotonic() + timeout
        while True:
            if child.process.returncode is not None:
                await child.fail(f"{name} exited with {child.process.returncode}")
            try:
                conn = await target.connect()
            except OSError:
                if time.monotonic() > deadline:
                    await child.fail(f"{name} did not listen on {target.describe()}")
                await asyncio.sleep(0.02)
                continue
            conn.close()
            return child

    async def fail(self, why: str) -> None:
        await self.stop()
        tail = (await asyncio.to_thread(self.log.read_text, errors="replace"))[-3000:]
        raise RuntimeError(f"{why}; its log:\n{tail}")

    def pids(self) -> list[int]:
        """This process and its descendants (nginx: the master and its worker)."""
        return proc.tree(self.pid)

    def cpu_seconds(self) -> float:
        return sum(_quiet(proc.cpu_seconds, pid) for pid in self.pids())

    def rss_bytes(self) -> int:
        return int(sum(_quiet(proc.rss_bytes, pid) for pid in self.pids()))

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()


def _quiet(read: Callable[[int], float], pid: int) -> float:
    """A /proc reading of a process that may just have exited (then 0)."""
    try:
        return float(read(pid))
    except (OSError, KeyError, ValueError):
        return 0.0
