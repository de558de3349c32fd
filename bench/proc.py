"""What /proc says about one process: CPU seconds, resident memory, the peak-RSS reset."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

_TICK = float(os.sysconf("SC_CLK_TCK"))


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` (clock-tick resolution, usually 10 ms)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU summed over the live threads (schedstat, ns resolution). Threads that
    already exited are missing here: use cpu_seconds() over long windows."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") * 1024


def hwm_bytes(pid: int) -> int:
    return _status_kib(pid, "VmHWM") * 1024


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, our own process or root). False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def children(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's /proc children list)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    out = [pid]
    for child in children(pid):
        out += tree(child)
    return out


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class RssSampler:
    """Samples VmRSS of `pid` every `interval` seconds; `peak` combines it with VmHWM. With
    `descendants=True` the figures are summed over `pid` and its descendants (nginx's master
    and worker): the peak is then the sum of each process's own peak, an upper bound."""

    def __init__(self, pid: int, interval: float = 0.02, *, descendants: bool = False) -> None:
        self.pids = tree(pid) if descendants else [pid]
        self.interval = interval
        self.start_rss = 0
        self.max_rss = 0
        self._hwm_reset = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RssSampler:
        self._hwm_reset = all([reset_hwm(pid) for pid in self.pids])
        self.start_rss = self.max_rss = self._rss()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()

    def _rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids)

    def _sample(self) -> None:
        with contextlib.suppress(OSError, KeyError):
            self.max_rss = max(self.max_rss, self._rss())

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self.interval)

    @property
    def peak(self) -> int:
        """The highest RSS seen: VmHWM when it could be reset, else the sampled maximum."""
        if self._hwm_reset:
            try:
                return max(self.max_rss, sum(hwm_bytes(pid) for pid in self.pids))
            except (OSError, KeyError):
                pass
        return self.max_rss

    @property
    def growth(self) -> int:
        return self.peak - self.start_rss
