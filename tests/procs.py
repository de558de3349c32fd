"""The one launcher of real child processes for the tests: `python -m beeflow serve` (or a wrapper
script around beeflow.cli) with its output lines as awaitable events, a clean child environment,
and short temporary directories for Unix sockets."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import attrs

from beeflow.tasks import spawn

REPO: Final = Path(__file__).resolve().parents[1]


@contextmanager
def short_dir() -> Iterator[Path]:
    """A short directory under /tmp (a Unix socket path holds at most 107 bytes, and pytest's
    tmp_path is longer than that allows)."""
    path = Path(tempfile.mkdtemp(prefix="bf", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """A clean environment: nothing from the developer's shell leaks into the child."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    env.update(extra)
    return env


@attrs.define(eq=False)
class ServeProcess:
    """A running CLI. `lines` holds (monotonic time, text) of everything it wrote."""

    proc: asyncio.subprocess.Process
    spawned_at: float
    lines: list[tuple[float, str]] = attrs.field(factory=list)
    _changed: asyncio.Condition = attrs.field(factory=asyncio.Condition)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        env: Mapping[str, str],
        *args: str,
        script: Path | None = None,
        command: str = "serve",
    ) -> ServeProcess:
        """`python -m beeflow <command> <args>`, or `python <script> <command> <args>` for a
        wrapper around beeflow.cli (a CLI with extra test routes)."""
        entry = [str(script)] if script is not None else ["-m", "beeflow"]
        spawned_at = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *entry,
            command,
            *args,
            cwd=REPO,
            env=child_env(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self = cls(proc, spawned_at)
        self._reader = spawn(self._read(), name=f"serve-output-{proc.pid}")
        return self

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            async with self._changed:
                self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def find(self, needle: str) -> list[tuple[float, str]]:
        return [(t, line) for t, line in self.lines if needle in line]

    async def wait_line(self, needle: str, timeout: float = 20.0) -> tuple[float, str]:
        """The first line containing `needle` (waits for it; fails with the output so far)."""

        def found() -> bool:
            return bool(self.find(needle)) or self._reader is None or self._reader.done()

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(found), timeout)
            except TimeoutError:
                raise AssertionError(f"no line with {needle!r} in:\n{self.text}") from None
        hits = self.find(needle)
        if not hits:
            raise AssertionError(f"exited without a line with {needle!r}:\n{self.text}")
        return hits[0]

    def send(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    async def wait_exit(self, timeout: float = 20.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, timeout)
        return code

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        if self._reader is not None:
            await self._reader


@attrs.define
class Launcher:
    """Starts ServeProcesses for one test and kills whatever is still running at its end (for
    a fixture: `async with`-free, `close()` in the teardown)."""

    started: list[ServeProcess] = attrs.field(factory=list)

    async def start(
        self,
        env: Mapping[str, str],
        *args: str,
        script: Path | None = None,
        command: str = "serve",
    ) -> ServeProcess:
        proc = await ServeProcess.start(env, *args, script=script, command=command)
        self.started.append(proc)
        return proc

    async def close(self) -> None:
        for proc in self.started:
            await proc.close()
