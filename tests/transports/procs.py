"""`python -m beeflow serve` as a real child process, with its log lines as awaitable events."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import attrs

from beeflow.tasks import spawn

REPO = Path(__file__).resolve().parents[2]
SLOW_SERVE = Path(__file__).with_name("slow_serve.py")


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
        cls, env: Mapping[str, str], *args: str, slow_routes: bool = False, command: str = "serve"
    ) -> ServeProcess:
        entry = [str(SLOW_SERVE)] if slow_routes else ["-m", "beeflow"]
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
        full_env.update(env)
        spawned_at = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *entry,
            command,
            *args,
            cwd=REPO,
            env=full_env,
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
